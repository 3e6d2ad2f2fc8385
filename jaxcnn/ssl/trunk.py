"""Pretrained trunks on disk: one Orbax checkpoint `DIR/{model,meta}` (`jaxcnn.train.checkpoint.save_weights`):
the conv trunk's parameters and BatchNorm statistics (no RNG state) and its record (method, architecture,
widths, timing, losses). The method's figure lies beside them in DIR.

The supervised run loads a trunk into `SSLCNN.trunk` exactly; its head keeps its fresh initialisation.
"""

from __future__ import annotations

import pathlib
from typing import Any

from flax import nnx

from jaxcnn.errors import ConfigError
from jaxcnn.train.checkpoint import (earlier_format, is_weights, read_earlier_meta, read_weights_meta,
                                     refuse_earlier_format, restore_weights, save_weights)

ARCHITECTURE = "ssl_cnn"
PRETRAIN_AGAIN = "pretrain the trunk again (scripts/pretrain.py) into a new directory"


def is_trunk(path: str | pathlib.Path) -> bool:
    """A pretrained trunk, of this jaxcnn or an earlier one (which `load_trunk` refuses in one line)."""
    return is_weights(path) or earlier_format(path, "trunk")


def trunk_signature(trunk: nnx.Module) -> dict[str, Any]:
    """What a trunk must match to load: widths and input channels."""
    return {"widths": [int(conv.out_features) for conv in trunk.convs],
            "in_channels": int(trunk.convs[0].in_features)}


def save_trunk(out: str | pathlib.Path, trunk: nnx.Module, meta: dict[str, Any]) -> None:
    """Writes the trunk and its record (plus the signature) to `out`; Orbax writes them into a temporary
    sibling and renames it when complete, so an interrupted save never looks like a trunk."""
    out = pathlib.Path(out).absolute()
    if out.exists():
        raise ConfigError(f"{out} exists; choose a new directory for the trunk")
    save_weights(out, trunk, {"architecture": ARCHITECTURE, **trunk_signature(trunk), **meta})


def read_trunk_meta(path: str | pathlib.Path) -> dict[str, Any]:
    meta = read_earlier_meta(path, "trunk", PRETRAIN_AGAIN)
    if meta is not None:
        return meta
    if not is_weights(path):
        raise ConfigError(f"ssl.trunk={str(path)!r} is not a pretrained trunk (expected the model/ and meta/ of "
                          "scripts/pretrain.py; make one with it)")
    return read_weights_meta(path, PRETRAIN_AGAIN)


def load_trunk(model: nnx.Module, path: str | pathlib.Path) -> dict[str, Any]:
    """Loads the trunk at `path` into `model.trunk` (an `SSLCNN`); returns its meta.

    Raises:
      ConfigError: not a trunk directory, or one of another architecture, widths or channel count, or of
        an earlier jaxcnn.
      DamagedCheckpoint: the files do not load or match their checksum.
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
    refuse_earlier_format(path, "trunk", "a pretrained trunk", f"delete it to pretrain it again, or {PRETRAIN_AGAIN}")
    restore_weights(path, model.trunk, meta, PRETRAIN_AGAIN)
    return meta
