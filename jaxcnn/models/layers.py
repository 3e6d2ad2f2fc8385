"""Small building blocks shared by the models: activations and non-overlapping pooling."""

from __future__ import annotations

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
    window = stride = size, and its gradient is a cheap broadcast instead of a windowed scatter.
    """
    n, h, w, c = x.shape
    x = x[:, : h // size * size, : w // size * size]
    x = x.reshape(n, h // size, size, w // size, size, c)
    return x.mean(axis=(2, 4)) if kind == "avg" else x.max(axis=(2, 4))
