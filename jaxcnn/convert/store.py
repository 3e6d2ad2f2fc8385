"""Converted weights on disk: `OUT/weights` (Orbax, parameters and batch statistics) + `OUT/meta.json`.

meta.json holds what rebuilds and feeds the model: source, architecture, num_classes, input_size
(C, H, W), mean, std, interpolation, crop_pct, class_names.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from jaxcnn.config import ConfigError, default_config
from jaxcnn.errors import first_line
from jaxcnn.files import read_json, write_json
from jaxcnn.models import build_model, model_config
from jaxcnn.train.checkpoint import checksum

META_JSON = "meta.json"
WEIGHTS = "weights"
VARIABLES = nnx.Any(nnx.Param, nnx.BatchStat)


def is_converted(path: str | pathlib.Path) -> bool:
    return (pathlib.Path(path) / META_JSON).is_file() and (pathlib.Path(path) / WEIGHTS).is_dir()


def save_converted(out: str | pathlib.Path, model: nnx.Module, meta: dict[str, Any]) -> None:
    """Writes `out/weights` and then `out/meta.json` (with the weights' checksum); meta.json, written
    last and atomically, marks complete weights."""
    out = pathlib.Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory")
    out.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "checksum": save_variables(out / WEIGHTS, model)}
    write_json(out / META_JSON, meta)


def read_json_meta(path: pathlib.Path, what: str) -> dict[str, Any]:
    """A meta.json that must be there and readable; a damaged one is a ConfigError saying what to redo."""
    meta = read_json(path)
    if not isinstance(meta, dict):
        raise ConfigError(f"{path} is damaged (not JSON); {what} again into a new directory")
    return meta


def read_meta(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if not is_converted(path):
        raise ConfigError(f"{path}: not a converted checkpoint (expected {WEIGHTS}/ and {META_JSON}; "
                          "make one with scripts/convert_weights.py)")
    return read_json_meta(path / META_JSON, "convert the weights")


def converted_config(meta: dict[str, Any]) -> ml_collections.ConfigDict:
    """A config whose model and data sections match the converted network (for building and predicting)."""
    config = default_config()
    config.model = model_config(meta["architecture"])
    channels, height, width = meta["input_size"]
    config.data.image_size, config.data.channels = (height, width), channels
    config.data.mean, config.data.std = tuple(meta["mean"]), tuple(meta["std"])
    return config


def save_variables(path: str | pathlib.Path, module: nnx.Module) -> str:
    """`module`'s parameters and BatchNorm statistics (no RNG state) as an Orbax checkpoint at `path`;
    returns their checksum, for the caller's meta.json and `restore_variables`."""
    state = nnx.state(module, VARIABLES)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(pathlib.Path(path).absolute(), state)
    return checksum(state)


def restore_variables(path: str | pathlib.Path, module: nnx.Module, expected: str | None = None) -> None:
    """Loads what `save_variables` wrote into `module` (same structure and shapes), checked against
    its checksum `expected` when given. Raises ConfigError when the files do not load or match."""
    path = pathlib.Path(path).absolute()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(module, VARIABLES))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            state = checkpointer.restore(path, target)
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for damaged files
        raise ConfigError(f"{path} does not load ({first_line(e)}); the files are damaged or of another "
                          "model: make them again") from None
    if expected is not None and checksum(state) != expected:
        raise ConfigError(f"{path}: the arrays on disk do not match the checksum written with them (the files "
                          "were changed or damaged); make them again")
    nnx.update(module, state)


def load_converted(path: str | pathlib.Path) -> tuple[nnx.Module, dict[str, Any]]:
    """The converted model (eval mode) and its meta."""
    meta = read_meta(path)
    config = converted_config(meta)
    channels, height, width = meta["input_size"]
    model = build_model(config.model, meta["num_classes"], (height, width, channels), 0)
    restore_variables(pathlib.Path(path) / WEIGHTS, model, meta.get("checksum"))
    model.eval()
    return model, meta
