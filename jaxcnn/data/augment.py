"""On-device (jit-friendly) affine resampling: resize, ImageNet centre crop, random resized crop,
horizontal flip and rotation, composed into ONE 2x3 matrix per image so a batch is sampled once.

Every resize of `jaxcnn.data.device.make_preprocess` goes through here, evaluation and training:
small stored uint8 images (e.g. 28x28 MNIST) become 224x224x3 network inputs per batch inside the
jitted step, without ever materialising an upscaled dataset, and photos are downscaled with
antialiasing.

One path for evaluation (`eval_resize`), the same whichever training augmentation keys are set:
`jax.image.resize(..., "bilinear", antialias=True)` to `data.image_size`, or with
`data.eval_crop_pct` the ImageNet evaluation transform (shorter side to size / crop_pct, central
crop) as ONE antialiased `jax.image.scale_and_translate`. That is what torchvision evaluates with
(`Resize(antialias=True)` + `CenterCrop`, which `jaxcnn.data.images.EvalCrop` does with the
libraries' integer sizes for files fed to converted weights); a photo downscaled without antialiasing aliases (moire, jagged edges), so evaluation
must not depend on whether training happens to use the affine matrices. Without training
augmentation, training images are the evaluation images (bit for bit the resize used before the
affine path existed). Training augmentation (random resized crop, flip, rotation) samples
per-image matrices with the same antialiased triangle kernel (`axis_aligned_sample`; only the
rotation gather `affine_sample` is not antialiased), so a flip-only training image is the
evaluation image mirrored (to float32 rounding).

Conventions
-----------
* Coordinates are (row, col) in pixel units; pixel `i` has its centre at `i`, so an image of
  height `H` covers rows `[-0.5, H - 0.5]` (half-pixel centres, as `jax.image.resize`).
* A matrix `M` (2, 3) maps an OUTPUT pixel `(row, col, 1)` to the INPUT coordinates it samples:
  `out[r, c] = image(M @ (r, c, 1))`.
* Sampling is bilinear. Inside the image area (`-0.5 <= row <= H - 0.5`, same for cols) the
  edge pixels are repeated for the last half pixel; outside it the value is 0. When an axis is
  downscaled (`|M[i, i]| > 1` input pixels per output pixel), `axis_aligned_sample` widens the
  triangle kernel by that factor (antialiasing), as `jax.image.scale_and_translate(...,
  antialias=True)`; `affine_sample` (the gather, used only for rotation during training) does
  not, and aliases when it downscales by more than 2x.
* Composition: `compose(A, B)` is the map `p -> A(B(p))`. The training matrix is
  `compose(crop, flip, rotation)`: output coordinates are first rotated about the output centre,
  then mirrored, then mapped into the crop box. As image operations: the crop is taken and
  resized first, then flipped, then rotated.
* `rotation_matrix(angle)` with a positive angle turns the image content counter-clockwise as
  displayed (row 0 at the top), like PIL/torchvision `rotate`; +90 degrees on a square image
  equals `np.rot90(image)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

HW = Sequence[int]

# Training augmentation keys of the data config (declared in `jaxcnn.config.default_config` with
# `eval_crop_pct`, `rrc_scale`, `rrc_ratio`); any of them set draws per-image matrices in training.
TRAIN_KEYS = ("random_resized_crop", "hflip", "rotation")
RRC_TRIES = 10  # torchvision's RandomResizedCrop candidates per image
RRC_UNIFORMS = 2 * RRC_TRIES + 2  # uniforms per image for `random_resized_crop_boxes`


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _axis_coords(coord: jax.Array, size: int):
    """Clamped integer neighbours, weight of the upper one, and inside-the-image mask."""
    inside = (coord >= -0.5) & (coord <= size - 0.5)
    c = jnp.clip(coord, 0.0, size - 1.0)
    lo = jnp.clip(jnp.floor(c), 0, max(size - 2, 0)).astype(jnp.int32)
    frac = c - lo
    hi = jnp.minimum(lo + 1, size - 1)
    return lo, hi, frac, inside


def affine_sample(images: jax.Array, matrices: jax.Array, out_size: HW) -> jax.Array:
    """Bilinear sampling of `images` (N, H, W, C) at `matrices` (N, 2, 3) (output -> input).

    Returns (N, out_h, out_w, C) in the images' float dtype; 0 outside the image area.
    One gather of 4 neighbours for all channels at once (no per-channel vmap).
    """
    n, h, w, c = images.shape
    out_h, out_w = (int(s) for s in out_size)
    matrices = jnp.asarray(matrices, images.dtype)
    rows = jnp.arange(out_h, dtype=images.dtype)[:, None]
    cols = jnp.arange(out_w, dtype=images.dtype)[None, :]

    def one(image, m):
        # Elementwise, not a matmul: GPU matmuls may run in TF32 and shift coordinates.
        y0, y1, fy, in_y = _axis_coords(m[0, 0] * rows + m[0, 1] * cols + m[0, 2], h)
        x0, x1, fx, in_x = _axis_coords(m[1, 0] * rows + m[1, 1] * cols + m[1, 2], w)
        flat = image.reshape(h * w, c)
        get = lambda yy, xx: jnp.take(flat, (yy * w + xx).reshape(-1), axis=0).reshape(
            out_h, out_w, c)
        fy, fx = fy[..., None], fx[..., None]
        top = get(y0, x0) * (1 - fx) + get(y0, x1) * fx
        bottom = get(y1, x0) * (1 - fx) + get(y1, x1) * fx
        value = top * (1 - fy) + bottom * fy
        return jnp.where((in_y & in_x)[..., None], value, 0).astype(images.dtype)

    return jax.vmap(one)(images, matrices)


def _axis_weights(coord: jax.Array, size: int, step: jax.Array) -> jax.Array:
    """(out, size) weights of the input pixels for 1-D sample positions `coord` (out,), `step`
    input pixels per output pixel: the triangle (bilinear) kernel, widened to `|step|` pixels
    when downscaling, normalised over the pixels inside the image, 0 outside the image area.
    The same weights as `jax.image.scale_and_translate(..., "linear", antialias=True)`."""
    width = jnp.maximum(jnp.abs(step), 1.0)
    idx = jnp.arange(size, dtype=coord.dtype)
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(coord[:, None] - idx) / width)
    total = jnp.sum(weights, axis=1, keepdims=True)
    weights = jnp.where(total > 1000 * jnp.finfo(coord.dtype).eps,
                        weights / jnp.where(total != 0, total, 1), 0)
    inside = (coord >= -0.5) & (coord <= size - 0.5)
    return jnp.where(inside[:, None], weights, 0).astype(coord.dtype)


def axis_aligned_sample(images: jax.Array, matrices: jax.Array, out_size: HW) -> jax.Array:
    """Antialiased bilinear resampling of `images` (N, H, W, C) at `matrices` (N, 2, 3) without
    rotation or shear (the off-diagonal entries are ignored). Equals `affine_sample` where no axis
    is downscaled.

    Separable: two small matrix products instead of a gather (MXU/tensor-core friendly).
    """
    n, h, w, c = images.shape
    out_h, out_w = (int(s) for s in out_size)
    matrices = jnp.asarray(matrices, images.dtype)
    rows = jnp.arange(out_h, dtype=images.dtype)
    cols = jnp.arange(out_w, dtype=images.dtype)
    ry = lambda m: _axis_weights(m[0, 0] * rows + m[0, 2], h, m[0, 0])
    rx = lambda m: _axis_weights(m[1, 1] * cols + m[1, 2], w, m[1, 1])
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nih,nhwc->niwc", jax.vmap(ry)(matrices), images, precision=hp)
    return jnp.einsum("njw,niwc->nijc", jax.vmap(rx)(matrices), x, precision=hp)


# --------------------------------------------------------------------------------------------
# Matrix builders (pure jnp, one image; vmap them over keys)
# --------------------------------------------------------------------------------------------


def _affine(a, b, c, d, e, f) -> jax.Array:
    return jnp.stack([jnp.stack([a, b, c]), jnp.stack([d, e, f])]).astype(jnp.float32)


def compose(*matrices: jax.Array) -> jax.Array:
    """`compose(A, B, C)` maps p -> A(B(C(p))); each (..., 2, 3)."""
    bottom = jnp.array([0.0, 0.0, 1.0], jnp.float32)
    full = lambda m: jnp.concatenate(
        [m, jnp.broadcast_to(bottom, (*m.shape[:-2], 1, 3))], axis=-2)
    hp = jax.lax.Precision.HIGHEST  # no TF32 on GPUs
    result = full(jnp.asarray(matrices[0], jnp.float32))
    for m in matrices[1:]:
        result = jnp.matmul(result, full(jnp.asarray(m, jnp.float32)), precision=hp)
    return result[..., :2, :]


def identity_matrix() -> jax.Array:
    return jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32)


def box_matrix(box, out_hw: HW) -> jax.Array:
    """Maps the output grid onto the input box (top, left, height, width) in pixel units
    (the box covers rows [top - 0.5, top + height - 0.5]); may be traced values."""
    top, left, bh, bw = (jnp.asarray(v, jnp.float32) for v in box)
    sy, sx = bh / out_hw[0], bw / out_hw[1]
    zero = jnp.zeros((), jnp.float32)
    return _affine(sy, zero, top + 0.5 * sy - 0.5, zero, sx, left + 0.5 * sx - 0.5)


def resize_matrix(in_hw: HW, out_hw: HW) -> jax.Array:
    """Plain resize of the whole image (aspect not kept): in = (out + 0.5) * in/out - 0.5."""
    return box_matrix((0, 0, in_hw[0], in_hw[1]), out_hw)


def cover_scale(in_hw: HW, out_hw: HW, crop_pct: float) -> float:
    """Output pixels per input pixel of the ImageNet evaluation resize: the image, aspect kept, covers
    `out / crop_pct`."""
    return max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]) / crop_pct


def center_crop_matrix(in_hw: HW, out_hw: HW, crop_pct: float) -> jax.Array:
    """ImageNet evaluation transform: scale keeping the aspect so that the image covers
    `out / crop_pct` (for a square output: shorter side -> out / crop_pct, e.g. 224 / 0.875 =
    256), then take the central `out_hw`. Equals resize-to-(in * f) then a central crop whenever
    that crop offset is a whole number of pixels."""
    s = 1.0 / cover_scale(in_hw, out_hw, crop_pct)
    cy = (in_hw[0] - 1) / 2 - (out_hw[0] - 1) / 2 * s
    cx = (in_hw[1] - 1) / 2 - (out_hw[1] - 1) / 2 * s
    return jnp.array([[s, 0.0, cy], [0.0, s, cx]], jnp.float32)


def hflip_matrix(out_hw: HW) -> jax.Array:
    """Mirror left-right on the output grid: col -> out_w - 1 - col."""
    return jnp.array([[1.0, 0.0, 0.0], [0.0, -1.0, out_hw[1] - 1.0]], jnp.float32)


def rotation_matrix(angle_deg, out_hw: HW) -> jax.Array:
    """Rotation about the output centre; positive = content turns counter-clockwise as
    displayed (+90 on a square image == np.rot90). `angle_deg` may be traced."""
    t = jnp.deg2rad(jnp.asarray(angle_deg, jnp.float32))
    cos, sin = jnp.cos(t), jnp.sin(t)
    cy, cx = (out_hw[0] - 1) / 2, (out_hw[1] - 1) / 2
    # in - centre = [[cos, sin], [-sin, cos]] @ (out - centre)
    return _affine(cos, sin, cy - cos * cy - sin * cx, -sin, cos, cx + sin * cy - cos * cx)


def random_resized_crop_boxes(u: jax.Array, in_hw: HW, scale=(0.08, 1.0),
                              ratio=(3 / 4, 4 / 3)) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params` for a batch, from uniforms `u` (n, RRC_UNIFORMS):
    per image `RRC_TRIES` candidates with area fraction ~ U(scale) and aspect w/h log-uniform in
    `ratio`, rounded to whole pixels; the first that fits is used at a uniform position, else
    torchvision's fallback (the whole image cut to the nearest allowed aspect, centred).
    Returns (n, 4) int32 (top, left, height, width).

    Batched on purpose, with the uniforms drawn by the caller in one call: `jax.random` calls
    under `vmap` compile several times slower."""
    h_in, w_in = (int(v) for v in in_hw)
    t = RRC_TRIES
    area = h_in * w_in * (scale[0] + (scale[1] - scale[0]) * u[:, :t])
    lr = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(lr[0] + (lr[1] - lr[0]) * u[:, t:2 * t])
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= w_in) & (h > 0) & (h <= h_in)
    first = jnp.argmax(ok, axis=1)[:, None]
    h, w = (jnp.take_along_axis(v, first, 1)[:, 0] for v in (h, w))
    room = jnp.maximum(jnp.stack([h_in - h, w_in - w], 1), 0)
    pos = jnp.minimum(jnp.floor(u[:, 2 * t:2 * t + 2] * (room + 1)).astype(jnp.int32), room)
    in_ratio = w_in / h_in  # fallback: the whole image cut to the nearest allowed aspect
    fh = round(w_in / ratio[0]) if in_ratio < ratio[0] else h_in
    fw = round(h_in * ratio[1]) if in_ratio > ratio[1] else w_in
    fallback = jnp.array([(h_in - fh) // 2, (w_in - fw) // 2, fh, fw], jnp.int32)
    boxes = jnp.concatenate([pos, h[:, None], w[:, None]], 1)
    return jnp.where(jnp.any(ok, axis=1)[:, None], boxes, fallback)


def random_matrices(in_hw: HW, out_hw: HW, *, base: jax.Array | None = None,
                    crop_u: jax.Array | None = None, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                    flip_u: jax.Array | None = None, angle_u: jax.Array | None = None,
                    degrees: float = 0.0) -> jax.Array:
    """(n, 2, 3) per-image `compose(crop, flip, rotation)` from uniforms in [0, 1): the random
    resized crop of `crop_u` (n, RRC_UNIFORMS), or `base` for every image without it; a flip where
    `flip_u` (n,) < 0.5; a rotation by `degrees * (2 * angle_u - 1)` (n,). Parts left out (None)
    are not applied."""
    if crop_u is not None:
        crop = jax.vmap(lambda b: box_matrix(b, out_hw))(
            random_resized_crop_boxes(crop_u, in_hw, scale, ratio))
    else:
        n = next(len(v) for v in (flip_u, angle_u) if v is not None)
        crop = jnp.broadcast_to(base, (n, 2, 3))
    parts = [crop]
    if flip_u is not None:
        parts.append(jnp.where((flip_u < 0.5)[:, None, None], hflip_matrix(out_hw),
                               identity_matrix()))
    if angle_u is not None:
        parts.append(jax.vmap(lambda a: rotation_matrix(a, out_hw))(degrees * (2 * angle_u - 1)))
    return compose(*parts)


# --------------------------------------------------------------------------------------------
# Data config -> resample
# --------------------------------------------------------------------------------------------


def eval_matrix(in_hw: HW, out_hw: HW, eval_crop_pct: float = 0.0) -> jax.Array:
    """Centre crop if `eval_crop_pct` else plain resize."""
    if eval_crop_pct:
        return center_crop_matrix(in_hw, out_hw, eval_crop_pct)
    return resize_matrix(in_hw, out_hw)


def eval_resize(x: jax.Array, out_hw: HW, eval_crop_pct: float = 0.0) -> jax.Array:
    """The evaluation transform of a float NHWC batch, antialiased: a plain resize to `out_hw`,
    or with `eval_crop_pct` the resize that makes the image cover `out / eval_crop_pct` keeping
    its aspect and the central `out_hw` (as `center_crop_matrix`), in one op."""
    n, h, w, c = x.shape
    out_h, out_w = (int(v) for v in out_hw)
    if not eval_crop_pct:
        return jax.image.resize(x, (n, out_h, out_w, c), "bilinear", antialias=True)
    f = cover_scale((h, w), (out_h, out_w), eval_crop_pct)
    # scale_and_translate maps input to output coordinates, out = in * f + t: centre to centre.
    translation = jnp.array([(out_h - f * h) / 2, (out_w - f * w) / 2], jnp.float32)
    return jax.image.scale_and_translate(x, (n, out_h, out_w, c), (1, 2),
                                         jnp.array([f, f], jnp.float32), translation, "linear",
                                         antialias=True)


def trains_augmented(data: Mapping) -> bool:
    """Whether `data` sets any training augmentation key (`TRAIN_KEYS`)."""
    return any(bool(data[k]) for k in TRAIN_KEYS)


def make_resample(data: Mapping) -> Callable[[jax.Array, "jax.Array | None"], jax.Array]:
    """`resample(float NHWC batch, key or None) -> (N, *data.image_size, C)`.

    Without a key, or with one but no `TRAIN_KEYS` set: `eval_resize` (the batch itself when its
    size is already `data.image_size` and there is no `eval_crop_pct`). With a key and
    `TRAIN_KEYS` set: per image the random resized crop (or the
    evaluation transform), random flip and random rotation, as one matrix; sampled with the
    separable antialiased `axis_aligned_sample`, or the gather `affine_sample` with rotation.
    """
    out_hw = tuple(int(s) for s in data.image_size)
    crop_pct = float(data.eval_crop_pct)
    rrc, hflip, degrees = bool(data.random_resized_crop), bool(data.hflip), float(data.rotation)
    scale = tuple(float(v) for v in data.rrc_scale)
    ratio = tuple(float(v) for v in data.rrc_ratio)
    augmented = trains_augmented(data)

    def resample(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        in_hw = tuple(x.shape[1:3])
        if key is None or not augmented:
            return eval_resize(x, out_hw, crop_pct)
        u = jax.random.uniform(key, (x.shape[0], 2 + RRC_UNIFORMS), jnp.float32)
        matrices = random_matrices(in_hw, out_hw, base=eval_matrix(in_hw, out_hw, crop_pct),
                                   crop_u=u[:, 2:] if rrc else None, scale=scale, ratio=ratio,
                                   flip_u=u[:, 0] if hflip else None, angle_u=u[:, 1] if degrees else None,
                                   degrees=degrees)
        sampler = affine_sample if degrees else axis_aligned_sample
        return sampler(x, matrices, out_hw)

    return resample
