"""Model registry: config `model.name` -> a function building the Flax NNX module."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
from flax import nnx

from jaxcnn.config import ConfigError
from jaxcnn.models.alexnet import AlexNet
from jaxcnn.models.lenet import LeNet5
from jaxcnn.models.pooling import PoolingCNN
from jaxcnn.models.resnet import ResNet
from jaxcnn.models.ssl_cnn import SSLCNN

# Module path of each transfer architecture's classifier head (replaced for a new class count).
HEADS = {"resnet18": ("fc",), "resnet34": ("fc",), "alexnet": ("fcs", 2)}
DTYPES = {"float32": None, "bfloat16": jax.numpy.bfloat16}


def compute_dtype(cfg: ml_collections.ConfigDict):
    """`model.dtype`: float32, or bfloat16 compute with float32 parameters."""
    name = cfg.get("dtype", "float32")
    if name not in DTYPES:
        raise ConfigError(f"config model.dtype={name!r} is not valid; valid values: {', '.join(DTYPES)}")
    return DTYPES[name]


def _lenet5(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    return LeNet5(num_classes, input_shape, cfg.activation, cfg.pooling, cfg.extra_conv_layers,
                  dtype=compute_dtype(cfg), rngs=rngs)


def _pooling_cnn(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    # hidden/first_stride exist only in configs made for this model (configs/pooling.py); defaults otherwise.
    return PoolingCNN(num_classes, input_shape, cfg.get("hidden", 32), cfg.pooling, cfg.get("first_stride", 1),
                      cfg.activation, dtype=compute_dtype(cfg), rngs=rngs)


def _ssl_cnn(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    # widths/hidden/dropout/probe exist only in configs made for this model; defaults otherwise.
    return SSLCNN(num_classes, input_shape, cfg.get("widths", (16, 32, 64)), cfg.get("hidden", 128),
                  cfg.get("dropout", 0.25), cfg.get("probe", False), dtype=compute_dtype(cfg), rngs=rngs)


def _resnet(depth: int):
    def build(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
        return ResNet(num_classes, depth, input_shape[2], dtype=compute_dtype(cfg), rngs=rngs)

    return build


def _alexnet(cfg: ml_collections.ConfigDict, num_classes: int, input_shape, rngs: nnx.Rngs) -> nnx.Module:
    return AlexNet(num_classes, input_shape[2], cfg.get("dropout", 0.5), dtype=compute_dtype(cfg), rngs=rngs)


MODELS: dict[str, Callable[..., nnx.Module]] = {"lenet5": _lenet5, "pooling_cnn": _pooling_cnn,
                                                "resnet18": _resnet(18), "resnet34": _resnet(34),
                                                "alexnet": _alexnet, "ssl_cnn": _ssl_cnn}


def build_model(cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int],
                seed: int) -> nnx.Module:
    """Builds `cfg.name` for `num_classes` and NHWC `input_shape` (without batch), params from `seed`."""
    if cfg.name not in MODELS:
        raise ConfigError(f"config model.name={cfg.name!r} is not valid; valid values: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, num_classes, tuple(input_shape), nnx.Rngs(params=seed, dropout=seed + 1))


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
