"""Tests for jaxcnn.data.device: preprocessing on the device (scaling, channels, resizing,
normalisation, random crop) and batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxcnn.data.device import epoch_permutation, make_preprocess, pad_for_eval
from tests.data_helpers import LUMA, data_config


# --------------------------------------------------------------------------------------------
# Device-side preprocessing and batching
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


@pytest.mark.parametrize("fields", [
    dict(image_size=(16, 20)),  # downscaled
    dict(image_size=(40, 40), channels=3),  # upscaled
    dict(image_size=(24, 24), channels=3, eval_crop_pct=0.875),
])
def test_evaluation_is_the_same_whatever_training_augmentation_is_set(fields):
    """Training keys change training images only: the evaluation batch is bit for bit the one
    without them, an antialiased resize (and centre crop with eval_crop_pct)."""
    batch = jnp.asarray(uint8_batch((4, 28, 28, 1)))
    plain = np.asarray(make_preprocess(data_config(**fields))(batch, None))
    augmented = make_preprocess(data_config(random_resized_crop=True, hflip=True, **fields))
    np.testing.assert_array_equal(np.asarray(augmented(batch, None)), plain)
    np.testing.assert_array_equal(np.asarray(jax.jit(augmented)(batch, None)),
                                  np.asarray(jax.jit(make_preprocess(data_config(**fields)))(batch, None)))
    if "eval_crop_pct" not in fields:
        x = jnp.repeat(batch / 255.0, plain.shape[-1], axis=-1)
        want = jax.image.resize(x, plain.shape, "bilinear", antialias=True)
        np.testing.assert_allclose(plain, want, atol=1e-5, rtol=0)


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
