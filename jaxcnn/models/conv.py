"""Convolutions for small CNNs on the CPU (`model.conv`): the paths XLA's CPU backend is slow on, rewritten.

On a CPU, XLA runs LeNet-sized convolutions through Eigen (none has more than 16 channels, below the size at
which XLA hands a convolution to YNNPACK). Two of them measured far slower than PyTorch's oneDNN (LeNet-5,
batch 100, 2-core EPYC, each program jitted alone, `scripts/benchmark.py --layers`):

- a convolution with **one input channel** (LeNet's first layer on gray digits): Eigen's forward pass took
  3.9 ms; written as k×k shifted multiply-adds of the padded input (a broadcast product per kernel tap) 0.38 ms;
- the **input gradient** (a convolution of the output gradient with the flipped kernel): 4.9 ms for conv2 by
  XLA; as one matmul of the output gradient with the kernel reshaped to (k·k·Cin, Cout)ᵀ followed by col2im
  (k×k shifted adds of the columns into the padded input) 2.3 ms.

The forward pass with several input channels stays XLA's own (faster than every rewrite tried: im2col matmul 2×,
per-tap matmuls 1.3× slower), and so does the weight gradient's kernel: it is written as the Eigen convolution XLA
itself makes of it outside a loop (`_eigen_weight_grad`), because inside `lax.scan`'s while loop (the scanned
epoch, `train.loop=scan`) XLA CPU leaves its own gradients in forms Eigen does not take and runs them as generic
loop nests (the scanned LeNet-5 epoch 16.4 s instead of 2.4 s). Convolutions this path does not rewrite (more than
`EIGEN_CHANNELS` channels, e.g. the pooling CNN's 3→32 and 32→64, where YNNPACK is faster, or strided) keep XLA's
forward pass and take both gradients in that form (the pooling CNN's scanned epoch: 60.5 s → 1.9 s; its step loop
unchanged, 0.98-1.0×). `small_conv` has `lax.conv_general_dilated`'s signature, so it plugs into
`nnx.Conv(conv_general_dilated=...)`; what it does not cover (dilation, groups, other layouts, a requested
precision) it passes to XLA unchanged. `model.conv`: `auto` (on the CPU backend: this path for the stride-1
convolutions XLA leaves to Eigen, those with at most `EIGEN_CHANNELS` channels in and out: all of LeNet-5's; the
Eigen-form gradients for the other covered ones; XLA's own everywhere on GPU/TPU), `small` (this path for every
covered stride-1 convolution), `xla` (XLA's own, gradients included: then `train.loop=auto` takes the Python loop
on the CPU). Both rewrites are computed apart from their consumers (`_in_memory`): fused into a tanh or into the pooling
backward they cost the tanh LeNet-5 twice the ReLU one's time per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

CONVS = ("auto", "small", "xla")
EIGEN_CHANNELS = 16  # XLA CPU hands a convolution to YNNPACK only when max(Cin, Cout) > 16
_NHWC = ("NHWC", "HWIO", "NHWC")


def use_small(choice: str) -> bool:
    """Whether `model.conv=choice` means this module's path here (`auto`: on the CPU backend, for small
    convolutions)."""
    if choice not in CONVS:
        raise ValueError(f"model.conv={choice!r} is not valid; valid values: {', '.join(CONVS)}")
    return choice == "small" or (choice == "auto" and jax.default_backend() == "cpu")


NO_YNNPACK = {"xla_cpu_experimental_ynn_fusion_type": ""}  # XLA CPU: no YNNPACK fusions (dots, reductions, convs)


def cpu_compiler_options(choice: str) -> dict[str, str] | None:
    """XLA options for a model whose convolutions all take this path (`model.conv=choice`, on the CPU):
    YNNPACK fusion off. With this path LeNet-5's training step measured 4.2 ms against 5.4 ms with XLA's
    default fusions (one process, interleaved, 2-core EPYC): the weight gradients as YNNPACK convolutions after
    transposes, the dense layers and the reductions (pooling, biases) all ran faster in XLA's own code. Models
    with convolutions above 16 channels leave it on (they are YNNPACK's strength)."""
    return dict(NO_YNNPACK) if use_small(choice) and jax.default_backend() == "cpu" else None


def conv_function(choice: str):
    """The `conv_general_dilated` for `nnx.Conv` that `model.conv=choice` asks for here."""
    if not use_small(choice):
        return lax.conv_general_dilated
    return small_conv if choice == "small" else partial(small_conv, max_channels=EIGEN_CHANNELS)


def _in_memory(fn, x: jax.Array, w: jax.Array, pads) -> jax.Array:
    """`fn(x, w, pads)` computed into a buffer of its own, so that XLA cannot fuse it into its consumers.

    XLA CPU fuses elementwise producers into their consumers' loops, and for these two rewrites that measured
    far slower: the 25 shifted multiply-adds fused into a following tanh ran as a scalar loop (conv1 + tanh
    3.4 ms vs 0.35 + 0.2 ms apart), and col2im fused into the pooling backward was recomputed for each of the
    4 pixels a pooled value feeds; the LeNet-5 tanh training step took 19.4 ms instead of 9.0 (ReLU: 8.7 vs
    7.9; 1 thread, 2-core EPYC, interleaved medians). `lax.optimization_barrier` does not stop it (XLA's CPU
    pipeline removes barriers before fusion); a conditional's branch is a separate computation that no fusion
    crosses. Its predicate `not (w0 < w0)` holds for every float, NaN included, and reads the (replicated)
    kernel, so a batch-sharded input needs no communication; the other branch never runs."""
    first = w.reshape(-1)[0]
    out = jax.eval_shape(lambda x, w: fn(x, w, pads), x, w)
    return lax.cond(~(first < first), lambda x, w: fn(x, w, pads), lambda x, w: jnp.zeros(out.shape, out.dtype),
                    x, w)


def _shifted(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Stride-1 convolution of a one-input-channel image as k×k shifted multiply-adds of the padded input
    (broadcast products, no matmul)."""
    kh, kw, _, _ = w.shape
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            term = xp[:, i:i + ho, j:j + wo, :] * w[i, j, 0]
            out = term if out is None else out + term
    return out


def _input_grad(dy: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The gradient of a stride-1 convolution's input, channel-first and batch-last, (Cin, H, W, N): columns =
    kernelᵀ @ dy, then col2im (each tap's columns added into the padded input at its offset), the padding cut
    off. Batch-last, each tap's add runs over contiguous rows of Wo·N floats; in NHWC the rows were Cin floats
    150 apart, and the LeNet-5 epoch took 0.2071 s instead of 0.1895 (medians of 16 interleaved epochs; fastest
    tenth 0.1832 vs 0.1784 s; 2-core EPYC). The caller transposes back to NHWC outside `_in_memory`, where XLA
    fuses the transpose into the consumer."""
    kh, kw, cin, cout = w.shape
    n, ho, wo, _ = dy.shape
    dyt = dy.transpose(3, 1, 2, 0).reshape(cout, ho * wo * n)
    cols = (w.reshape(kh * kw * cin, cout) @ dyt).reshape(kh, kw, cin, ho, wo, n)
    hp, wp = ho + kh - 1, wo + kw - 1
    dxp = None
    for i in range(kh):
        for j in range(kw):
            shifted = jnp.pad(cols[i, j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
            dxp = shifted if dxp is None else dxp + shifted
    (top, bottom), (left, right) = pads
    return dxp[:, top:hp - bottom, left:wp - right, :]


# The two gradients in the form XLA's CPU backend hands to Eigen (NHWC input, HWIO kernel, no reversal): see above.
def _eigen_input_grad(dy: jax.Array, w: jax.Array, x_shape, strides: tuple[int, int], pads) -> jax.Array:
    """The input gradient: `lax.conv_transpose` of the output gradient (dilated by the strides, convolved with the
    flipped kernel, its in/out axes swapped in memory rather than in the dimension labels)."""
    kh, kw = w.shape[:2]
    # input rows that no output reads (stride > 1) are padded back on at the end
    unread = [(n + lo + hi - k) % s for n, (lo, hi), k, s in zip(x_shape[1:3], pads, (kh, kw), strides)]
    return lax.conv_transpose(dy, w, strides, [(k - 1 - lo, k - 1 - hi + u) for k, (lo, hi), u in
                                               zip((kh, kw), pads, unread)],
                              dimension_numbers=_NHWC, transpose_kernel=True)


def _eigen_weight_grad(x: jax.Array, dy: jax.Array, kernel_shape, strides: tuple[int, int], pads) -> jax.Array:
    """The kernel gradient: the input with batch and channels swapped, (Cin, H, W, N), convolved with the output
    gradient as the kernel, (Ho, Wo, N, Cout), dilated by the strides: (Cin, kh, kw, Cout), transposed to HWIO."""
    kh, kw = kernel_shape[:2]
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), pads,
                                  rhs_dilation=strides, dimension_numbers=_NHWC)
    return dw[:, :kh, :kw].transpose(1, 2, 0, 3)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
          small: bool) -> jax.Array:
    if small and w.shape[2] == 1:
        return _in_memory(_shifted, x, w, pads)
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _conv_fwd(x, w, strides, pads, small):
    return _conv(x, w, strides, pads, small), (x, w)


def _conv_bwd(strides, pads, small, residuals, dy):
    x, w = residuals
    if small:
        dx = _in_memory(_input_grad, dy, w, pads).transpose(3, 1, 2, 0)
    else:
        dx = _eigen_input_grad(dy, w, x.shape, strides, pads)
    return dx.astype(x.dtype), _eigen_weight_grad(x, dy, w.shape, strides, pads).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _covered(x, w, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             batch_group_count, precision, preferred_element_type, out_sharding) -> bool:
    if x.ndim != 4 or feature_group_count != 1 or batch_group_count != 1:
        return False
    if any(d not in (None, 1, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return False
    if precision is not None or preferred_element_type is not None or out_sharding is not None:
        return False
    nhwc = lax.conv_dimension_numbers(x.shape, w.shape, _NHWC)
    given = lax.conv_dimension_numbers(x.shape, w.shape, dimension_numbers) if dimension_numbers else None
    return given == nhwc


def small_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding, lhs_dilation=None,
               rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
               precision=None, preferred_element_type=None, out_sharding=None, *,
               max_channels: int | None = None) -> jax.Array:
    """`lax.conv_general_dilated` with the CPU rewrites above for 2-D, undilated, ungrouped NHWC/HWIO convolutions:
    stride-1 ones with at most `max_channels` channels in and out (any, if not given) take the small path, the
    others XLA's forward pass and the Eigen-form gradients; anything else goes to `lax.conv_general_dilated` as
    given."""
    small = max_channels is None or max(rhs.shape[-2:]) <= max_channels
    if not _covered(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                    batch_group_count, precision, preferred_element_type, out_sharding):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, out_sharding=out_sharding)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    strides = tuple(int(s) for s in window_strides)
    return _conv(lhs, rhs, strides, pads, small and strides == (1, 1))
