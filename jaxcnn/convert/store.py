"""Converted weights on disk: one Orbax checkpoint `OUT/{model,meta}` (`jaxcnn.train.checkpoint.save_weights`).

The record holds what rebuilds and feeds the model: source, architecture, num_classes, input_size
(C, H, W), mean, std, the eval transform of the source library (interpolation, crop_pct, resize_size,
crop_mode: `eval_crop`), class_names, and the checksum of the weights.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections
from flax import nnx

from jaxcnn.config import default_config, stored_config
from jaxcnn.data.images import CROP_MODES, RESAMPLING, EvalCrop
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, model_config
from jaxcnn.train.checkpoint import (earlier_format, is_weights, read_earlier_meta, read_weights_meta,
                                     refuse_earlier_format, restore_weights, save_weights)

CONVERT_AGAIN = "convert the weights again with scripts/convert_weights.py into a new directory"


def is_converted(path: str | pathlib.Path) -> bool:
    """Weights converted by scripts/convert_weights.py, by this jaxcnn or an earlier one (`earlier_format`)."""
    return is_weights(path) or earlier_format(path, "weights")


def save_converted(out: str | pathlib.Path, model: nnx.Module, meta: dict[str, Any]) -> None:
    out = pathlib.Path(out).absolute()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new directory")
    save_weights(out, model, meta)


def read_meta(path: str | pathlib.Path) -> dict[str, Any]:
    """The record of converted weights, with the `config` and stored `input_shape` (H, W, C) that build
    and feed the model, as a run's record has them. Weights of an earlier jaxcnn give their meta.json
    (the model they hold is known; `load_converted` refuses them)."""
    meta = read_earlier_meta(path, "weights", CONVERT_AGAIN)
    if meta is None:
        if not is_weights(path):
            raise ConfigError(f"{path}: not a converted checkpoint (expected the model/ and meta/ of "
                              "scripts/convert_weights.py; make one with it)")
        meta = read_weights_meta(path, CONVERT_AGAIN)
    channels, height, width = meta["input_size"]
    return {**meta, "config": json.loads(converted_config(meta).to_json()), "input_shape": [height, width, channels]}


def converted_config(meta: dict[str, Any]) -> ml_collections.ConfigDict:
    """A config whose model and data sections match the converted network (for building and predicting)."""
    config = default_config()
    config.model = model_config(meta["architecture"])
    channels, height, width = meta["input_size"]
    config.data.image_size, config.data.channels = (height, width), channels
    config.data.mean, config.data.std = tuple(meta["mean"]), tuple(meta["std"])
    return config


def eval_crop(meta: dict[str, Any], path: str | pathlib.Path) -> EvalCrop:
    """How predict resizes and crops an image for the converted weights at `path` (record `meta`): as the
    source library's eval transform does (`jaxcnn.data.images.EvalCrop`).

    Records written before `resize_size` and `crop_mode` were recorded get them as their library computes
    them: torchvision's resize_size is round(crop / crop_pct) (its crop_pct was crop / resize_size), any
    other source's timm's floor(size / crop_pct); crop_mode "center" (torchvision's only mode, timm's
    default and that of all its ResNet weights).

    Raises:
      ConfigError: an interpolation, crop_mode or crop_pct that is not valid.
    """
    height, width = meta["input_size"][1:]
    crop_pct, crop_mode = meta.get("crop_pct"), meta.get("crop_mode", "center")
    for key, value, valid in (("interpolation", meta.get("interpolation"), tuple(RESAMPLING)),
                              ("crop_mode", crop_mode, CROP_MODES)):
        if value not in valid:
            raise ConfigError(f"{path}: {key}={value!r} in its record is not valid; valid values: "
                              f"{', '.join(valid)}; {CONVERT_AGAIN}")
    if not (isinstance(crop_pct, (int, float)) and crop_pct > 0):
        raise ConfigError(f"{path}: crop_pct={crop_pct!r} in its record is not valid; valid values: numbers > 0; "
                          f"{CONVERT_AGAIN}")
    if "resize_size" in meta:
        resize_size = meta["resize_size"]
        if not (isinstance(resize_size, list) and len(resize_size) == 2
                and all(isinstance(x, int) and x > 0 for x in resize_size)):
            raise ConfigError(f"{path}: resize_size={resize_size!r} in its record is not valid; valid values: "
                              f"[height, width] of integers > 0; {CONVERT_AGAIN}")
        resize_size = tuple(resize_size)
    elif str(meta.get("source")).startswith("torchvision:"):
        resize_size = (round(height / crop_pct),) * 2
    else:
        resize_size = EvalCrop.timm_resize_size((height, width), crop_pct)
    return EvalCrop(resize_size, meta["interpolation"], crop_mode, crop_pct)


def restore_converted(path: str | pathlib.Path, model: nnx.Module, meta: dict[str, Any]) -> None:
    """Loads the converted weights at `path` (record `meta`) into `model`, built from `meta['config']`."""
    refuse_earlier_format(path, "weights", "converted weights",
                          f"convert them again: scripts/convert_weights.py --source {meta.get('source', '...')} "
                          "--out NEW_DIR")
    restore_weights(path, model, meta, CONVERT_AGAIN)


def build_from_record(meta: dict[str, Any], dtype: str | None = None
                      ) -> tuple[nnx.Module, ml_collections.ConfigDict]:
    """The model a record describes (a run checkpoint's or converted weights': `config`, `num_classes`),
    to restore into, and its config read with today's keys (`stored_config`); `dtype` overrides
    `model.dtype`."""
    config = stored_config(meta["config"])
    if dtype is not None:
        config.model.dtype = dtype
    return build_model(config.model, meta["num_classes"], (*config.data.image_size, config.data.channels),
                       config.seed), config


def load_converted(path: str | pathlib.Path) -> tuple[nnx.Module, dict[str, Any]]:
    """The converted model (eval mode) and its record."""
    meta = read_meta(path)
    model, _ = build_from_record(meta)
    restore_converted(path, model, meta)
    model.eval()
    return model, meta
