"""Tests for jaxcnn.data.images: reading image files (modes, bit depths, transparency, errors)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data.images import convert, load_image
from jaxcnn.errors import ImageError
from tests.data_helpers import LUMA, save


# --------------------------------------------------------------------------------------------
# Reading image files
# --------------------------------------------------------------------------------------------


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
