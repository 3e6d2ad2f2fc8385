"""Tests for jaxcnn.data.augment (on-device affine resize/augmentation) and its use in
make_preprocess. Offline and fast (CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn.config import default_config
from jaxcnn.data import augment as A
from jaxcnn.data.device import make_preprocess
from jaxcnn.data.embedded import load_mnist5k
from tests.data_helpers import data_config


@pytest.fixture(scope="module")
def digits():
    return load_mnist5k().train_images[:64]  # (64, 28, 28, 1) uint8


def random_images(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape, np.float32))


SAMPLERS = [A.affine_sample, A.axis_aligned_sample]


# --------------------------------------------------------------------------------------------
# Sampling and matrices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("in_hw,out_hw", [((28, 28), (224, 224)), ((20, 28), (224, 160)),
                                          ((28, 28), (28, 28))])
def test_resize_matrix_matches_jax_image_resize_when_upscaling(sampler, in_hw, out_hw):
    x = random_images((3, *in_hw, 2))
    m = jnp.broadcast_to(A.resize_matrix(in_hw, out_hw), (3, 2, 3))
    got = sampler(x, m, out_hw)
    for antialias in (False, True):  # the same when upscaling
        want = jax.image.resize(x, (3, *out_hw, 2), "bilinear", antialias=antialias)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("in_hw,out_hw", [((100, 75), (32, 32)), ((28, 28), (20, 24)),
                                          ((60, 30), (224, 160))])
def test_axis_aligned_sample_is_antialiased_like_jax_image(in_hw, out_hw):
    """Downscaling widens the bilinear kernel as jax.image.resize(antialias=True) does; the centre
    crop is jax.image.scale_and_translate(antialias=True) with the same scale and offset."""
    x = random_images((2, *in_hw, 3))
    got = A.axis_aligned_sample(x, A.resize_matrix(in_hw, out_hw)[None].repeat(2, 0), out_hw)
    want = jax.image.resize(x, (2, *out_hw, 3), "bilinear", antialias=True)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    m = np.asarray(A.center_crop_matrix(in_hw, out_hw, 0.875))
    scale = 1 / m[[0, 1], [0, 1]]  # output px per input px; in = (out + 0.5 - t) / scale - 0.5
    translation = 0.5 - scale * (m[:, 2] + 0.5)
    got = A.axis_aligned_sample(x, np.broadcast_to(m, (2, 2, 3)), out_hw)
    np.testing.assert_allclose(A.eval_resize(x, out_hw, 0.875), got, atol=2e-5, rtol=0)
    want = jax.image.scale_and_translate(x, (2, *out_hw, 3), (1, 2), jnp.asarray(scale),
                                         jnp.asarray(translation), "linear", antialias=True)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_identity_matrix_returns_the_image(sampler):
    x = random_images((2, 17, 23, 3))
    got = sampler(x, jnp.broadcast_to(A.identity_matrix(), (2, 2, 3)), (17, 23))
    np.testing.assert_allclose(got, x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_hflip_matrix_is_fliplr(sampler):
    x = random_images((2, 13, 19, 3))
    got = sampler(x, jnp.broadcast_to(A.hflip_matrix((13, 19)), (2, 2, 3)), (13, 19))
    np.testing.assert_allclose(got, np.asarray(x)[:, :, ::-1], atol=1e-6, rtol=0)


@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2)])
def test_rotation_by_right_angles_is_rot90(angle, k):
    """Positive angles turn the content counter-clockwise as displayed, like np.rot90."""
    x = random_images((2, 16, 16, 3))
    got = A.affine_sample(x, jnp.broadcast_to(A.rotation_matrix(angle, (16, 16)), (2, 2, 3)),
                          (16, 16))
    want = np.rot90(np.asarray(x), k=k, axes=(1, 2))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_rotation_direction_matches_pil_counter_clockwise():
    x = np.asarray(random_images((1, 32, 32, 1)))
    got = A.affine_sample(jnp.asarray(x), A.rotation_matrix(30.0, (32, 32))[None], (32, 32))
    want = np.asarray(Image.fromarray(x[0, :, :, 0], "F").rotate(30.0, Image.BILINEAR))
    inner = (slice(8, 24), slice(8, 24))  # PIL treats the borders differently
    np.testing.assert_allclose(np.asarray(got)[0, :, :, 0][inner], want[inner], atol=1e-4)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_center_crop_is_resize_then_central_crop(sampler):
    """28x28, 224 out, crop_pct 0.875: resize to 256 (= 224 / 0.875), take the central 224."""
    x = random_images((3, 28, 28, 1))
    m = jnp.broadcast_to(A.center_crop_matrix((28, 28), (224, 224), 0.875), (3, 2, 3))
    got = sampler(x, m, (224, 224))
    want = jax.image.resize(x, (3, 256, 256, 1), "bilinear", antialias=False)[:, 16:240, 16:240]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_center_crop_non_square_input_keeps_aspect():
    """A 20x40 image to 112x112 with crop_pct 0.875: the shorter side becomes 128, width 256."""
    x = random_images((1, 20, 40, 1))
    got = A.affine_sample(x, A.center_crop_matrix((20, 40), (112, 112), 0.875)[None], (112, 112))
    want = jax.image.resize(x, (1, 128, 256, 1), "bilinear")[:, 8:120, 72:184]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_compose_applies_right_to_left():
    flip = A.hflip_matrix((8, 8))
    shift = jnp.array([[1.0, 0.0, 2.0], [0.0, 1.0, 3.0]])
    p = jnp.array([1.0, 2.0, 1.0])
    np.testing.assert_allclose(A.compose(shift, flip) @ p, shift @ jnp.append(flip @ p, 1.0))
    np.testing.assert_allclose(A.compose(flip, flip), A.identity_matrix(), atol=1e-6)


def boxes(key, n, in_hw, **kw):
    u = jax.random.uniform(key, (n, A.RRC_UNIFORMS))
    return np.asarray(jax.jit(lambda u: A.random_resized_crop_boxes(u, in_hw, **kw))(u))


@pytest.mark.parametrize("in_hw", [(28, 28), (224, 224), (30, 50)])
def test_random_resized_crop_boxes_lie_inside_with_area_in_scale(in_hw):
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    b = boxes(jax.random.key(0), 2000, in_hw, scale=scale, ratio=ratio)
    top, left, h, w = b.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= in_hw[0]).all() and (left + w <= in_hw[1]).all()
    frac = h * w / (in_hw[0] * in_hw[1])
    # Sizes are rounded to whole pixels: allow half a pixel on each side.
    slack = (h + w + 1) / 2 / (in_hw[0] * in_hw[1]) + 1e-6
    assert (frac >= scale[0] - slack).all() and (frac <= scale[1] + slack).all()
    assert frac.min() < 0.15 and frac.max() > 0.75  # the range is used (30x50: at most 0.8)
    aspect = w / h
    assert (aspect > 0.5).all() and (aspect < 2.0).all()
    assert len({tuple(r) for r in b}) > 100


def test_random_resized_crop_is_deterministic_per_key_and_keys_differ():
    b1 = boxes(jax.random.key(3), 8, (28, 28))
    np.testing.assert_array_equal(b1, boxes(jax.random.key(3), 8, (28, 28)))
    assert not np.array_equal(b1, boxes(jax.random.key(4), 8, (28, 28)))


def test_random_resized_crop_falls_back_to_central_crop():
    # No candidate can fit (area > image): torchvision falls back to the central crop.
    b = boxes(jax.random.key(0), 5, (28, 28), scale=(2.0, 3.0))
    np.testing.assert_array_equal(b, np.tile([0, 0, 28, 28], (5, 1)))
    b = boxes(jax.random.key(0), 5, (20, 40), scale=(2.0, 3.0))  # too wide: cut to 4/3
    np.testing.assert_array_equal(b, np.tile([0, 6, 20, 27], (5, 1)))
    b = boxes(jax.random.key(0), 5, (16, 16), scale=(1.0, 1.0), ratio=(2.0, 2.0))  # too tall
    np.testing.assert_array_equal(b, np.tile([4, 0, 8, 16], (5, 1)))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_random_resized_crop_matrix_samples_its_box(sampler):
    """Inside the box it is crop-then-resize; in the outer half pixel of the box this samples
    the real neighbouring pixels where crop-then-resize repeats the crop's edge pixels."""
    x = random_images((1, 28, 28, 1))
    top, left, h, w = (int(v) for v in boxes(jax.random.key(5), 1, (28, 28))[0])
    got = sampler(x, A.box_matrix((top, left, h, w), (64, 64))[None], (64, 64))
    want = jax.image.resize(x[:, top:top + h, left:left + w], (1, 64, 64, 1), "bilinear",
                            antialias=False)  # a box of <= 28 px: upscaling
    o = np.arange(64) + 0.5
    rows = (o * h / 64 - 0.5 >= 0) & (o * h / 64 - 0.5 <= h - 1)
    cols = (o * w / 64 - 0.5 >= 0) & (o * w / 64 - 0.5 <= w - 1)
    assert rows.sum() > 50 and cols.sum() > 50
    np.testing.assert_allclose(np.asarray(got)[:, rows][:, :, cols],
                               np.asarray(want)[:, rows][:, :, cols], atol=1e-5, rtol=0)


def test_axis_aligned_sampler_equals_gather_sampler():
    x = random_images((16, 28, 28, 3))
    u = jax.random.uniform(jax.random.key(0), (16, 1 + A.RRC_UNIFORMS))
    m = jax.jit(lambda u: A.random_matrices((28, 28), (96, 96), crop_u=u[:, 1:], flip_u=u[:, 0]))(u)
    np.testing.assert_allclose(A.axis_aligned_sample(x, m, (96, 96)),
                               A.affine_sample(x, m, (96, 96)), atol=1e-5, rtol=0)


def test_samples_outside_the_image_are_zero():
    x = jnp.ones((1, 8, 8, 1))
    shift = jnp.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 4.0]]])  # look 4 columns to the right
    got = np.asarray(A.affine_sample(x, shift, (8, 8)))[0, :, :, 0]
    np.testing.assert_array_equal(got[:, :4], 1.0)
    np.testing.assert_array_equal(got[:, 4:], 0.0)


# --------------------------------------------------------------------------------------------
# Config and make_preprocess
# --------------------------------------------------------------------------------------------


def test_default_config_declares_the_keys_with_augmentation_off():
    data = default_config().data
    assert (data.eval_crop_pct, data.rrc_scale, data.rrc_ratio) == (0.0, (0.08, 1.0), (3 / 4, 4 / 3))
    assert not A.trains_augmented(data) and not A.trains_augmented(data_config(eval_crop_pct=0.875))
    for key, value in (("random_resized_crop", True), ("hflip", True), ("rotation", 10.0)):
        assert A.trains_augmented(data_config(**{key: value}))


@pytest.mark.parametrize("fields", [
    {},
    dict(image_size=(224, 224), channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4)),
    dict(image_size=(20, 20), mean=(0.2,), std=(0.5,)),
])
def test_preprocess_without_augment_keys_resizes_and_normalises(digits, fields):
    """No training augmentation keys: antialiased jax.image.resize, with or without a key."""
    data = data_config(**fields)
    x = jnp.asarray(digits).astype(jnp.float32) / 255.0
    if data.channels == 3:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != tuple(data.image_size):
        x = jax.image.resize(x, (x.shape[0], *data.image_size, data.channels), "bilinear", antialias=True)
    want = (x - jnp.asarray(data.mean)) / jnp.asarray(data.std)
    for k in (None, jax.random.key(1)):
        np.testing.assert_allclose(make_preprocess(data)(jnp.asarray(digits), k), want, atol=1e-6, rtol=0)


def test_affine_eval_resize_matches_the_plain_path_when_upscaling(digits):
    fields = dict(image_size=(224, 224), channels=3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    new = make_preprocess(data_config(hflip=True, rotation=15.0, **fields))(jnp.asarray(digits))
    old = make_preprocess(data_config(**fields))(jnp.asarray(digits))
    np.testing.assert_allclose(new, old, atol=1e-4, rtol=0)


def test_affine_eval_center_crop(digits):
    data = data_config(image_size=(224, 224), channels=3, eval_crop_pct=0.875,
                       mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    got = make_preprocess(data)(jnp.asarray(digits[:4]))
    x = jnp.asarray(digits[:4]).astype(jnp.float32) / 255.0
    want = jax.image.resize(x, (4, 256, 256, 1), "bilinear")[:, 16:240, 16:240]
    want = (jnp.repeat(want, 3, axis=-1) - 0.5) / 0.25
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_hflip_only_training_gives_resized_or_mirrored(digits):
    data = data_config(image_size=(56, 56), hflip=True)
    pre = make_preprocess(data)
    plain = np.asarray(jax.jit(lambda b: pre(b, None))(jnp.asarray(digits)))
    aug = np.asarray(jax.jit(pre)(jnp.asarray(digits), jax.random.key(0)))
    same = np.isclose(aug, plain, atol=1e-5).all(axis=(1, 2, 3))
    mirrored = np.isclose(aug, plain[:, :, ::-1], atol=1e-5).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_jitted_transfer_preprocess_mnist_to_224_rgb(digits):
    data = data_config(image_size=(224, 224), channels=3, mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225), eval_crop_pct=0.875,
                       random_resized_crop=True, rrc_scale=(0.25, 1.0), hflip=True, rotation=15.0)
    pre = jax.jit(make_preprocess(data))
    batch = jnp.asarray(np.concatenate([digits, digits[:36]]))  # (100, 28, 28, 1) uint8
    assert batch.shape == (100, 28, 28, 1) and batch.dtype == jnp.uint8
    train1 = pre(batch, jax.random.key(7))
    train2 = pre(batch, jax.random.key(7))
    train3 = pre(batch, jax.random.key(8))
    evaluation = jax.jit(lambda b: make_preprocess(data)(b, None))(batch)
    for out in (train1, evaluation):
        assert out.shape == (100, 224, 224, 3) and out.dtype == jnp.float32
        assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_array_equal(train1, train2)
    assert not np.array_equal(train1, train3)
    assert not np.allclose(train1, evaluation)
    # Gray input becomes three equal channels before normalisation.
    raw = np.asarray(train1) * np.array(data.std) + np.array(data.mean)
    np.testing.assert_allclose(raw[..., 0], raw[..., 2], atol=1e-5)
    # Duplicated images get different augmentations.
    assert not np.allclose(train1[0], train1[64])
