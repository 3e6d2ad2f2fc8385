"""Prediction from a run's checkpoint: image files in, top-k classes with probabilities out, and a check
of each image against what the model saw on its own test set (`Reference`): a gray image that looks
inverted (dark on light, `inverted_hint`) and predictions that look out of distribution
(`out_of_distribution`)."""

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
from jaxcnn.models import compiler_options
from jaxcnn.report.plots import short_name
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import make_predict_fn


REFERENCE_IMAGES = 500  # test images predict measures the model on (evenly spaced through the test set)
LOW, HIGH = 1.0, 99.0  # percentiles of the test set beyond which a prediction's confidence/entropy is flagged
INPUT_LOW, INPUT_HIGH = 0.5, 99.5  # the same for an image's brightness and border brightness (both sides)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of class probabilities."""
    p = np.clip(np.asarray(probabilities, np.float64), 1e-12, 1.0)
    return -(p * np.log(p)).sum(-1)


def image_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per uint8 image (N, H, W, C): its mean pixel value and the mean of its border (the outer ring,
    1/10 of the shorter side wide), both 0..255."""
    x = np.asarray(images, np.float64)
    h, w = x.shape[1:3]
    width = max(1, min(h, w) // 10)
    ring = np.ones((h, w), bool)
    ring[width:h - width, width:w - width] = False
    return x.mean(axis=(1, 2, 3)), x[:, ring].mean(axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class Reference:
    """Statistics of a model on its own test images, what a new image is compared with."""

    total: int  # images in the test set
    confidence: np.ndarray  # top-1 probability per measured test image
    entropy: np.ndarray
    brightness: np.ndarray  # mean pixel value, 0..255
    border: np.ndarray  # mean of the border ring, 0..255
    channels: int

    @property
    def measured(self) -> str:
        n = len(self.confidence)
        return f"{n} test images" if n == self.total else f"{n} (evenly spaced) of its {self.total} test images"


def _pct(q: float) -> str:
    suffix = "st" if q == 1 else "th"
    return f"{q:g}{suffix} percentile"


def inverted_hint(reference: Reference, image: np.ndarray, inverted: bool = False) -> str | None:
    """For a gray model: why `image` (uint8 (H, W, 1), as the model gets it) looks like the opposite
    polarity of the test images (dark digit on light paper vs MNIST's light on dark), or None.

    It does when its border brightness lies outside the test images' range (0.5th-99.5th percentile)
    and the inverted image's border would be at least twice as close to their median."""
    if reference.channels != 1:
        return None
    _, (border,) = image_statistics(image[None])
    low, high = np.percentile(reference.border, [INPUT_LOW, INPUT_HIGH])
    median = float(np.median(reference.border))
    if low <= border <= high or abs(255 - border - median) > abs(border - median) / 2:
        return None
    looks = "dark on light" if border > median else "light on dark"
    return (f"looks {looks}{' after --invert' if inverted else ''} (border brightness {border:.0f} of 255; this "
            f"model's test images: {low:.0f}-{high:.0f}): {'try without --invert' if inverted else 'try --invert'}")


def out_of_distribution(reference: Reference, image: np.ndarray, probabilities: np.ndarray) -> list[str]:
    """Why a prediction (`probabilities` of `image`, uint8 (H, W, C)) lies far outside what the model
    showed on its test images: each of its confidence (top-1 probability), entropy, mean brightness and
    border brightness beyond the test images' 1st/99th (confidence, entropy) or 0.5th/99.5th
    percentile; [] when none is."""
    reasons = []
    confidence, ent = float(np.max(probabilities)), float(entropy(probabilities))
    low = np.percentile(reference.confidence, LOW)
    if confidence < low:
        reasons.append(f"confidence {confidence:.2f} is below the {_pct(LOW)} ({low:.2f})")
    high = np.percentile(reference.entropy, HIGH)
    if ent > high:
        reasons.append(f"entropy {ent:.2f} is above the {_pct(HIGH)} ({high:.2f})")
    (brightness,), (border,) = image_statistics(image[None])
    for what, value, values in (("brightness", brightness, reference.brightness), ("border brightness", border,
                                                                                   reference.border)):
        low, high = np.percentile(values, [INPUT_LOW, INPUT_HIGH])
        if value < low:
            reasons.append(f"mean {what} {value:.0f} is below the {_pct(INPUT_LOW)} ({low:.0f})")
        elif value > high:
            reasons.append(f"mean {what} {value:.0f} is above the {_pct(INPUT_HIGH)} ({high:.0f})")
    if reasons:
        reasons[-1] += f" of this model's {reference.measured}"
    return reasons


@dataclasses.dataclass
class Predictor:
    """A restored model with what it needs to read and label images."""

    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]  # the stored images' (H, W, C), before device preprocessing
    epoch: int | None  # None: converted weights
    probabilities: callable  # uint8 (N, H, W, C) -> (N, classes)
    crop: EvalCrop | None = None  # converted weights: their library's eval resize + centre crop
    data: ml_collections.ConfigDict | None = None  # a run's data section (its test set); None: converted weights
    _dataset: Any = dataclasses.field(default=None, repr=False)  # the run's dataset, loaded once on demand

    def load(self, path: str | pathlib.Path, invert: bool = False) -> np.ndarray:
        """Reads a file as the training images were stored (size, channels), or for converted weights
        as their library's eval transform crops it; raises ImageError."""
        image = load_image(path, self.input_shape[:2], self.input_shape[2], self.crop)
        return 255 - image if invert else image

    def test_images(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The run's own test images at `indices` (as it evaluated them: same data, classes, limits) and
        their true labels; ConfigError for converted weights or an index outside the test set."""
        if self.data is None:
            raise ConfigError("--test_index needs the workdir of a training run; converted weights have no test set")
        dataset = self._test_set()
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

    def _test_set(self):
        if self._dataset is None:
            from jaxcnn.data import load_dataset

            self._dataset = load_dataset(self.data)
        return self._dataset

    def reference(self, max_images: int = REFERENCE_IMAGES, batch: int = 100) -> Reference:
        """What the model shows on (up to `max_images`, evenly spaced) images of its own test set,
        computed now. ConfigError for converted weights (no test set) or a test set that does not load
        or no longer fits the run."""
        if self.data is None:
            raise ConfigError("converted weights come without a test set to compare with")
        dataset = self._test_set()
        total = len(dataset.test_images)
        if total == 0 or dataset.test_images.shape[1:] != tuple(self.input_shape):
            raise ConfigError(f"the test set of data.source={self.data.source!r} is not the one the run stored")
        chosen = np.unique(np.linspace(0, total - 1, min(total, max_images)).round().astype(int))
        images = dataset.test_images[chosen]
        probs = []
        for start in range(0, len(images), batch):  # fixed batches: one compilation, bounded memory
            part = images[start:start + batch]
            padded = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)]) if len(part) < batch else part
            probs.append(self.probabilities(padded)[:len(part)])
        probs = np.concatenate(probs)
        brightness, border = image_statistics(images)
        return Reference(total, probs.max(-1), entropy(probs), brightness, border, self.input_shape[2])


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
    predict_fn = make_predict_fn(graphdef, make_preprocess(config.data), compiler_options(config.model))
    return Predictor(class_names, input_shape, epoch,
                     lambda images: np.asarray(predict_fn(state, jax.numpy.asarray(images))), crop,
                     None if epoch is None else config.data)


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[tuple[str, float]]:
    order = np.argsort(-probabilities)[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def format_top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> str:
    """"8 0.970, 3 0.020, 5 0.004"; where class names hold commas (ImageNet's synonyms) their first
    synonym, separated by " | ": "tench 0.912 | goldfish 0.020"."""
    commas = any("," in name for name in class_names)
    return (" | " if commas else ", ").join(f"{short_name(c) if commas else c} {p:.3f}"
                                            for c, p in top_k(probabilities, class_names, k))
