"""Image folders in ImageFolder layout: PATH/train/<class>/*, PATH/val/<class>/* (or test)."""

from __future__ import annotations

import pathlib

import numpy as np
from tqdm import tqdm

from jaxcnn.data.dataset import Dataset
from jaxcnn.data.images import load_image
from jaxcnn.errors import ConfigError

TEST_DIRS = ("val", "test")


def _class_dirs(split_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    return {d.name: d for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def _files(class_dir: pathlib.Path) -> list[pathlib.Path]:
    return [f for f in sorted(class_dir.rglob("*")) if f.is_file() and not f.name.startswith(".")]


def _read_split(split_dir, class_names, size, channels, seed):
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = _files(split_dir / name)
        paths += files
        labels += [label] * len(files)
    images = np.zeros((len(paths), *size, channels), np.uint8)
    for i, file in enumerate(tqdm(paths, desc=f"reading {split_dir}", unit="img", leave=False,
                                  disable=len(paths) < 500)):
        images[i] = load_image(file, size, channels)
    order = np.random.default_rng(seed).permutation(len(paths))  # sources are shuffled once, like TFDS
    return images[order], np.asarray(labels, np.int32)[order]


def load_folder(path: str, size: tuple[int, int], channels: int) -> Dataset:
    """Reads a folder dataset, converting every image to `size` and `channels`.

    Class names are the sub-folders of `train`, sorted; `val` (or `test`) must hold the same ones.

    Raises:
      ConfigError: missing folders, a class missing from or extra in val/test, an empty class.
      ImageError: a file that is not a readable image (the message names it).
    """
    root = pathlib.Path(path).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise ConfigError(f"data.source=folder:{path}: no folder {train_dir} (expected {root}/train/<class>/*)")
    test_dir = next((root / d for d in TEST_DIRS if (root / d).is_dir()), None)
    if test_dir is None:
        raise ConfigError(f"data.source=folder:{path}: no folder {root}/val or {root}/test")
    class_names = tuple(_class_dirs(train_dir))
    if not class_names:
        raise ConfigError(f"data.source=folder:{path}: {train_dir} has no class folders")
    test_classes = tuple(_class_dirs(test_dir))
    missing = sorted(set(class_names) - set(test_classes))
    extra = sorted(set(test_classes) - set(class_names))
    if missing or extra:
        raise ConfigError(
            f"data.source=folder:{path}: {test_dir} must hold the classes of {train_dir}; "
            f"missing: {missing or 'none'}; not in train: {extra or 'none'}")
    for split_dir in (train_dir, test_dir):
        empty = [c for c in class_names if not _files(split_dir / c)]
        if empty:
            raise ConfigError(f"data.source=folder:{path}: no files in {split_dir}/{{{','.join(empty)}}}")
    train = _read_split(train_dir, class_names, size, channels, seed=0)
    test = _read_split(test_dir, class_names, size, channels, seed=1)
    return Dataset(f"folder:{root.name}", class_names, *train, *test)
