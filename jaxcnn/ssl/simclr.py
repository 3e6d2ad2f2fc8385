"""SimCLR contrastive objective: the standard NT-Xent loss (Chen et al. 2020)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["nt_xent"]


def _check_temperature(temperature) -> None:
    try:
        t = float(temperature)
    except (TypeError, jax.errors.ConcretizationTypeError):
        return  # traced under jit: cannot be checked here
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def nt_xent(z1, z2, temperature=0.5) -> jax.Array:
    """Normalised temperature-scaled cross-entropy (NT-Xent) over a batch of N positive pairs.

    ``z1[i]`` and ``z2[i]`` are embeddings of two views of example ``i``, each of shape (N, D).
    The embeddings are L2-normalised and stacked into 2N views; the logits are the cosine
    similarities divided by ``temperature``, with each view's self-similarity masked out of
    the softmax. For every one of the 2N anchors the target is its partner view, and the
    other 2N - 2 views are negatives; the result is the mean cross-entropy over all 2N
    anchors (a scalar). Pure ``jnp``, jit-able and differentiable; stable via logsumexp.

    Note: the study's own version compared only cross-view pairs (``z1 @ z2.T``, N - 1
    negatives per anchor, all from the other view); this is the standard SimCLR loss with
    all 2N - 2 negatives, so its values are not directly comparable with the study's.

    Raises ValueError if z1 and z2 differ in shape, are not 2-D, have N < 2 or D < 1, or if
    ``temperature`` is not a finite number > 0 (checked only when it is concrete).
    """
    if jnp.shape(z1) != jnp.shape(z2):
        raise ValueError(f"z1 and z2 must have the same shape, got {jnp.shape(z1)} and {jnp.shape(z2)}")
    if jnp.ndim(z1) != 2:
        raise ValueError(f"embeddings must have shape (N, D), got {jnp.shape(z1)}")
    n, d = jnp.shape(z1)
    if n < 2:
        raise ValueError(f"need a batch of N >= 2 pairs, got N={n}")
    if d < 1:
        raise ValueError(f"embedding dimension must be >= 1, got D={d}")
    _check_temperature(temperature)
    z1, z2 = jnp.asarray(z1), jnp.asarray(z2)
    return _nt_xent(z1, z2, temperature)


@jax.jit
def _nt_xent(z1, z2, temperature):
    n = z1.shape[0]
    dtype = jnp.result_type(z1, z2, float)
    z = jnp.concatenate([z1.astype(dtype), z2.astype(dtype)], axis=0)  # (2N, D)
    eps = jnp.finfo(dtype).eps
    z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=1, keepdims=True), eps))
    logits = (z @ z.T) / jnp.asarray(temperature, dtype)  # (2N, 2N)

    idx = jnp.arange(2 * n)
    positive = (idx + n) % (2 * n)  # partner view of each anchor
    pos_logits = logits[idx, positive]
    masked = jnp.where(idx[:, None] == idx[None, :], jnp.finfo(dtype).min, logits)
    return jnp.mean(jax.nn.logsumexp(masked, axis=1) - pos_logits)
