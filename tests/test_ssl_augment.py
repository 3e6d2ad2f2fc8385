"""Tests for jaxcnn.ssl.augment (on-device SimCLR views): colour ops and blur against
torchvision.transforms.functional, and the view pipeline's properties. Offline, CPU, fast."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.ssl import augment as S

SHAPE = (8, 16, 16, 3)
IDENTITY = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=False, jitter_prob=0.0,
                gray_prob=0.0)


def images(shape=SHAPE, seed=0) -> np.ndarray:
    x = np.random.default_rng(seed).random(shape, np.float32)
    x[0, :4] = x[0, :4, :, :1]  # some gray pixels (equal channels) for the hue edge case
    return x


def torch_ref(fn, x: np.ndarray, *args) -> np.ndarray:
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2)))  # a writable copy
    return fn(t, *args).numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def TF():
    pytest.importorskip("torchvision")
    import torchvision.transforms.functional as TF
    return TF


@pytest.mark.parametrize("name,factors,atol", [
    ("brightness", [0.0, 0.6, 1.4], 1e-6),
    ("contrast", [0.0, 0.6, 1.4], 1e-5),
    ("saturation", [0.0, 0.6, 1.4], 1e-5),
    ("hue", [-0.5, -0.1, 0.0, 0.07, 0.3], 1e-4),
])
def test_colour_ops_match_torchvision(TF, name, factors, atol):
    x = images()
    ours, theirs = getattr(S, f"adjust_{name}"), getattr(TF, f"adjust_{name}")
    for f in factors:
        np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x), f)),
                                   torch_ref(theirs, x, f), atol=atol, err_msg=f"{name} {f}")
    # Per-image factors == torchvision image by image.
    per = np.linspace(factors[0], factors[-1], SHAPE[0]).astype(np.float32)
    want = np.concatenate([torch_ref(theirs, x[i:i + 1], float(per[i])) for i in range(SHAPE[0])])
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x), jnp.asarray(per))), want,
                               atol=atol)


def test_grayscale_matches_torchvision_and_gray_input_noops(TF):
    x = images()
    np.testing.assert_allclose(np.asarray(S.rgb_to_grayscale(jnp.asarray(x))),
                               torch_ref(TF.rgb_to_grayscale, x, 3), atol=1e-6)
    g = jnp.asarray(images((2, 8, 8, 1)))
    for op in (S.adjust_saturation, S.adjust_hue):
        np.testing.assert_array_equal(op(g, 0.3), g)
    np.testing.assert_allclose(np.asarray(S.adjust_contrast(g, 0.5)),
                               torch_ref(TF.adjust_contrast, np.asarray(g), 0.5), atol=1e-6)


@pytest.mark.parametrize("sigma,k", [(0.5, 3), (1.3, 5), (2.0, 7)])
def test_gaussian_blur_matches_torchvision(TF, sigma, k):
    x = images()
    np.testing.assert_allclose(np.asarray(S.gaussian_blur(jnp.asarray(x), sigma, k)),
                               torch_ref(TF.gaussian_blur, x, [k, k], [sigma, sigma]), atol=1e-5)


def test_gaussian_blur_per_image_sigma(TF):
    x, sig = images(), np.linspace(0.1, 2.0, SHAPE[0])
    got = np.asarray(S.gaussian_blur(jnp.asarray(x), jnp.asarray(sig), 3))
    want = np.concatenate([torch_ref(TF.gaussian_blur, x[i:i + 1], [3, 3], [float(s)] * 2)
                           for i, s in enumerate(sig)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_identity_options_give_the_input():
    x = jnp.asarray(images())
    np.testing.assert_allclose(S.simclr_augment(jax.random.key(0), x, IDENTITY), x, atol=1e-5)


def test_flip_only_is_per_image_identity_or_mirror_and_works_under_jit():
    x, opts = jnp.asarray(images()), {**IDENTITY, "hflip": True}
    out = np.asarray(S.simclr_augment(jax.random.key(3), x, opts))
    flipped = [np.allclose(o, xi[:, ::-1], atol=1e-5) for o, xi in zip(out, np.asarray(x))]
    same = [np.allclose(o, xi, atol=1e-5) for o, xi in zip(out, np.asarray(x))]
    assert all(f != s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    jitted = jax.jit(lambda key, batch: S.simclr_augment(key, batch, opts))
    np.testing.assert_allclose(jitted(jax.random.key(3), x), out, atol=1e-5)


def test_jitter_per_image_then_gray():
    x = jnp.broadcast_to(jnp.asarray(images((1, 16, 16, 3))), SHAPE)  # 8 identical images
    opts = {**IDENTITY, "jitter_prob": 1.0, "gray_prob": 1.0}
    out = np.asarray(S.simclr_augment(jax.random.key(1), x, opts))
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-6)  # gray: channels equal
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-6)
    flat = out[..., 0].reshape(SHAPE[0], -1)  # each image its own jitter factors and order
    assert not np.allclose(flat[0], np.asarray(S.rgb_to_grayscale(x[0]))[..., 0].ravel(),
                           atol=1e-3)
    assert all(not np.allclose(flat[i], flat[j], atol=1e-4)
               for i in range(len(flat)) for j in range(i))


def check_views(views, x):
    """Shape, dtype, range, two different views, same key -> same views, not another key."""
    v1, v2 = views(jax.random.key(0), x)
    for v in (v1, v2):
        assert v.shape == x.shape and v.dtype == jnp.float32
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    assert not np.allclose(v1, v2)
    w1, w2 = views(jax.random.key(0), x)
    np.testing.assert_array_equal(v1, w1)
    np.testing.assert_array_equal(v2, w2)
    assert not np.allclose(v1, views(jax.random.key(1), x)[0])


def test_default_views_under_jit():
    check_views(jax.jit(S.simclr_views), jnp.asarray(images()))


def test_single_channel_non_square_with_blur():
    check_views(lambda key, x: S.simclr_views(key, x, {"blur": True, "jitter": 1.0}),
                jnp.asarray(images((4, 12, 16, 1))))


@pytest.mark.parametrize("key,value", [
    ("crop_scale", (0.0, 1.0)), ("crop_scale", (0.5, 0.2)), ("crop_scale", (0.5, 1.5)),
    ("crop_scale", 0.5), ("crop_ratio", (0.0, 1.0)), ("jitter", -0.1), ("jitter_prob", 1.2),
    ("gray_prob", -0.1), ("hflip", "yes"), ("blur", 2), ("colour", 0.5),
])
def test_bad_options_raise(key, value):
    with pytest.raises(ValueError, match=key):
        S.simclr_augment(jax.random.key(0), jnp.zeros((1, 4, 4, 3)), {key: value})
