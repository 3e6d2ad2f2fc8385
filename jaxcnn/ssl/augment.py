"""On-device SimCLR view augmentation for small images (pure ``jax.numpy``, jit-able).

``simclr_augment`` draws, per image of a float32 NHWC batch in [0, 1] (C = 1 or 3): a random
resized crop (area ``crop_scale``, aspect ``crop_ratio``) back to the input size plus a
horizontal flip with p 0.5 if ``hflip``, as ONE bilinear resampling (``jaxcnn.data.augment``
matrices); with probability ``jitter_prob`` torchvision's ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``
for ``s = jitter`` (brightness, contrast, saturation, hue in a random order per image);
grayscale with probability ``gray_prob``; if ``blur``, a Gaussian blur with p 0.5, sigma
~ U[0.1, 2], odd kernel ``2 * (side // 20) + 1`` >= 3 (~10% of the side, as the authors' code).
The crop box is torchvision's ``RandomResizedCrop.get_params``
(``jaxcnn.data.augment.random_resized_crop_boxes``), drawn for the whole batch at once; the
output is clipped to [0, 1], float32, same shape as the input.

``DEFAULTS`` are the SimCLR authors' CIFAR-10 settings (Chen et al. 2020, appendix B.9): jitter
strength s = 0.5 and no blur. The colour ops and blur follow ``torchvision.transforms.functional``
on tensors (grayscale luma 0.2989/0.587/0.114 as its tensor path; PIL's "L" uses 0.299).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxcnn.data.augment import RRC_UNIFORMS, axis_aligned_sample, random_matrices

DEFAULTS: dict[str, Any] = dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), hflip=True,
                                jitter=0.5, jitter_prob=0.8, gray_prob=0.2, blur=False)
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's tensor rgb_to_grayscale


def _per_image(f, x: jax.Array) -> jax.Array:
    """A scalar, or one value per image (shape x.shape[:k]) padded with trailing 1-axes."""
    f = jnp.asarray(f, x.dtype)
    return f.reshape(f.shape + (1,) * (x.ndim - f.ndim)) if 0 < f.ndim < x.ndim else f


def _blend(a: jax.Array, b: jax.Array, factor) -> jax.Array:
    f = _per_image(factor, a)
    return jnp.clip(f * a + (1.0 - f) * b, 0.0, 1.0)


def _luma(x: jax.Array) -> jax.Array:
    """(..., H, W, 1) grayscale; the image itself when C == 1."""
    if x.shape[-1] not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (last axis), got shape {x.shape}")
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    return x if x.shape[-1] == 1 else _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


@jax.jit
def rgb_to_grayscale(x: jax.Array) -> jax.Array:
    """Grayscale with the channel count kept (luma repeated for C = 3)."""
    return jnp.broadcast_to(_luma(x), x.shape)


@jax.jit
def adjust_brightness(x: jax.Array, factor) -> jax.Array:
    """``clip(x * factor, 0, 1)``; ``factor`` scalar or per image."""
    return _blend(x, jnp.zeros_like(x), factor)


@jax.jit
def adjust_contrast(x: jax.Array, factor) -> jax.Array:
    """Blend with the mean of each image's grayscale, clipped."""
    return _blend(x, jnp.mean(_luma(x), axis=(-3, -2, -1), keepdims=True), factor)


@jax.jit
def adjust_saturation(x: jax.Array, factor) -> jax.Array:
    """Blend with the grayscale image, clipped; no-op for C = 1."""
    return x if x.shape[-1] == 1 else _blend(x, _luma(x), factor)


@jax.jit
def adjust_hue(x: jax.Array, delta) -> jax.Array:
    """Shift the HSV hue by ``delta`` (in [-0.5, 0.5], scalar or per image) modulo 1, as
    torchvision's tensor RGB -> HSV -> RGB; no-op for C = 1."""
    if x.shape[-1] == 1:
        return x
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
    v, minc = jnp.max(x, -1, keepdims=True), jnp.min(x, -1, keepdims=True)  # v = max
    eqc, cr = v == minc, v - minc
    s = cr / jnp.where(eqc, 1.0, v)
    crd = jnp.where(eqc, 1.0, cr)
    rc, gc, bc = (v - r) / crd, (v - g) / crd, (v - b) / crd
    h = jnp.where(v == r, bc - gc, jnp.where(v == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = jnp.mod(jnp.mod(h / 6.0 + 1.0, 1.0) + _per_image(delta, x), 1.0)
    i = jnp.floor(h * 6.0)
    f, i = h * 6.0 - i, i.astype(jnp.int32) % 6
    p = jnp.clip(v * (1.0 - s), 0.0, 1.0)
    q = jnp.clip(v * (1.0 - s * f), 0.0, 1.0)
    t = jnp.clip(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    pick = lambda *vals: jnp.take_along_axis(jnp.concatenate(vals, -1), i, -1)
    return jnp.concatenate([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p),
                            pick(p, p, t, v, v, q)], -1)


@functools.partial(jax.jit, static_argnames="kernel_size")
def gaussian_blur(x: jax.Array, sigma, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of (..., H, W, C) with reflect padding, as torchvision's
    ``gaussian_blur(img, [k, k], [sigma, sigma])``; ``sigma`` scalar or per image."""
    if (k := int(kernel_size)) < 1 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 1, got {kernel_size!r}")
    taps = jnp.linspace(-(k - 1) / 2, (k - 1) / 2, k, dtype=x.dtype)
    w = jnp.exp(-0.5 * (taps / jnp.asarray(sigma, x.dtype)[..., None]) ** 2)
    w = w / jnp.sum(w, -1, keepdims=True)  # sigma.shape + (k,)
    for axis in (x.ndim - 3, x.ndim - 2):
        pads = [(k // 2, k // 2) if a == axis else (0, 0) for a in range(x.ndim)]
        xp, n = jnp.pad(x, pads, mode="reflect"), x.shape[axis]
        x = sum(_per_image(w[..., j], x) * jax.lax.slice_in_dim(xp, j, j + n, axis=axis)
                for j in range(k))
    return x


def check_options(opts: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULTS updated with ``opts``, validated (ValueError naming the key)."""
    o = dict(DEFAULTS)
    if opts is not None:
        unknown = sorted(set(opts) - set(DEFAULTS)) if hasattr(opts, "items") else [opts]
        if unknown:
            raise ValueError(f"unknown SimCLR augmentation option(s) {unknown}; "
                             f"opts must be a mapping with keys from {sorted(DEFAULTS)}")
        o.update(opts.items())

    def pair(hi: float):
        def ok(v):
            a, b = (float(t) for t in v)
            return (a, b) if 0 < a <= b <= hi else None
        return ok

    rules = dict(crop_scale=(pair(1.0), "a pair 0 < a <= b <= 1"),
                 crop_ratio=(pair(math.inf), "a pair 0 < a <= b < inf"),
                 jitter=(lambda v: float(v) if 0 <= float(v) < math.inf else None, "a number >= 0"))
    for key in ("hflip", "blur"):
        rules[key] = (lambda v: bool(v) if v in (True, False) else None, "True or False")
    for key in ("jitter_prob", "gray_prob"):
        rules[key] = (lambda v: float(v) if 0 <= float(v) <= 1 else None, "a probability in [0, 1]")
    for key, (ok, valid) in rules.items():
        try:
            value = ok(o[key])
        except (TypeError, ValueError):
            value = None
        if value is None:
            raise ValueError(f"SimCLR augmentation option {key!r} must be {valid}, got {o[key]!r}")
        o[key] = value
    return o


def simclr_augment(key: jax.Array, x: jax.Array, opts: Mapping[str, Any] | None = None
                   ) -> jax.Array:
    """One SimCLR view of the float32 NHWC batch ``x`` in [0, 1]; each image draws its own
    crop, flip, jitter factors and order, grayscale and blur. Same shape, float32, in [0, 1]."""
    o = check_options(opts)
    x = jnp.asarray(x, jnp.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"x must be an NHWC batch with C = 1 or 3, got shape {x.shape}")
    return _augment(key, x, tuple(sorted(o.items())))


@functools.partial(jax.jit, static_argnames="items")
def _augment(key: jax.Array, x: jax.Array, items: tuple) -> jax.Array:
    """`simclr_augment` for validated options `items` (compiled once per shape and options)."""
    o = dict(items)
    n, h, w, _ = x.shape
    # One draw for all per-image decisions (PRNG calls under vmap compile several times slower).
    # Columns: 0 flip, 1 jitter on, 2:6 jitter factors, 6:10 jitter order, 10 gray, 11 blur on,
    # 12 blur sigma, 13: crop box.
    u = jax.random.uniform(key, (n, 13 + RRC_UNIFORMS), jnp.float32)
    per = lambda m: m[:, None, None, None]
    crop = random_matrices((h, w), (h, w), crop_u=u[:, 13:], scale=o["crop_scale"],
                           ratio=o["crop_ratio"], flip_u=u[:, 0] if o["hflip"] else None)
    x = axis_aligned_sample(x, crop, (h, w))  # crop + flip: one resampling (no rotation)
    s = o["jitter"]
    if s > 0 and o["jitter_prob"] > 0:
        lo, hi, hue = max(0.0, 1 - 0.8 * s), 1 + 0.8 * s, min(0.2 * s, 0.5)
        f = jnp.array([lo, lo, lo, -hue]) + u[:, 2:6] * jnp.array([hi - lo] * 3 + [2 * hue])
        order = jnp.argsort(u[:, 6:10], axis=1)  # a random permutation per image

        def step(i, y):
            outs = [op(y, f[:, j]) for j, op in enumerate(
                (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue))]
            return jnp.select([per(order[:, i] == j) for j in range(4)], outs)

        x = jnp.where(per(u[:, 1] < o["jitter_prob"]), jax.lax.fori_loop(0, 4, step, x), x)
    if o["gray_prob"] > 0:
        x = jnp.where(per(u[:, 10] < o["gray_prob"]), rgb_to_grayscale(x), x)
    if o["blur"]:
        blurred = gaussian_blur(x, 0.1 + 1.9 * u[:, 12], max(3, 2 * (min(h, w) // 20) + 1))
        x = jnp.where(per(u[:, 11] < 0.5), blurred, x)
    return jnp.clip(x, 0.0, 1.0).astype(jnp.float32)


def simclr_views(key: jax.Array, x: jax.Array, opts: Mapping[str, Any] | None = None
                 ) -> tuple[jax.Array, jax.Array]:
    """Two independently augmented views ``(v1, v2)`` of ``x`` (see ``simclr_augment``)."""
    k1, k2 = jax.random.split(key)
    return simclr_augment(k1, x, opts), simclr_augment(k2, x, opts)
