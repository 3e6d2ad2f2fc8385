"""Small building blocks shared by the models: activations, non-overlapping pooling, BatchNorm and
the two initialisations (`model.init`)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nnx.relu,
    "tanh": jnp.tanh,
    "elu": nnx.elu,
    "sigmoid": nnx.sigmoid,
}
POOLINGS = ("avg", "max")
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1 (weight of the new batch) = Flax momentum 0.9 (weight of the old)
BN_EPSILON = 1e-5


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"model.activation={name!r} is not valid; valid values: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def check_pooling(name: str) -> str:
    if name not in POOLINGS:
        raise ValueError(f"model.pooling={name!r} is not valid; valid values: {', '.join(POOLINGS)}")
    return name


def pool(x: jax.Array, kind: str, size: int) -> jax.Array:
    """size×size pooling with stride size on NHWC input, dropping odd edges like PyTorch (floor mode).

    Written as a reshape and a reduction: it equals `nnx.avg_pool`/`nnx.max_pool` with
    window = stride = size, and its gradient is a cheap broadcast instead of a windowed scatter
    (`nnx.max_pool`'s gradient measured 4× slower on this CPU).
    """
    n, h, w, c = x.shape
    x = x[:, : h // size * size, : w // size * size]
    x = x.reshape(n, h // size, size, w // size, size, c)
    return x.mean(axis=(2, 4)) if kind == "avg" else _window_max(x)


@jax.custom_vjp
def _window_max(x: jax.Array) -> jax.Array:
    """The max over axes 2 and 4 of (N, H, s, W, s, C) windows. Its gradient goes to the first maximum
    of each window in row-major order, as PyTorch's MaxPool2d and `lax.reduce_window` do; `jnp.max`'s
    would split it evenly between tied maxima (MNIST's flat background makes ties common), and a
    model trained from the same weights on the same batches would drift from PyTorch's."""
    return x.max(axis=(2, 4))


def _window_max_fwd(x):
    y = x.max(axis=(2, 4))
    return y, (x, y)


def _window_max_bwd(residuals, g):
    x, y = residuals
    size = x.shape[2]
    order = (jnp.arange(size)[:, None] * size + jnp.arange(size)).reshape(1, 1, size, 1, size, 1)  # row-major
    first = jnp.where(x == y[:, :, None, :, None, :], order, size * size).min(axis=(2, 4), keepdims=True)
    return (jnp.where(order == first, g[:, :, None, :, None, :], 0).astype(x.dtype),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


INITS = ("torch", "flax")  # config model.init


class BatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` with PyTorch's momentum and epsilon. Both normalise a training batch with its
    biased variance; with `unbiased_running_var` (set by `torch_init`) the running variance is updated
    with the unbiased one, n/(n-1) times larger, as `torch.nn.BatchNorm2d` does, instead of Flax's biased one."""

    def __init__(self, num_features: int, *, dtype=None, rngs: nnx.Rngs):
        super().__init__(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, dtype=dtype, rngs=rngs)
        self.unbiased_running_var = False

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask=None) -> jax.Array:
        before = self.var[...]
        y = super().__call__(x, use_running_average, mask=mask)
        frozen = self.use_running_average if use_running_average is None else use_running_average
        if self.unbiased_running_var and not frozen:
            n = x.size // x.shape[-1]  # values per channel in the batch
            # Flax stored m·before + (1-m)·v (v biased); add (1-m)·v/(n-1), making it m·before + (1-m)·v·n/(n-1).
            after = self.var[...]
            self.var[...] = jax.lax.stop_gradient(after + (after - self.momentum * before) / max(n - 1, 1))
        return y


TORCH_CONV_INITS = ("default", "kaiming_normal_fan_out")  # a model module's TORCH_CONV_INIT


def torch_init(module: nnx.Module, key: jax.Array, convs: str = "default") -> None:
    """PyTorch's initialisation, in place, of every Conv and Linear in `module`: by default PyTorch's
    own (`reset_parameters`: kernels kaiming_uniform(a=√5) and biases uniform, both within ±1/√fan_in,
    fan_in = input channels × kernel area; Flax kernels are (..., in, out)); with
    `convs="kaiming_normal_fan_out"` convolution kernels are normal with std √(2/fan_out), as
    torchvision's ResNet initialises them. BatchNorm: scale 1, bias 0 and PyTorch's running-variance
    update. `model.init=flax` keeps Flax's lecun_normal kernels and zero biases, whose spread is about
    1.7× larger than PyTorch's default (plain SGD then trains as if at a larger learning rate)."""
    if convs not in TORCH_CONV_INITS:
        raise ValueError(f"convs={convs!r} is not valid; valid values: {', '.join(TORCH_CONV_INITS)}")
    for path, layer in nnx.iter_graph(module):
        if isinstance(layer, (nnx.Conv, nnx.Linear)):
            kernel = layer.kernel
            # each layer's key from its path: the same weights whatever else the graph holds (dtype, ...)
            k_kernel, k_bias = jax.random.split(jax.random.fold_in(key, zlib.crc32(".".join(map(str, path)).encode())))
            bound = 1.0 / math.sqrt(math.prod(kernel.shape[:-1]))
            if isinstance(layer, nnx.Conv) and convs == "kaiming_normal_fan_out":
                std = math.sqrt(2.0 / (math.prod(kernel.shape[:-2]) * kernel.shape[-1]))
                kernel[...] = std * jax.random.normal(k_kernel, kernel.shape, kernel.dtype)
            else:
                kernel[...] = jax.random.uniform(k_kernel, kernel.shape, kernel.dtype, -bound, bound)
            if layer.bias is not None:
                layer.bias[...] = jax.random.uniform(k_bias, layer.bias.shape, layer.bias.dtype, -bound, bound)
        elif isinstance(layer, BatchNorm):
            layer.scale[...] = jnp.ones_like(layer.scale[...])
            layer.bias[...] = jnp.zeros_like(layer.bias[...])
            layer.unbiased_running_var = True
