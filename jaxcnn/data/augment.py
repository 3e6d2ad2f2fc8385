"""On-device (jit-friendly) affine resampling: resize, ImageNet centre crop, random resized crop,
horizontal flip and rotation, composed into ONE 2x3 matrix per image so a batch is sampled once.

Meant for transfer learning where small stored uint8 images (e.g. 28x28 MNIST) become 224x224x3
network inputs per batch inside the jitted step, without ever materialising an upscaled dataset.

Conventions
-----------
* Coordinates are (row, col) in pixel units; pixel `i` has its centre at `i`, so an image of
  height `H` covers rows `[-0.5, H - 0.5]` (half-pixel centres, as `jax.image.resize`).
* A matrix `M` (2, 3) maps an OUTPUT pixel `(row, col, 1)` to the INPUT coordinates it samples:
  `out[r, c] = image(M @ (r, c, 1))`.
* Sampling is bilinear. Inside the image area (`-0.5 <= row <= H - 0.5`, same for cols) the
  edge pixels are repeated for the last half pixel; outside it the value is 0. With this rule
  `resize_matrix` reproduces `jax.image.resize(..., "bilinear")` exactly for upscaling (it needs
  no antialiasing filter; for downscaling by more than 2x bilinear sampling aliases).
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
from typing import Any

import jax
import jax.numpy as jnp

HW = Sequence[int]

# Keys read (with `.get`) from the data config; any of them set (truthy) selects the affine path.
AFFINE_KEYS = ("eval_crop_pct", "random_resized_crop", "hflip", "rotation")
DEFAULTS: dict[str, Any] = dict(
    eval_crop_pct=0.0, random_resized_crop=False, rrc_scale=(0.08, 1.0),
    rrc_ratio=(3 / 4, 4 / 3), hflip=False, rotation=0.0)


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


def _interp_weights(coord: jax.Array, size: int) -> jax.Array:
    """(out, size) bilinear weights for 1-D sample positions `coord` (out,), same edge rule."""
    lo, hi, frac, inside = _axis_coords(coord, size)
    idx = jnp.arange(size)
    weights = ((idx == lo[:, None]) * (1 - frac)[:, None]
               + (idx == hi[:, None]) * frac[:, None])
    # lo == hi only when size == 1 (then frac is 0): weight 1 on the single pixel.
    return jnp.where(inside[:, None], weights, 0).astype(coord.dtype)


def axis_aligned_sample(images: jax.Array, matrices: jax.Array, out_size: HW) -> jax.Array:
    """Same result as `affine_sample` for matrices without rotation/shear (off-diagonals 0).

    Separable: two small per-image matrix products instead of a gather (MXU/tensor-core
    friendly). The off-diagonal entries of `matrices` are ignored.
    """
    n, h, w, c = images.shape
    out_h, out_w = (int(s) for s in out_size)
    matrices = jnp.asarray(matrices, images.dtype)
    rows = jnp.arange(out_h, dtype=images.dtype)
    cols = jnp.arange(out_w, dtype=images.dtype)
    ry = jax.vmap(lambda m: _interp_weights(m[0, 0] * rows + m[0, 2], h))(matrices)
    rx = jax.vmap(lambda m: _interp_weights(m[1, 1] * cols + m[1, 2], w))(matrices)
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("nih,nhwc->niwc", ry, images, precision=hp)
    return jnp.einsum("njw,niwc->nijc", rx, x, precision=hp)


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


def center_crop_matrix(in_hw: HW, out_hw: HW, crop_pct: float) -> jax.Array:
    """ImageNet evaluation transform: scale keeping the aspect so that the image covers
    `out / crop_pct` (for a square output: shorter side -> out / crop_pct, e.g. 224 / 0.875 =
    256), then take the central `out_hw`. Equals resize-to-(in * f) then a central crop whenever
    that crop offset is a whole number of pixels."""
    f = max(out_hw[0] / in_hw[0], out_hw[1] / in_hw[1]) / crop_pct  # output px per input px
    s = 1.0 / f
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


def random_hflip_matrix(key: jax.Array, out_hw: HW, prob: float = 0.5) -> jax.Array:
    """`hflip_matrix` with probability `prob`, else the identity."""
    return jnp.where(jax.random.bernoulli(key, prob), hflip_matrix(out_hw), identity_matrix())


def random_rotation_matrix(key: jax.Array, out_hw: HW, degrees: float) -> jax.Array:
    """Rotation by an angle uniform in [-degrees, degrees] about the output centre."""
    angle = jax.random.uniform(key, (), jnp.float32, -degrees, degrees)
    return rotation_matrix(angle, out_hw)


def random_resized_crop_box(key: jax.Array, in_hw: HW, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3), tries: int = 10) -> jax.Array:
    """torchvision `RandomResizedCrop.get_params`, vectorised: `tries` candidates with area
    fraction ~ U(scale) and aspect w/h log-uniform in `ratio`, rounded to whole pixels; the
    first that fits is used with a uniform position, else torchvision's central fallback crop.
    Returns int32 (top, left, height, width)."""
    h_in, w_in = int(in_hw[0]), int(in_hw[1])
    k_area, k_ratio, k_pos = jax.random.split(key, 3)
    area = h_in * w_in * jax.random.uniform(k_area, (tries,), jnp.float32, scale[0], scale[1])
    log_r = jax.random.uniform(k_ratio, (tries,), jnp.float32, math.log(ratio[0]),
                               math.log(ratio[1]))
    aspect = jnp.exp(log_r)
    w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    ok = (w > 0) & (w <= w_in) & (h > 0) & (h <= h_in)
    first = jnp.argmax(ok)
    any_ok = ok[first]
    h, w = h[first], w[first]
    # Uniform integer positions in [0, h_in - h] and [0, w_in - w] (floor of a uniform draw:
    # `jax.random.randint` with traced bounds compiles several times slower under vmap).
    room = jnp.maximum(jnp.stack([h_in - h, w_in - w]), 0)
    pos = jnp.floor(jax.random.uniform(k_pos, (2,), jnp.float32) * (room + 1).astype(jnp.float32))
    top, left = jnp.minimum(pos.astype(jnp.int32), room)

    # Fallback: the whole image, cut to the nearest allowed aspect ratio (static numbers).
    in_ratio = w_in / h_in
    if in_ratio < min(ratio):
        fw, fh = w_in, int(round(w_in / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = h_in, int(round(h_in * max(ratio)))
    else:
        fw, fh = w_in, h_in
    fallback = jnp.array([(h_in - fh) // 2, (w_in - fw) // 2, fh, fw], jnp.int32)
    return jnp.where(any_ok, jnp.stack([top, left, h, w]).astype(jnp.int32), fallback)


def random_resized_crop_matrix(key: jax.Array, in_hw: HW, out_hw: HW, scale=(0.08, 1.0),
                               ratio=(3 / 4, 4 / 3)) -> jax.Array:
    """The crop of `random_resized_crop_box`, resized to `out_hw`."""
    return box_matrix(random_resized_crop_box(key, in_hw, scale, ratio), out_hw)


# --------------------------------------------------------------------------------------------
# Config -> per-batch matrices -> preprocess
# --------------------------------------------------------------------------------------------


def augment_options(data: Mapping) -> dict[str, Any] | None:
    """The affine-path options from a data config, or None when the config selects none.

    Keys (all optional; flat on `data`, or inside a mapping `data.augment`, which wins):
    `eval_crop_pct`, `random_resized_crop`, `rrc_scale`, `rrc_ratio`, `hflip`, `rotation`.
    The affine path is on when `data.augment` is truthy or any of `AFFINE_KEYS` is truthy.
    """
    nested = data.get("augment", None)
    opts = {k: data.get(k, v) for k, v in DEFAULTS.items()}
    if isinstance(nested, Mapping) or hasattr(nested, "items"):
        opts.update({k: v for k, v in nested.items() if k in DEFAULTS})
    if not (nested or any(opts[k] for k in AFFINE_KEYS)):
        return None
    for k in DEFAULTS:
        if opts[k] is None:
            opts[k] = DEFAULTS[k]
    opts["rrc_scale"] = tuple(float(v) for v in opts["rrc_scale"])
    opts["rrc_ratio"] = tuple(float(v) for v in opts["rrc_ratio"])
    opts["eval_crop_pct"] = float(opts["eval_crop_pct"] or 0.0)
    opts["rotation"] = float(opts["rotation"] or 0.0)
    return opts


def eval_matrix(in_hw: HW, out_hw: HW, eval_crop_pct: float = 0.0) -> jax.Array:
    """Centre crop if `eval_crop_pct` else plain resize."""
    if eval_crop_pct:
        return center_crop_matrix(in_hw, out_hw, eval_crop_pct)
    return resize_matrix(in_hw, out_hw)


def batch_matrices(key: jax.Array | None, n: int, in_hw: HW, out_hw: HW,
                   opts: Mapping[str, Any]) -> jax.Array:
    """(n, 2, 3) matrices: without a key the evaluation matrix for every image; with a key per
    image `compose(random resized crop or eval matrix, random flip, random rotation)`."""
    base = eval_matrix(in_hw, out_hw, opts.get("eval_crop_pct", 0.0))
    if key is None:
        return jnp.broadcast_to(base, (n, 2, 3))

    def one(k):
        k_crop, k_flip, k_rot = jax.random.split(k, 3)
        parts = [random_resized_crop_matrix(k_crop, in_hw, out_hw, opts["rrc_scale"],
                                            opts["rrc_ratio"])
                 if opts.get("random_resized_crop") else base]
        if opts.get("hflip"):
            parts.append(random_hflip_matrix(k_flip, out_hw))
        if opts.get("rotation"):
            parts.append(random_rotation_matrix(k_rot, out_hw, opts["rotation"]))
        return compose(*parts)

    return jax.vmap(one)(jax.random.split(key, n))


def make_affine_resample(data: Mapping, opts: Mapping[str, Any]
                         ) -> Callable[[jax.Array, "jax.Array | None"], jax.Array]:
    """`resample(float NHWC batch, key or None) -> (N, *data.image_size, C)` for `opts`.

    Uses the separable `axis_aligned_sample` when no rotation is configured (all matrices are
    then axis aligned), else the gather `affine_sample`.
    """
    out_hw = tuple(int(s) for s in data.image_size)
    sampler = affine_sample if opts.get("rotation") else axis_aligned_sample

    def resample(x: jax.Array, key: jax.Array | None = None) -> jax.Array:
        matrices = batch_matrices(key, x.shape[0], x.shape[1:3], out_hw, opts)
        return sampler(x, matrices, out_hw)

    return resample
