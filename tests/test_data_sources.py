"""Tests for jaxcnn.data's sources: embedded MNIST, load_dataset, class subsets (jaxcnn.data.dataset).

TensorFlow is never imported in this process (importing it before torch segfaults here); TFDS's own
builders are tested in test_tfds.py, through child processes.
"""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from jaxcnn.config import default_config
from jaxcnn.data import load_dataset
from jaxcnn.data.dataset import select_classes, truncate
from jaxcnn.data.embedded import load_mnist5k
from jaxcnn.errors import ConfigError
from tests.data_helpers import data_config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def as_bytes_set(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# --------------------------------------------------------------------------------------------
# Embedded MNIST subset
# --------------------------------------------------------------------------------------------


def test_mnist5k_shapes_dtypes_and_class_counts(mnist):
    assert mnist.name == "mnist5k"
    assert mnist.class_names == tuple(str(c) for c in range(10))
    assert mnist.num_classes == 10
    assert mnist.train_images.shape == (4000, 28, 28, 1)
    assert mnist.test_images.shape == (1000, 28, 28, 1)
    assert mnist.image_shape == (28, 28, 1)
    assert mnist.train_images.dtype == np.uint8 and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.dtype == np.int32 and mnist.test_labels.dtype == np.int32
    assert mnist.train_labels.shape == (4000,) and mnist.test_labels.shape == (1000,)
    assert collections.Counter(mnist.train_labels.tolist()) == {c: 400 for c in range(10)}
    assert collections.Counter(mnist.test_labels.tolist()) == {c: 100 for c in range(10)}
    # Real digits: dark background, bright strokes, full 8-bit range.
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0
    assert 0.05 < (mnist.train_images > 127).mean() < 0.4


def test_mnist5k_train_and_test_share_no_image(mnist):
    train, test = as_bytes_set(mnist.train_images), as_bytes_set(mnist.test_images)
    assert len(train) == 4000 and len(test) == 1000  # no duplicates inside a split either
    assert not train & test


def test_mnist5k_is_shuffled_not_grouped_by_class(mnist):
    # Sources are shuffled once (truncate keeps the first N): the first 100 must mix classes.
    assert len(set(mnist.train_labels[:100].tolist())) == 10
    assert len(set(mnist.test_labels[:100].tolist())) >= 8


def test_mnist5k_is_deterministic(mnist):
    again = load_mnist5k()
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(again, field), getattr(mnist, field))


def test_load_dataset_default_config_is_embedded_mnist(mnist):
    data = default_config().data
    data.source = "embedded"
    dataset = load_dataset(data)
    assert dataset.class_names == mnist.class_names
    np.testing.assert_array_equal(dataset.train_images, mnist.train_images)
    np.testing.assert_array_equal(dataset.train_labels, mnist.train_labels)
    np.testing.assert_array_equal(dataset.test_images, mnist.test_images)
    np.testing.assert_array_equal(dataset.test_labels, mnist.test_labels)


def test_load_dataset_default_config_needs_no_changes(mnist):
    dataset = load_dataset(default_config().data)
    assert dataset.train_images.shape == (4000, 28, 28, 1)
    assert dataset.test_images.shape == (1000, 28, 28, 1)


@pytest.mark.parametrize("source", ["", "tfds:"])
def test_load_dataset_empty_source_is_config_error(source):
    with pytest.raises(ConfigError, match="valid sources") as info:
        load_dataset(data_config(source=source))
    assert "folder:PATH" in str(info.value) and "embedded" in str(info.value)


# --------------------------------------------------------------------------------------------
# Class subsets
# --------------------------------------------------------------------------------------------


def test_select_classes_relabels_in_given_order(mnist):
    subset = select_classes(mnist, [7, 2, 5])
    assert subset.class_names == ("7", "2", "5")
    assert subset.num_classes == 3
    assert subset.train_labels.dtype == np.int32
    assert collections.Counter(subset.train_labels.tolist()) == {0: 400, 1: 400, 2: 400}
    assert collections.Counter(subset.test_labels.tolist()) == {0: 100, 1: 100, 2: 100}
    assert subset.train_images.shape == (1200, 28, 28, 1)
    assert subset.test_images.shape == (300, 28, 28, 1)
    for new, old in enumerate([7, 2, 5]):
        np.testing.assert_array_equal(subset.train_images[subset.train_labels == new],
                                      mnist.train_images[mnist.train_labels == old])
        np.testing.assert_array_equal(subset.test_images[subset.test_labels == new],
                                      mnist.test_images[mnist.test_labels == old])
    # The original (shuffled) order is kept.
    keep = np.isin(mnist.train_labels, [7, 2, 5])
    np.testing.assert_array_equal(subset.train_images, mnist.train_images[keep])


def test_select_classes_out_of_range_is_config_error(mnist):
    with pytest.raises(ConfigError) as info:
        select_classes(mnist, [3, 10, -1])
    message = str(info.value)
    assert "10" in message and "-1" in message and "0..9" in message


def test_load_dataset_with_classes_and_limits(mnist):
    subset = select_classes(mnist, [7, 2, 5])
    dataset = load_dataset(data_config(classes=(7, 2, 5), max_train=500, max_test=50))
    assert dataset.class_names == ("7", "2", "5")
    np.testing.assert_array_equal(dataset.train_images, subset.train_images[:500])
    np.testing.assert_array_equal(dataset.train_labels, subset.train_labels[:500])
    np.testing.assert_array_equal(dataset.test_images, subset.test_images[:50])
    np.testing.assert_array_equal(dataset.test_labels, subset.test_labels[:50])
    with pytest.raises(ConfigError, match="12"):
        load_dataset(data_config(classes=(1, 12)))


def test_truncate_zero_means_all(mnist):
    same = truncate(mnist, 0, 0)
    assert len(same.train_labels) == 4000 and len(same.test_labels) == 1000
    cut = truncate(mnist, 10, 20000)
    np.testing.assert_array_equal(cut.train_images, mnist.train_images[:10])
    assert len(cut.test_labels) == 1000


# --------------------------------------------------------------------------------------------
# TFDS stays out of this process (the real TFDS tests are in test_tfds.py)
# --------------------------------------------------------------------------------------------


def test_data_modules_do_not_import_tensorflow():
    code = ("import sys; import jaxcnn.data, jaxcnn.data.tfds, jaxcnn.data.folder, jaxcnn.data.images; "
            "from jaxcnn.config import default_config; jaxcnn.data.load_dataset(default_config().data); "
            "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
