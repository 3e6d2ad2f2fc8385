"""Tests for jaxcnn.data: embedded MNIST, image reading, folders, class subsets, TFDS, device side.

TensorFlow is never imported in this process (importing it before torch segfaults here); TFDS's own
builders are tested in test_tfds.py, through child processes.
"""

from __future__ import annotations

import collections
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn.config import ConfigError, default_config
from jaxcnn.data import load_dataset
from jaxcnn.data.dataset import select_classes, truncate
from jaxcnn.data.device import epoch_permutation, make_preprocess, pad_for_eval
from jaxcnn.data.embedded import load_mnist5k
from jaxcnn.data.folder import load_folder
from jaxcnn.data.images import ImageError, convert, load_image

REPO = pathlib.Path(__file__).resolve().parents[1]
LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def data_config(**fields):
    data = default_config().data
    for key, value in fields.items():
        data[key] = value
    return data


def as_bytes_set(images: np.ndarray) -> set[bytes]:
    return {image.tobytes() for image in images}


# --------------------------------------------------------------------------------------------
# 1. Embedded MNIST subset
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


@pytest.mark.parametrize("source", ["embedded", "embedded:mnist5k"])
def test_load_dataset_default_config_is_embedded_mnist(mnist, source):
    data = default_config().data
    data.source = source
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
# 2. Reading image files
# --------------------------------------------------------------------------------------------


def save(path: pathlib.Path, image: Image.Image, **kwargs) -> pathlib.Path:
    image.save(path, **kwargs)
    return path


def test_gray_png_exact_in_1_and_3_channels(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    path = save(tmp_path / "gray.png", Image.fromarray(array, "L"))
    gray = load_image(path, (4, 6), 1)
    assert gray.dtype == np.uint8 and gray.shape == (4, 6, 1)
    np.testing.assert_array_equal(gray[..., 0], array)
    rgb = load_image(path, (4, 6), 3)
    assert rgb.dtype == np.uint8 and rgb.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], array)


def test_rgb_png_exact_and_gray_is_luma(tmp_path):
    array = np.array([[[255, 255, 255], [255, 0, 0], [0, 255, 0]],
                      [[0, 0, 255], [0, 0, 0], [10, 200, 90]]], np.uint8)
    path = save(tmp_path / "rgb.png", Image.fromarray(array, "RGB"))
    rgb = load_image(path, (2, 3), 3)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, array)
    gray = load_image(path, (2, 3), 1)
    assert gray.shape == (2, 3, 1) and gray.dtype == np.uint8
    assert gray[0, 0, 0] == 255  # white stays white
    assert gray[1, 1, 0] == 0
    np.testing.assert_array_equal(gray[..., 0], np.asarray(Image.fromarray(array).convert("L")))
    # PIL's 'L' conversion is ITU-R 601 luma (rounded).
    np.testing.assert_allclose(gray[..., 0], array @ LUMA, atol=1)


def test_rgba_png_is_composited_over_black(tmp_path):
    array = np.zeros((2, 2, 4), np.uint8)
    array[0, 0] = (255, 255, 255, 0)  # fully transparent white -> black
    array[0, 1] = (255, 255, 255, 255)  # opaque white -> white
    array[1, 0] = (200, 100, 50, 128)  # half transparent -> colour * 128/255
    array[1, 1] = (90, 90, 90, 255)
    path = save(tmp_path / "rgba.png", Image.fromarray(array, "RGBA"))
    rgb = load_image(path, (2, 2), 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], [255, 255, 255])
    np.testing.assert_allclose(rgb[1, 0], np.array([200, 100, 50]) * 128 / 255, atol=1)
    np.testing.assert_array_equal(rgb[1, 1], [90, 90, 90])
    gray = load_image(path, (2, 2), 1)
    assert gray.shape == (2, 2, 1)
    assert gray[0, 0, 0] == 0 and gray[0, 1, 0] == 255 and gray[1, 1, 0] == 90


def test_gray_with_alpha_and_gray_with_transparency_key(tmp_path):
    la = np.array([[[200, 0], [200, 255]]], np.uint8)  # 1x2, 'LA'
    path = save(tmp_path / "la.png", Image.fromarray(la, "LA"))
    np.testing.assert_array_equal(load_image(path, (1, 2), 1)[..., 0], [[0, 200]])
    gray = np.array([[10, 200]], np.uint8)
    path = save(tmp_path / "ltrns.png", Image.fromarray(gray, "L"), transparency=200)
    np.testing.assert_array_equal(load_image(path, (1, 2), 1)[..., 0], [[10, 0]])


def test_palette_png(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 0, 255, 255, 255, 255] + [0, 0, 0] * 253)
    image.putdata([0, 1, 2])
    path = save(tmp_path / "palette.png", image)
    assert Image.open(path).mode == "P"
    np.testing.assert_array_equal(load_image(path, (1, 3), 3)[0], [[255, 0, 0], [0, 0, 255], [255, 255, 255]])
    np.testing.assert_array_equal(load_image(path, (1, 3), 1)[0, :, 0], [76, 29, 255])
    # A transparent palette entry becomes black.
    path = save(tmp_path / "palette_trns.png", image, transparency=2)
    np.testing.assert_array_equal(load_image(path, (1, 3), 3)[0], [[255, 0, 0], [0, 0, 255], [0, 0, 0]])


def test_16bit_gray_png_is_scaled_to_8_bits(tmp_path):
    array = np.array([[0, 1000, 65535], [32768, 65535, 257]], np.uint16)
    path = save(tmp_path / "gray16.png", Image.fromarray(array))
    assert Image.open(path).mode.startswith("I;16")
    gray = load_image(path, (2, 3), 1)
    assert gray.dtype == np.uint8 and gray.shape == (2, 3, 1)
    np.testing.assert_array_equal(gray[..., 0], np.rint(array * (255 / 65535)).astype(np.uint8))
    assert gray[0, 2, 0] == 255 and gray[0, 0, 0] == 0 and gray[1, 0, 0] == 128
    rgb = load_image(path, (2, 3), 3)
    np.testing.assert_array_equal(rgb, np.repeat(gray, 3, axis=-1))


def test_16bit_scaling_does_not_depend_on_image_max(tmp_path):
    dark = save(tmp_path / "dark16.png", Image.fromarray(np.array([[0, 100, 200, 255]], np.uint16)))
    bright = save(tmp_path / "bright16.png", Image.fromarray(np.array([[0, 100, 255, 65535]], np.uint16)))
    assert Image.open(dark).mode.startswith("I;16")
    assert load_image(bright, (1, 4), 1)[0, 2, 0] == 1  # 255/65535 of full scale
    np.testing.assert_array_equal(load_image(dark, (1, 4), 1)[0, :, 0], [0, 0, 1, 1])


def test_16bit_png_transparency_is_composited_over_black(tmp_path):
    path = save(tmp_path / "trns16.png", Image.fromarray(np.array([[0, 65535, 30000]], np.uint16)),
                transparency=30000)
    assert Image.open(path).info.get("transparency") == 30000
    np.testing.assert_array_equal(load_image(path, (1, 3), 1)[0, :, 0], [0, 255, 0])


def test_jpeg_rgb_and_cmyk(tmp_path):
    path = save(tmp_path / "photo.jpg", Image.new("RGB", (10, 8), (200, 30, 90)), quality=95)
    rgb = load_image(path, (8, 10), 3)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 10, 3)
    assert np.abs(rgb.astype(int) - [200, 30, 90]).max() <= 4
    gray = load_image(path, (8, 10), 1)
    assert gray.shape == (8, 10, 1)
    assert abs(int(gray.mean()) - round(float(np.dot([200, 30, 90], LUMA)))) <= 4
    path = save(tmp_path / "cmyk.jpg", Image.new("CMYK", (4, 4), (0, 0, 0, 0)), quality=95)
    assert np.all(load_image(path, (4, 4), 3) >= 250)  # no ink = white


def test_resize_keeps_orientation_and_constant_regions(tmp_path):
    array = np.zeros((4, 6), np.uint8)
    array[:2] = 255  # top half white (wide image: 6 wide, 4 high)
    path = save(tmp_path / "half.png", Image.fromarray(array, "L"))
    gray = load_image(path, (8, 12), 1)
    assert gray.shape == (8, 12, 1) and gray.dtype == np.uint8
    assert np.all(gray[:3] == 255) and np.all(gray[-3:] == 0)
    small = load_image(path, (2, 3), 3)
    assert small.shape == (2, 3, 3)
    assert np.all(small[0] > 200) and np.all(small[1] < 55)
    # A constant image stays constant at any size.
    const = save(tmp_path / "const.png", Image.new("RGB", (13, 7), (40, 80, 120)))
    out = load_image(const, (28, 28), 3)
    assert out.shape == (28, 28, 3)
    np.testing.assert_array_equal(out, np.broadcast_to([40, 80, 120], (28, 28, 3)))


def test_convert_accepts_in_memory_images():
    image = Image.fromarray(np.full((5, 7), 123, np.uint8), "L")
    out = convert(image, (3, 4), 3)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert np.all(out == 123)
    out = convert(Image.fromarray(np.full((5, 7), 65535, np.uint16)), (5, 7), 1)
    assert out.shape == (5, 7, 1) and np.all(out == 255)


def test_missing_file_is_image_error_naming_it(tmp_path):
    path = tmp_path / "nope" / "missing.png"
    with pytest.raises(ImageError) as info:
        load_image(path, (28, 28), 1)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_oversized_image_is_image_error_naming_it(tmp_path, monkeypatch):
    path = save(tmp_path / "huge.png", Image.new("L", (10, 10)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 100 pixels > 2 * limit: a "bomb"
    with pytest.raises(ImageError) as info:
        load_image(path, (28, 28), 1)
    assert str(path) in str(info.value)


def test_corrupt_files_are_image_errors_naming_them(tmp_path):
    random_png = tmp_path / "random.png"
    random_png.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n")
    good = save(tmp_path / "good.png", Image.fromarray(np.full((20, 20, 3), 7, np.uint8)))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    for path in (random_png, text, truncated):
        with pytest.raises(ImageError) as info:
            load_image(path, (28, 28), 1)
        assert str(path) in str(info.value), str(info.value)


# --------------------------------------------------------------------------------------------
# 3. Folder datasets
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


# --------------------------------------------------------------------------------------------
# 4. Class subsets
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
# 5. TFDS stays out of this process (the real TFDS tests are in test_tfds.py)
# --------------------------------------------------------------------------------------------


def test_data_modules_do_not_import_tensorflow():
    code = ("import sys; import jaxcnn.data, jaxcnn.data.tfds, jaxcnn.data.folder, jaxcnn.data.images; "
            "from jaxcnn.config import default_config; jaxcnn.data.load_dataset(default_config().data); "
            "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


# --------------------------------------------------------------------------------------------
# 6. Device-side preprocessing and batching
# --------------------------------------------------------------------------------------------


def uint8_batch(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_preprocess_scales_to_unit_range():
    batch = uint8_batch((5, 28, 28, 1))
    out = make_preprocess(data_config())(jnp.asarray(batch), None)
    assert out.dtype == jnp.float32 and out.shape == (5, 28, 28, 1)
    np.testing.assert_allclose(np.asarray(out), batch / 255.0, rtol=1e-6, atol=1e-7)


def test_preprocess_normalises_per_channel():
    batch = uint8_batch((4, 8, 8, 3))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    data = data_config(image_size=(8, 8), channels=3, mean=mean, std=std)
    out = make_preprocess(data)(jnp.asarray(batch), None)
    expected = (batch / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)
    # One mean/std value applies to every channel.
    out = make_preprocess(data_config(image_size=(8, 8), channels=3, mean=(0.5,), std=(0.25,)))(batch, None)
    np.testing.assert_allclose(np.asarray(out), (batch / 255.0 - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_preprocess_gray_to_rgb_repeats():
    batch = uint8_batch((3, 28, 28, 1))
    out = np.asarray(make_preprocess(data_config(channels=3))(jnp.asarray(batch), None))
    assert out.shape == (3, 28, 28, 3)
    for c in range(3):
        np.testing.assert_allclose(out[..., c], batch[..., 0] / 255.0, rtol=1e-6, atol=1e-7)


def test_preprocess_rgb_to_gray_is_luma():
    batch = uint8_batch((3, 10, 12, 3))
    out = np.asarray(make_preprocess(data_config(image_size=(10, 12), channels=1))(jnp.asarray(batch), None))
    assert out.shape == (3, 10, 12, 1)
    np.testing.assert_allclose(out[..., 0], (batch / 255.0) @ LUMA, rtol=1e-5, atol=1e-6)
    # Agrees with PIL's 'L' conversion (which rounds to 8 bits).
    pil = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in batch])
    np.testing.assert_allclose(out[..., 0] * 255, pil, atol=0.51)


def test_preprocess_resizes():
    batch = uint8_batch((2, 28, 28, 1))
    out = make_preprocess(data_config(image_size=(14, 20)))(jnp.asarray(batch), None)
    assert out.shape == (2, 14, 20, 1) and out.dtype == jnp.float32
    const = np.full((2, 28, 28, 1), 100, np.uint8)
    out = np.asarray(make_preprocess(data_config(image_size=(32, 40), channels=3))(jnp.asarray(const), None))
    assert out.shape == (2, 32, 40, 3)
    np.testing.assert_allclose(out, 100 / 255.0, atol=1e-5)
    # Smooth content survives downsampling: a left-to-right ramp stays a ramp.
    ramp = np.broadcast_to(np.linspace(0, 255, 28).astype(np.uint8)[None, None, :, None], (1, 28, 28, 1))
    out = np.asarray(make_preprocess(data_config(image_size=(14, 14)))(jnp.asarray(ramp), None))
    assert np.all(np.diff(out[0, 7, :, 0]) > 0)


def crop_offsets(out: np.ndarray, x: np.ndarray, padding: int) -> list[tuple[int, int]]:
    """For each image, the (dy, dx) of the zero-padded input that `out` is a crop of."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = []
    for i in range(n):
        found = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                 if np.allclose(out[i], padded[i, dy:dy + h, dx:dx + w], atol=1e-6)]
        assert len(found) == 1, f"image {i}: output is not a single crop of the padded input ({found})"
        offsets.append(found[0])
    return offsets


def test_random_crop_is_a_shifted_copy_and_depends_on_key():
    batch = uint8_batch((16, 12, 12, 1), seed=1) | 1  # no zero pixels: shifts are unambiguous
    preprocess = make_preprocess(data_config(image_size=(12, 12), crop_padding=2))
    x = batch / 255.0
    out1 = np.asarray(preprocess(jnp.asarray(batch), jax.random.key(0)))
    out2 = np.asarray(preprocess(jnp.asarray(batch), jax.random.key(1)))
    assert out1.shape == batch.shape and out1.dtype == np.float32
    offsets1, offsets2 = crop_offsets(out1, x, 2), crop_offsets(out2, x, 2)
    assert len(set(offsets1)) > 3  # images are shifted independently
    assert any(o != (2, 2) for o in offsets1)
    assert offsets1 != offsets2 and not np.array_equal(out1, out2)
    # Same key, same crops; jitted the same as eager (to the last bit on a CPU; a GPU's fused kernel may round the
    # scaling to [0, 1] differently by one ulp).
    np.testing.assert_allclose(np.asarray(jax.jit(preprocess)(jnp.asarray(batch), jax.random.key(0))), out1,
                               rtol=2e-7, atol=0)
    # No key (evaluation): no augmentation.
    np.testing.assert_allclose(np.asarray(preprocess(jnp.asarray(batch), None)), x, rtol=1e-6, atol=1e-7)


def test_random_crop_uses_every_shift_up_to_padding():
    batch = uint8_batch((64, 6, 6, 1), seed=2) | 1
    preprocess = make_preprocess(data_config(image_size=(6, 6), crop_padding=2))
    out = np.asarray(preprocess(jnp.asarray(batch), jax.random.key(5)))
    offsets = np.array(crop_offsets(out, batch / 255.0, 2))
    assert set(offsets[:, 0].tolist()) == set(range(5))
    assert set(offsets[:, 1].tolist()) == set(range(5))


def test_no_crop_without_padding():
    batch = uint8_batch((4, 28, 28, 1))
    out = make_preprocess(data_config())(jnp.asarray(batch), jax.random.key(3))
    np.testing.assert_allclose(np.asarray(out), batch / 255.0, rtol=1e-6, atol=1e-7)


def test_epoch_permutation():
    key = jax.random.key(42)
    perm = np.asarray(epoch_permutation(key, 0, 103, 10))
    assert perm.shape == (10, 10) and perm.dtype == np.int32
    assert len(set(perm.ravel().tolist())) == 100
    assert perm.min() >= 0 and perm.max() < 103
    np.testing.assert_array_equal(np.asarray(epoch_permutation(key, 0, 103, 10)), perm)
    assert not np.array_equal(np.asarray(epoch_permutation(key, 1, 103, 10)), perm)
    assert not np.array_equal(np.asarray(epoch_permutation(jax.random.key(7), 0, 103, 10)), perm)
    full = np.asarray(epoch_permutation(key, 3, 100, 20))
    assert full.shape == (5, 20)
    np.testing.assert_array_equal(np.sort(full.ravel()), np.arange(100))
    assert not np.array_equal(full.ravel(), np.arange(100))


def test_pad_for_eval():
    images = uint8_batch((25, 4, 4, 1)) | 1
    labels = np.arange(25, dtype=np.int32) % 7 + 1
    padded_images, padded_labels, mask = pad_for_eval(images, labels, 10)
    assert padded_images.shape == (30, 4, 4, 1) and padded_images.dtype == np.uint8
    assert padded_labels.shape == (30,) and padded_labels.dtype == np.int32
    assert mask.shape == (30,) and mask.dtype == bool
    assert mask.sum() == 25 and mask[:25].all() and not mask[25:].any()
    np.testing.assert_array_equal(padded_images[:25], images)
    np.testing.assert_array_equal(padded_labels[:25], labels)
    assert not padded_images[25:].any() and not padded_labels[25:].any()
    same_images, same_labels, mask = pad_for_eval(images[:20], labels[:20], 10)
    assert same_images.shape == (20, 4, 4, 1) and mask.all() and len(mask) == 20
    np.testing.assert_array_equal(same_labels, labels[:20])
