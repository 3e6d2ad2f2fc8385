"""Prediction from a run's checkpoint: image files in, top-k classes with probabilities out."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxcnn.convert.store import build_from_record, eval_crop, is_converted, read_meta, restore_converted
from jaxcnn.data.device import make_preprocess
from jaxcnn.data.images import EvalCrop, load_image
from jaxcnn.errors import ConfigError
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import make_predict_fn


@dataclasses.dataclass
class Predictor:
    """A restored model with what it needs to read and label images."""

    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # the stored images' (H, W, C), before device preprocessing
    epoch: int | None  # None: converted weights
    probabilities: callable  # uint8 (N, H, W, C) -> (N, classes)
    crop: EvalCrop | None = None  # converted weights: their library's eval resize + centre crop
    data: ml_collections.ConfigDict | None = None  # a run's data section (its test set); None: converted weights

    def load(self, path: str | pathlib.Path, invert: bool = False) -> np.ndarray:
        """Reads a file as the training images were stored (size, channels), or for converted weights
        as their library's eval transform crops it; raises ImageError."""
        image = load_image(path, self.input_shape[:2], self.input_shape[2], self.crop)
        return 255 - image if invert else image

    def test_images(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The run's own test images at `indices` (as it evaluated them: same data, classes, limits) and
        their true labels; ConfigError for converted weights or an index outside the test set."""
        from jaxcnn.data import load_dataset

        if self.data is None:
            raise ConfigError("--test_index needs the workdir of a training run; converted weights have no test set")
        dataset = load_dataset(self.data)
        n = len(dataset.test_labels)
        bad = [i for i in indices if not 0 <= i < n]
        if bad:
            raise ConfigError(f"--test_index {','.join(map(str, bad))}: the run's test set ({dataset.name}) has "
                              f"{n} images; valid indices: 0..{n - 1}")
        images = dataset.test_images[list(indices)]
        if images.shape[1:] != tuple(self.input_shape):
            raise ConfigError(f"the test images of data.source={self.data.source!r} are {images.shape[1:]}, the "
                              f"run stored {tuple(self.input_shape)}: the data changed since the run")
        return images, dataset.test_labels[list(indices)]


@dataclasses.dataclass
class Restored:
    """A model restored from a run's checkpoint or from converted weights, in eval mode."""

    model: nnx.Module
    config: ml_collections.ConfigDict
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # the stored images' (H, W, C)
    epoch: int | None  # None: converted weights
    crop: EvalCrop | None  # converted weights: their library's eval resize + centre crop

    @property
    def crop_pct(self) -> float | None:
        return None if self.crop is None else self.crop.crop_pct


def restore_model(workdir: str | pathlib.Path, epoch: int | None = None, dtype: str | None = None) -> Restored:
    """Restores the best checkpoint of `workdir` (or `epoch`); `workdir` may also be weights converted
    by scripts/convert_weights.py. `dtype` overrides the run's `model.dtype` (same float32 parameters).

    Raises:
      ConfigError: no checkpoints in `workdir`, no checkpoint for `epoch`, `epoch` < 1, converted
        weights of an earlier jaxcnn or with an eval transform that is not valid (`eval_crop`).
      DamagedCheckpoint: the checkpoint does not restore or match its checksum.
    """
    crop = None
    if is_converted(workdir):
        meta = read_meta(workdir)
        model, config = build_from_record(meta, dtype)
        restore_converted(workdir, model, meta)
        crop = eval_crop(meta, workdir)
    else:
        checkpoints = Checkpoints(workdir, read_only=True)
        try:
            epoch, meta = _run_checkpoint(workdir, checkpoints, epoch)
            model, config = build_from_record(meta, dtype)
            checkpoints.restore(epoch, model, meta=meta)
        finally:
            checkpoints.close()
    model.eval()
    return Restored(model, config, tuple(meta["class_names"]), tuple(meta["input_shape"]), epoch, crop)


def _run_checkpoint(workdir: str | pathlib.Path, checkpoints: Checkpoints,
                    epoch: int | None) -> tuple[int, dict[str, Any]]:
    """The epoch (given, or the best one) and record of a run's checkpoint."""
    if epoch is not None and epoch < 1:
        raise ConfigError(f"--epoch={epoch}: epochs are numbered from 1 (leave it out for the best epoch)")
    latest = checkpoints.latest_meta()
    if latest is None:
        raise ConfigError(f"{workdir}: no checkpoints (expected {checkpoints.directory}/<epoch>); "
                          "train first with scripts/train.py --workdir")
    epoch = epoch or latest[1]["best_epoch"]
    if epoch not in checkpoints.epochs():
        raise ConfigError(f"{workdir}: no checkpoint for epoch {epoch}; kept: {checkpoints.epochs()}")
    return epoch, checkpoints.meta(epoch)


def load_predictor(workdir: str | pathlib.Path, epoch: int | None = None) -> Predictor:
    """The predictor of `restore_model(workdir, epoch)`: its preprocessing and class names."""
    r = restore_model(workdir, epoch)
    return _predictor(r.model, r.config, r.class_names, r.input_shape, r.epoch, r.crop)


def _predictor(model: nnx.Module, config: ml_collections.ConfigDict, class_names: tuple[str, ...],
               input_shape: tuple[int, int, int], epoch: int | None, crop: EvalCrop | None = None) -> Predictor:
    graphdef, state = nnx.split(model)
    predict_fn = make_predict_fn(graphdef, make_preprocess(config.data))
    return Predictor(class_names, input_shape, epoch,
                     lambda images: np.asarray(predict_fn(state, jax.numpy.asarray(images))), crop,
                     None if epoch is None else config.data)


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities)[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]
