"""The in-memory dataset every source produces, and class subsets."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxcnn.config import check_label_fraction
from jaxcnn.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Images as uint8 (N, H, W, C) and int32 labels 0..k-1, for train and test."""

    name: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])


def select_classes(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """Keeps only `classes` (original label ids), relabelled 0..k-1 in the given order.

    Raises:
      ConfigError: a class id outside the dataset's labels.
    """
    classes = [int(c) for c in classes]
    bad = [c for c in classes if not 0 <= c < dataset.num_classes]
    if bad:
        raise ConfigError(
            f"data.classes: {bad} not in {dataset.name}, whose labels are 0..{dataset.num_classes - 1}")
    lookup = np.full(dataset.num_classes, -1, np.int32)
    lookup[classes] = np.arange(len(classes), dtype=np.int32)

    def pick(images, labels):
        new = lookup[labels]
        keep = new >= 0
        return images[keep], new[keep]

    return Dataset(
        dataset.name,
        tuple(dataset.class_names[c] for c in classes),
        *pick(dataset.train_images, dataset.train_labels),
        *pick(dataset.test_images, dataset.test_labels),
    )


def truncate(dataset: Dataset, max_train: int, max_test: int) -> Dataset:
    """Keeps the first `max_train`/`max_test` images (0 = all); sources are already shuffled."""
    n_train = max_train or len(dataset.train_labels)
    n_test = max_test or len(dataset.test_labels)
    return dataclasses.replace(
        dataset,
        train_images=dataset.train_images[:n_train], train_labels=dataset.train_labels[:n_train],
        test_images=dataset.test_images[:n_test], test_labels=dataset.test_labels[:n_test])


def label_subset(dataset: Dataset, fraction: float, seed: int = 0) -> Dataset:
    """Keeps a stratified random `fraction` of the training images (at least one per class), in
    their original order; the test split is unchanged. The same `seed` picks the same images.

    Raises:
      ConfigError: `fraction` outside (0, 1].
    """
    check_label_fraction(fraction)
    if fraction == 1:
        return dataset
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(dataset.num_classes):
        idx = np.flatnonzero(dataset.train_labels == c)
        if len(idx):
            keep.append(rng.choice(idx, max(1, round(fraction * len(idx))), replace=False))
    keep = np.sort(np.concatenate(keep))
    return dataclasses.replace(dataset, train_images=dataset.train_images[keep],
                               train_labels=dataset.train_labels[keep])
