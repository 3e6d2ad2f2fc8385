"""Convolutions for small CNNs on the CPU (`model.conv`): the paths XLA's CPU backend is slow on, rewritten.

On a CPU, XLA runs LeNet-sized convolutions through Eigen (none has more than 16 channels, below the size at
which XLA hands a convolution to YNNPACK). Two of them measured far slower than PyTorch's oneDNN (LeNet-5,
batch 100, 2-core EPYC, each program jitted alone, `scripts/benchmark.py --layers`):

- a convolution with **one input channel** (LeNet's first layer on gray digits): Eigen's forward pass took
  3.9 ms; written as k×k shifted multiply-adds of the padded input (a broadcast product per kernel tap) 0.38 ms;
- the **input gradient** (a convolution of the output gradient with the flipped kernel): 4.9 ms for conv2 by
  XLA; as one matmul of the output gradient with the kernel reshaped to (k·k·Cin, Cout)ᵀ followed by col2im
  (k×k shifted adds of the columns into the padded input) 2.3 ms.

The weight gradient and the forward pass with several input channels stay XLA's own (faster than every rewrite
tried: im2col matmul 2×, per-tap matmuls 1.3× slower) — except inside the scanned epoch (`train.loop=scan`,
traced under `in_loop()`): in a while loop XLA CPU runs those convolutions in slow layouts, and im2col matmuls
(a stack of the k×k shifted windows times the reshaped kernel) made the scanned LeNet epoch 3.3× faster
(1.93 -> 0.58 s; the Python loop of steps: 0.43 s; same process, interleaved, loaded machine). `small_conv` has `lax.conv_general_dilated`'s signature,
so it plugs into `nnx.Conv(conv_general_dilated=...)`; what it does not cover (strides, dilation, groups, other
layouts, a requested precision) it passes to XLA unchanged. `model.conv`: `auto` (on the CPU backend this path
for the convolutions XLA leaves to Eigen, those with at most `EIGEN_CHANNELS` channels in and out: all of
LeNet-5's; XLA's everywhere else and on GPU/TPU), `small` (this path for every covered convolution), `xla`.
The pooling CNN's convolutions (3→32, 32→64) go to YNNPACK, and forcing this path there measured 0.8-0.9× XLA.
Both rewrites are computed apart from their consumers (`_in_memory`): fused into a tanh or into the pooling
backward they cost the tanh LeNet-5 twice the ReLU one's time per step.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

CONVS = ("auto", "small", "xla")
_IN_LOOP = contextvars.ContextVar("jaxcnn_conv_in_loop", default=False)


@contextlib.contextmanager
def in_loop() -> Iterator[None]:
    """Convolutions traced within (the scanned epoch's `lax.scan`) take the loop's im2col path."""
    token = _IN_LOOP.set(True)
    try:
        yield
    finally:
        _IN_LOOP.reset(token)
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


def _windows(x: jax.Array, kh: int, kw: int, pads) -> jax.Array:
    """im2col: the k×k shifted windows of the padded input, (N·Ho·Wo, kh·kw·Cin) in HWI order."""
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    cols = jnp.stack([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], axis=3)
    return cols.reshape(-1, kh * kw * x.shape[-1])


def _xla(x, w, pads):
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]], looped: bool) -> jax.Array:
    kh, kw, cin, cout = w.shape
    if cin == 1:
        return _in_memory(_shifted, x, w, pads)
    if not looped:
        return _xla(x, w, pads)
    ho, wo = x.shape[1] + sum(pads[0]) - kh + 1, x.shape[2] + sum(pads[1]) - kw + 1
    return (_windows(x, kh, kw, pads) @ w.reshape(-1, cout)).reshape(x.shape[0], ho, wo, cout)


def _conv_fwd(x, w, pads, looped):
    return _conv(x, w, pads, looped), (x, w)


def _conv_bwd(pads, looped, residuals, dy):
    x, w = residuals
    kh, kw, cin, cout = w.shape
    if looped and cin == 1:
        # One input channel: the windows stacked tap-major, (kh·kw, N·Ho·Wo), each a contiguous copy; the
        # pixel-major stack of `_windows` writes 25-float rows and made the scanned LeNet epoch 1.1-1.3× slower.
        xp = jnp.pad(x[..., 0], ((0, 0), *pads))
        ho, wo = dy.shape[1:3]
        taps = jnp.stack([xp[:, i:i + ho, j:j + wo] for i in range(kh) for j in range(kw)]).reshape(kh * kw, -1)
        dw = (taps @ dy.reshape(-1, cout)).reshape(w.shape).astype(w.dtype)
    elif looped:
        dw = (_windows(x, kh, kw, pads).T @ dy.reshape(-1, cout)).reshape(w.shape).astype(w.dtype)
    else:
        _, weight_vjp = jax.vjp(lambda kernel: _xla(x, kernel, pads), w)
        dw = weight_vjp(dy)[0]
    return _in_memory(_input_grad, dy, w, pads).transpose(3, 1, 2, 0).astype(x.dtype), dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def _covered(x, w, window_strides, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
             batch_group_count, precision, preferred_element_type, out_sharding) -> bool:
    if x.ndim != 4 or tuple(window_strides) != (1, 1) or feature_group_count != 1 or batch_group_count != 1:
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
    """`lax.conv_general_dilated` with the CPU rewrites above for 2-D, stride-1, undilated, ungrouped NHWC/HWIO
    convolutions (with at most `max_channels` channels in and out, if given); anything else goes to
    `lax.conv_general_dilated` as given."""
    small = max_channels is None or max(rhs.shape[-2:]) <= max_channels
    if not small or not _covered(lhs, rhs, window_strides, lhs_dilation, rhs_dilation, dimension_numbers,
                                 feature_group_count, batch_group_count, precision, preferred_element_type,
                                 out_sharding):
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, out_sharding=out_sharding)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _conv(lhs, rhs, pads, _IN_LOOP.get())
