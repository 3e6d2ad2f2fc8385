"""Model registry: config `model.name` -> the module that owns the architecture.

Each model module exports its `nnx.Module` class and the facts the rest of jaxcnn reads:
`DEFAULTS` (its `model.*` config keys with their defaults), `HEAD` (the classifier's module path,
replaced for a new class count), `TORCH_NAMES` (Flax path prefix -> PyTorch state-dict prefix;
None: no PyTorch weights to convert), `FROZEN_TRAINS` (the path that trains under
`transfer.mode=frozen`; None: not defined), `TORCH_CONV_INIT` (how PyTorch initialises its
convolutions under `model.init=torch`: `layers.torch_init`) and `build(cfg, num_classes, input_shape, dtype, rngs)`;
optionally `compiler_options(cfg)` (XLA options for the programs that run it, where they measured faster).
A new architecture is one new module and one line in `MODELS`.
"""

from __future__ import annotations

from types import ModuleType

import jax
import ml_collections
from flax import nnx

from jaxcnn.errors import ConfigError
from jaxcnn.models import alexnet, lenet, pooling, resnet, ssl_cnn
from jaxcnn.models.layers import INITS, torch_init

MODELS: dict[str, ModuleType] = {"lenet5": lenet, "pooling_cnn": pooling, "resnet18": resnet, "resnet34": resnet,
                                 "alexnet": alexnet, "ssl_cnn": ssl_cnn}
TITLES = {"lenet5": "LeNet-5", "pooling_cnn": "Pooling CNN", "resnet18": "ResNet-18", "resnet34": "ResNet-34",
          "alexnet": "AlexNet", "ssl_cnn": "SSL CNN"}  # for titles and reports
DTYPES = {"float32": None, "bfloat16": jax.numpy.bfloat16}  # bfloat16: bf16 compute, float32 parameters and logits


def model_module(name: str) -> ModuleType:
    """The module of architecture `name` (config `model.name`)."""
    if name not in MODELS:
        raise ConfigError(f"config model.name={name!r} is not valid; valid values: {', '.join(MODELS)}")
    return MODELS[name]


def model_config(name: str, dtype: str = "float32", init: str = "flax") -> ml_collections.ConfigDict:
    """The `model` section of a config for architecture `name`: its name, dtype, initialisation
    (`init`: torch = PyTorch's defaults, flax = Flax's; `layers.torch_init`) and its own keys."""
    return ml_collections.ConfigDict(dict(name=name, dtype=dtype, init=init, **model_module(name).DEFAULTS))


def build_model(cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int],
                seed: int) -> nnx.Module:
    """Builds `cfg.name` for `num_classes` and NHWC `input_shape` (without batch), params from `seed`
    and initialised as `cfg.init` says. A value the model refuses is a ConfigError naming the key."""
    module = model_module(cfg.name)
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"config model.dtype={cfg.dtype!r} is not valid; valid values: {', '.join(DTYPES)}")
    if cfg.init not in INITS:
        raise ConfigError(f"config model.init={cfg.init!r} is not valid; valid values: {', '.join(INITS)}")
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    try:
        model = module.build(cfg, num_classes, tuple(input_shape), DTYPES[cfg.dtype], rngs)
    except ValueError as e:
        raise ConfigError(f"config {e}") from None
    if cfg.init == "torch":
        torch_init(model, rngs.params(), module.TORCH_CONV_INIT)
    return model


def compiler_options(cfg: ml_collections.ConfigDict) -> dict[str, str] | None:
    """The XLA options of the programs (training step and epoch, evaluation, prediction, profile) that run
    architecture `cfg.name` on this backend: its module's `compiler_options(cfg)`, if it has one."""
    options = getattr(model_module(cfg.name), "compiler_options", None)
    return options(cfg) if options else None


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
