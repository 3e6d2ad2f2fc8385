"""Tests for jaxcnn.data.folder: ImageFolder-style datasets (train/ and val/ or test/)."""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import load_dataset
from jaxcnn.data.folder import load_folder
from jaxcnn.errors import ConfigError, ImageError
from tests.data_helpers import data_config, save


# --------------------------------------------------------------------------------------------
# Folder datasets
# --------------------------------------------------------------------------------------------

# Every class has one constant brightness, so labels can be checked from the pixels.
BRIGHTNESS = {"ant": 30, "cat": 130, "dog": 230}


def write_class_images(folder: pathlib.Path, value: int, count: int) -> None:
    """`count` images of constant brightness `value` in mixed formats, modes and sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    makers = [
        lambda i: save(folder / f"{i}.png", Image.new("L", (28, 28), value)),
        lambda i: save(folder / f"{i}.png", Image.new("RGB", (20, 32), (value,) * 3)),
        lambda i: save(folder / f"{i}.png", Image.new("RGBA", (16, 16), (value, value, value, 255))),
        lambda i: save(folder / f"{i}.jpg", Image.new("RGB", (30, 24), (value,) * 3), quality=95),
        lambda i: save(folder / f"{i}.png", Image.fromarray(np.full((9, 11), value * 257, np.uint16))),
    ]
    for i in range(count):
        makers[i % len(makers)](i)


def make_tree(root: pathlib.Path, counts=None, test_name="val", test_classes=None) -> pathlib.Path:
    counts = counts or {"train": 6, test_name: 3}
    for split, count in counts.items():
        names = test_classes if (split != "train" and test_classes is not None) else BRIGHTNESS
        # Created out of order on purpose: the class order must come from sorting.
        for name in reversed(list(names)):
            write_class_images(root / split / name, BRIGHTNESS[name], count)
    return root


@pytest.fixture
def tree(tmp_path):
    root = make_tree(tmp_path / "pets")
    # Hidden files and folders (macOS, Jupyter) are ignored.
    (root / "train" / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


def labels_from_pixels(images: np.ndarray) -> np.ndarray:
    """The class index whose brightness each (constant) image has; checks it is constant."""
    values = np.array(list(BRIGHTNESS.values()))  # in sorted class order: ant, cat, dog
    means = images.reshape(len(images), -1).astype(float).mean(axis=1)
    spread = images.reshape(len(images), -1).astype(int)
    assert np.all(spread.max(axis=1) - spread.min(axis=1) <= 6)  # constant images stay constant
    distance = np.abs(means[:, None] - values[None, :])
    assert np.all(distance.min(axis=1) <= 4)
    return distance.argmin(axis=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_dataset_via_load_dataset(tree, channels):
    dataset = load_dataset(data_config(source=f"folder:{tree}", image_size=(12, 18), channels=channels))
    assert dataset.name == "folder:pets"
    assert dataset.class_names == ("ant", "cat", "dog")
    assert dataset.train_images.shape == (18, 12, 18, channels)
    assert dataset.test_images.shape == (9, 12, 18, channels)
    assert dataset.train_images.dtype == np.uint8 and dataset.test_images.dtype == np.uint8
    assert dataset.train_labels.dtype == np.int32 and dataset.test_labels.dtype == np.int32
    assert collections.Counter(dataset.train_labels.tolist()) == {0: 6, 1: 6, 2: 6}
    assert collections.Counter(dataset.test_labels.tolist()) == {0: 3, 1: 3, 2: 3}
    np.testing.assert_array_equal(labels_from_pixels(dataset.train_images), dataset.train_labels)
    np.testing.assert_array_equal(labels_from_pixels(dataset.test_images), dataset.test_labels)


def test_folder_dataset_is_deterministic_and_shuffled(tree):
    first = load_folder(str(tree), (10, 10), 1)
    second = load_folder(str(tree), (10, 10), 1)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    np.testing.assert_array_equal(first.train_labels, second.train_labels)
    np.testing.assert_array_equal(first.test_labels, second.test_labels)
    # Shuffled once (like TFDS), not grouped by class.
    assert not np.all(np.diff(first.train_labels) >= 0)


def test_folder_dataset_with_class_subset_and_limits(tree):
    data = data_config(source=f"folder:{tree}", image_size=(8, 8), channels=3, classes=(2, 0),
                       max_train=7, max_test=100)
    dataset = load_dataset(data)
    assert dataset.class_names == ("dog", "ant")
    assert dataset.train_images.shape == (7, 8, 8, 3)
    assert dataset.test_images.shape == (6, 8, 8, 3)
    values = np.array([BRIGHTNESS["dog"], BRIGHTNESS["ant"]])
    for images, labels in ((dataset.train_images, dataset.train_labels),
                           (dataset.test_images, dataset.test_labels)):
        assert set(labels.tolist()) <= {0, 1}
        np.testing.assert_allclose(images.reshape(len(images), -1).mean(axis=1), values[labels], atol=4)


def test_folder_with_test_instead_of_val(tmp_path):
    root = make_tree(tmp_path / "ds", counts={"train": 2, "test": 2}, test_name="test")
    dataset = load_folder(str(root), (28, 28), 1)
    assert dataset.class_names == ("ant", "cat", "dog")
    assert dataset.test_images.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(labels_from_pixels(dataset.test_images), dataset.test_labels)


def test_folder_class_missing_from_val_is_config_error(tmp_path):
    root = make_tree(tmp_path / "ds", counts={"train": 1, "val": 1}, test_classes=["ant", "cat"])
    with pytest.raises(ConfigError) as info:
        load_folder(str(root), (28, 28), 1)
    message = str(info.value)
    assert "dog" in message and "missing" in message
    assert "ant" not in message.split("missing")[1].split(";")[0]


def test_folder_extra_class_in_val_is_config_error(tmp_path):
    root = make_tree(tmp_path / "ds", counts={"train": 1, "val": 1})
    write_class_images(root / "val" / "eel", 99, 1)
    with pytest.raises(ConfigError, match="eel"):
        load_folder(str(root), (28, 28), 1)


def test_folder_without_train_is_config_error(tmp_path):
    root = tmp_path / "empty_ds"
    (root / "val" / "a").mkdir(parents=True)
    with pytest.raises(ConfigError) as info:
        load_dataset(data_config(source=f"folder:{root}"))
    assert str(root / "train") in str(info.value)


def test_folder_without_val_or_test_is_config_error(tmp_path):
    root = make_tree(tmp_path / "ds", counts={"train": 1})
    with pytest.raises(ConfigError, match="val"):
        load_folder(str(root), (28, 28), 1)


def test_folder_empty_class_is_config_error(tmp_path):
    root = make_tree(tmp_path / "ds", counts={"train": 1, "val": 1})
    for file in (root / "val" / "cat").iterdir():
        file.unlink()
    with pytest.raises(ConfigError, match="cat"):
        load_folder(str(root), (28, 28), 1)


def test_folder_corrupt_file_is_image_error_naming_it(tree):
    bad = tree / "val" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(ImageError) as info:
        load_dataset(data_config(source=f"folder:{tree}"))
    assert str(bad) in str(info.value)
