"""Transfer learning: start from converted ImageNet weights (`transfer.init`) and choose what trains.

Modes (`transfer.mode`):
- `finetune`: every parameter trains (from the converted weights, new head);
- `frozen`: AlexNet trains all but `features` (the study); ResNet only `fc` (a fixed feature
  extractor: its BatchNorm statistics stay as loaded, running averages are used, `train_view`);
- `scratch`: every parameter trains from a random initialisation (no `init`).
The optimizer holds state only for the trainable parameters.
"""

from __future__ import annotations

import ml_collections
from flax import nnx

from jaxcnn.convert.store import load_converted, read_meta
from jaxcnn.train.checkpoint import VARIABLES
from jaxcnn.errors import ConfigError
from jaxcnn.models import MODELS, model_module

MODES = ("finetune", "frozen", "scratch")


def transfer_config(config: ml_collections.ConfigDict) -> tuple[str, str]:
    """(mode, init) of `config` ("finetune"/"" when it has no transfer section), checked."""
    transfer = config.get("transfer")
    if transfer is None:
        return "finetune", ""
    mode, init = transfer.mode, transfer.init
    if mode not in MODES:
        raise ConfigError(f"config transfer.mode={mode!r} is not valid; valid values: {', '.join(MODES)}")
    if mode == "scratch" and init:
        raise ConfigError(f"config transfer.mode='scratch' trains from random weights; remove init={init!r}")
    if mode != "scratch" and not init:
        raise ConfigError(f"config transfer.mode={mode!r} needs init=PATH (weights from scripts/convert_weights.py)")
    if mode == "frozen" and model_module(config.model.name).FROZEN_TRAINS is None:
        defined = [name for name, module in MODELS.items() if module.FROZEN_TRAINS is not None]
        raise ConfigError(f"config transfer.mode='frozen' is defined for {', '.join(defined)}, "
                          f"not model.name={config.model.name!r}")
    return mode, init


def trainable(config: ml_collections.ConfigDict) -> nnx.filterlib.Filter:
    """The nnx filter of the parameters that train (a linear probe, `model.probe`, trains only `head`)."""
    if config.model.get("probe", False):
        return nnx.All(nnx.Param, nnx.PathContains("head"))
    mode, _ = transfer_config(config)
    if mode != "frozen":
        return nnx.Param
    return nnx.All(nnx.Param, nnx.PathContains(model_module(config.model.name).FROZEN_TRAINS))


def train_view(model: nnx.Module, wrt: nnx.filterlib.Filter) -> nnx.Module:
    """`model` as the training step runs it when only the parameters `wrt` selects train: each top-level
    part with parameters of which none train (a frozen ResNet backbone, a probed SSL trunk) computes as
    in evaluation (BatchNorm uses and keeps its running statistics, no dropout), via `nnx.view`, which
    shares the arrays. Parts without parameters (AlexNet's classifier dropout) keep training mode."""
    if wrt is nnx.Param:
        return model
    trained = {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, wrt))}
    frozen = {path[0] for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))} - trained
    only = lambda path, module: isinstance(module, (nnx.BatchNorm, nnx.Dropout)) and path[:1] and path[0] in frozen
    return nnx.view(model, only=only, use_running_average=True, deterministic=True, raise_if_not_found=False)


def prepare(model: nnx.Module, config: ml_collections.ConfigDict, num_classes: int) -> None:
    """Loads `transfer.init` into `model` (a new head keeps its initialisation when the class count differs)."""
    _, init = transfer_config(config)
    if init:
        load_init(model, init, config.model.name, num_classes)


def load_init(model: nnx.Module, path: str, architecture: str, num_classes: int) -> None:
    meta = read_meta(path)
    if meta["architecture"] != architecture:
        raise ConfigError(f"init={path} holds {meta['architecture']} weights ({meta['source']}), but "
                          f"model.name={architecture!r}; convert {architecture} weights or change model.name")
    source, _ = load_converted(path)
    head = model_module(architecture).HEAD
    loaded = {p: _array(v) for p, v in nnx.to_flat_state(nnx.state(source, VARIABLES))}
    new = []
    for path_, variable in nnx.to_flat_state(nnx.state(model, VARIABLES)):
        current = _array(variable)
        if num_classes != meta["num_classes"] and tuple(path_[:len(head)]) == head:
            new.append((path_, current))  # fresh head for the new classes
            continue
        value = loaded[path_]
        if value.shape != current.shape:
            raise ConfigError(f"init={path}: {'.'.join(map(str, path_))} has shape {value.shape}, the model needs "
                              f"{current.shape} (data.channels or model settings differ from the converted model)")
        new.append((path_, value))
    nnx.update(model, nnx.from_flat_state(new))


def _array(variable):
    return variable.get_value() if hasattr(variable, "get_value") else variable.value
