"""Pretrained trunks on disk: `DIR/trunk` (Orbax: the conv trunk's parameters and BatchNorm
statistics, no RNG state) and `DIR/meta.json` (method, architecture, timing, losses).

The supervised run loads a trunk into `SSLCNN.trunk` exactly; its head keeps its fresh initialisation.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

from flax import nnx

from jaxcnn.config import ConfigError
from jaxcnn.convert.store import read_json_meta, restore_variables, save_variables
from jaxcnn.files import write_json

META_JSON = "meta.json"
TRUNK = "trunk"
ARCHITECTURE = "ssl_cnn"


def is_trunk(path: str | pathlib.Path) -> bool:
    path = pathlib.Path(path)
    return (path / META_JSON).is_file() and (path / TRUNK).is_dir()


def trunk_signature(trunk: nnx.Module) -> dict[str, Any]:
    """What a trunk must match to load: widths and input channels."""
    return {"widths": [int(conv.out_features) for conv in trunk.convs],
            "in_channels": int(trunk.convs[0].in_features)}


def save_trunk(out: str | pathlib.Path, trunk: nnx.Module, meta: dict[str, Any]) -> None:
    """Writes the trunk and meta.json (plus the signature) to `out`, atomically: into a temporary
    sibling first, renamed when complete, so an interrupted save never looks like a trunk."""
    out = pathlib.Path(out).absolute()
    if out.exists():
        raise ConfigError(f"{out} exists; choose a new directory for the trunk")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"architecture": ARCHITECTURE, **trunk_signature(trunk), **meta,
            "checksum": save_variables(tmp / TRUNK, trunk)}
    write_json(tmp / META_JSON, meta)
    tmp.rename(out)


def read_trunk_meta(path: str | pathlib.Path) -> dict[str, Any]:
    path = pathlib.Path(path)
    if not is_trunk(path):
        raise ConfigError(f"ssl.trunk={str(path)!r} is not a pretrained trunk (expected {TRUNK}/ and {META_JSON}; "
                          "make one with scripts/pretrain.py)")
    return read_json_meta(path / META_JSON, "pretrain the trunk (scripts/pretrain.py)")


def load_trunk(model: nnx.Module, path: str | pathlib.Path) -> dict[str, Any]:
    """Loads the trunk at `path` into `model.trunk` (an `SSLCNN`); returns its meta.

    Raises:
      ConfigError: not a trunk directory, or one of another architecture, widths or channel count.
    """
    meta = read_trunk_meta(path)
    if meta.get("architecture") != ARCHITECTURE or not hasattr(model, "trunk"):
        raise ConfigError(f"ssl.trunk={str(path)!r} holds a {meta.get('architecture')!r} trunk, but the model is "
                          f"{type(model).__name__}; pretrained trunks load into model.name={ARCHITECTURE!r}")
    want = trunk_signature(model.trunk)
    for key, label in (("widths", "model.widths"), ("in_channels", "data.channels")):
        if meta[key] != want[key]:
            raise ConfigError(f"ssl.trunk={str(path)!r} was pretrained with {key}={meta[key]}, but this run has "
                              f"{label}={want[key]}; pretrain a trunk for this model or change {label}")
    restore_variables(pathlib.Path(path) / TRUNK, model.trunk, meta.get("checksum"))
    return meta
