"""Model registry: config `model.name` -> a function building the Flax NNX module."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
from flax import nnx

from jaxcnn.config import ConfigError
from jaxcnn.models.lenet import LeNet5
from jaxcnn.models.pooling import PoolingCNN


def _lenet5(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    return LeNet5(num_classes, input_shape, cfg.activation, cfg.pooling, cfg.extra_conv_layers, rngs=rngs)


def _pooling_cnn(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    # hidden/first_stride exist only in configs made for this model (configs/pooling.py); defaults otherwise.
    return PoolingCNN(num_classes, input_shape, cfg.get("hidden", 32), cfg.pooling, cfg.get("first_stride", 1),
                      cfg.activation, rngs=rngs)


MODELS: dict[str, Callable[..., nnx.Module]] = {"lenet5": _lenet5, "pooling_cnn": _pooling_cnn}


def build_model(cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int],
                seed: int) -> nnx.Module:
    """Builds `cfg.name` for `num_classes` and NHWC `input_shape` (without batch), params from `seed`."""
    if cfg.name not in MODELS:
        raise ConfigError(f"config model.name={cfg.name!r} is not valid; valid values: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, num_classes, tuple(input_shape), nnx.Rngs(params=seed, dropout=seed + 1))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
