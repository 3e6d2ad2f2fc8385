"""K-means feature learning (Coates, Lee & Ng 2011; Coates & Ng 2012), in pure JAX.

Pipeline: ``extract_patches`` -> ``normalize_patches`` -> ``zca_whitening`` / ``whiten`` ->
``spherical_kmeans`` (or Euclidean ``kmeans``; both keep the best of ``n_init`` vmapped restarts) ->
``filters_from_kmeans``, which folds the whitening into an HWIO conv kernel and bias so the learned
dictionary can initialise the first conv layer.

Conventions: a patch is flattened in (h, w, c) order, so a (d,) vector reshapes to
(patch, patch, C) and a (d, k) matrix to an HWIO kernel (patch, patch, C, k). Centroids are
returned as rows, shape (k, d); the dictionary D of the papers is ``centroids.T`` (d, k).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# Brightness/contrast normalisation constant: 10 on the 0..255 pixel scale (Coates et al.).
# For data in [0, 1] the equivalent is 10 / 255**2 (the variance scales with the square).
NORM_EPS_255 = 10.0
NORM_EPS_UNIT = 10.0 / 255.0**2


def patch_positions(key, num_images: int, height: int, width: int, patch_size: int, count: int):
    """The (image, row, col) top-left corners ``extract_patches`` uses for this key: 3 int32 arrays of (count,)."""
    k_img, k_row, k_col = jax.random.split(key, 3)
    idx = jax.random.randint(k_img, (count,), 0, num_images)
    rows = jax.random.randint(k_row, (count,), 0, height - patch_size + 1)
    cols = jax.random.randint(k_col, (count,), 0, width - patch_size + 1)
    return idx, rows, cols


@functools.partial(jax.jit, static_argnames=("patch_size", "count"))
def extract_patches(key, images, patch_size: int, count: int):
    """``count`` random patch_size x patch_size patches of NHWC ``images`` (uint8 or float).

    Positions are uniform over images and over valid top-left corners (see ``patch_positions``).
    Values are cast to float32 without rescaling. Returns (count, patch_size * patch_size * C),
    each row flattened in (h, w, c) order.
    """
    n, h, w, c = images.shape
    if patch_size > h or patch_size > w:
        raise ValueError(f"patch_size {patch_size} exceeds image size {h}x{w}")
    images = images.astype(jnp.float32)
    idx, rows, cols = patch_positions(key, n, h, w, patch_size, count)

    def one(i, r, col):
        return jax.lax.dynamic_slice(images[i], (r, col, 0), (patch_size, patch_size, c)).reshape(-1)

    return jax.vmap(one)(idx, rows, cols)


@jax.jit
def normalize_patches(patches, eps: float = NORM_EPS_255):
    """Per-patch brightness/contrast normalisation: (x - mean(x)) / sqrt(var(x) + eps).

    ``eps`` = 10 suits 0..255 pixels; use ``NORM_EPS_UNIT`` (10 / 255**2) for [0, 1] data.
    """
    patches = patches.astype(jnp.float32)
    mean = patches.mean(axis=1, keepdims=True)
    var = patches.var(axis=1, keepdims=True)
    return (patches - mean) / jnp.sqrt(var + eps)


@jax.jit
def zca_whitening(patches, eps: float = 0.01):
    """ZCA whitening fitted to ``patches`` (n, d): returns (mean (d,), W (d, d)).

    C is the biased (1/n) sample covariance, C = U diag(S) U^T, and W = U diag(1/sqrt(S + eps)) U^T
    (symmetric). The whitened sample then has covariance U diag(S / (S + eps)) U^T, i.e. the identity
    as eps -> 0.
    """
    patches = patches.astype(jnp.float32)
    mean = patches.mean(axis=0)
    x = patches - mean
    cov = (x.T @ x) / patches.shape[0]
    s, u = jnp.linalg.eigh(cov)
    s = jnp.maximum(s, 0.0)  # clip round-off negatives
    w = (u * (1.0 / jnp.sqrt(s + eps))) @ u.T
    return mean, w


@jax.jit
def whiten(patches, mean, W):
    """Rows of ``patches`` mapped to W (x - mean)."""
    return (patches.astype(jnp.float32) - mean) @ W.T


def _unit_rows(x, eps: float = 1e-8):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _refill_empty(centroids, counts, data, badness):
    """Replace the centroids of empty clusters by the data points with the largest ``badness``, distinct per cluster."""
    empty = counts == 0
    k = min(centroids.shape[0], data.shape[0])
    worst = jax.lax.top_k(badness, k)[1]  # worst-represented points first (at most k clusters are empty)
    rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
    return jnp.where(empty[:, None], data[worst[rank]], centroids)


def _restart_keys(key, n_init: int):
    """One key per restart; a single start uses ``key`` itself."""
    if n_init < 1:
        raise ValueError(f"n_init={n_init} must be >= 1")
    return key[None] if n_init == 1 else jax.random.split(key, n_init)


def _spherical_run(key, data, norms, k: int, iterations: int):
    """One spherical k-means from a random start: (centroids (k, d), objective sum_i max_j (D_j^T x_i)^2)."""
    centroids = _unit_rows(jax.random.normal(key, (k, data.shape[1]), jnp.float32))  # rows = columns of D

    def step(_, c):
        proj = data @ c.T  # (n, k) = (D^T X)^T
        s = jnp.argmax(jnp.abs(proj), axis=1)
        sval = jnp.take_along_axis(proj, s[:, None], axis=1)  # S[s_i, i], the one signed projection of x_i
        c = jax.ops.segment_sum(sval * data, s, k) + c  # (X S^T + D)^T
        counts = jax.ops.segment_sum(jnp.ones_like(sval[:, 0]), s, k)
        best_cos = jnp.abs(sval[:, 0]) / norms
        c = _refill_empty(c, counts, data, -best_cos)
        return _unit_rows(c)

    centroids = jax.lax.fori_loop(0, iterations, step, centroids)
    return centroids, jnp.sum(jnp.max((data @ centroids.T) ** 2, axis=1))


@functools.partial(jax.jit, static_argnames=("k", "iterations", "n_init"))
def spherical_kmeans(key, data, k: int, iterations: int = 10, n_init: int = 1):
    """Spherical (gain-shape) k-means of Coates & Ng: returns (centroids (k, d), assignments (n,)).

    D (d, k) starts as unit-length random normal columns. Each iteration: s_i = argmax_j |D_j^T x_i|
    (absolute projection, so x and -x share a cluster and a centroid's sign is arbitrary); S has the single
    non-zero S[s_i, i] = D_{s_i}^T x_i (the signed projection); D <- X S^T + D; columns renormalised.
    Empty clusters: plain Coates keeps them (the +D term); here they are re-initialised to the data points
    worst represented by the current dictionary (smallest max_j |cos(D_j, x_i)|), which keeps k-means from
    merging two directions into one centroid while another stays idle. Rows of ``data`` are used as given
    (normally whitened patches).

    ``n_init`` restarts (vmapped; one key each from ``key``, or ``key`` itself for 1) keep the dictionary
    with the smallest reconstruction error sum_i ||x_i - D s_i||^2 = sum_i ||x_i||^2 - max_j (D_j^T x_i)^2.
    """
    data = data.astype(jnp.float32)
    norms = jnp.maximum(jnp.linalg.norm(data, axis=1), 1e-8)
    runs, objective = jax.vmap(lambda kk: _spherical_run(kk, data, norms, k, iterations))(_restart_keys(key, n_init))
    centroids = runs[jnp.argmax(objective)]
    return centroids, jnp.argmax(jnp.abs(data @ centroids.T), axis=1)


def _sq_dists(data, centroids):
    return jnp.maximum(
        jnp.sum(data**2, axis=1, keepdims=True)
        - 2.0 * data @ centroids.T
        + jnp.sum(centroids**2, axis=1)[None, :],
        0.0,
    )


def inertia(data, centroids):
    """Sum over the rows of ``data`` of the squared distance to the nearest centroid (scikit-learn's ``inertia_``)."""
    return jnp.sum(jnp.min(_sq_dists(jnp.asarray(data, jnp.float32), jnp.asarray(centroids, jnp.float32)), axis=1))


def kmeans_plus_plus(key, data, k: int, trials: int | None = None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's ``kmeans_plusplus``): (k, d) centres.

    The first centre is a uniformly drawn point; each next one is the best of ``trials`` candidates drawn with
    probability proportional to the squared distance to the nearest centre so far, best meaning the smallest
    resulting potential (sum of those squared distances). ``trials`` defaults to scikit-learn's 2 + int(ln k);
    1 gives plain k-means++.
    """
    data = data.astype(jnp.float32)
    n, d = data.shape
    trials = 2 + int(math.log(k)) if trials is None else trials
    k0, kseq = jax.random.split(key)
    first = data[jax.random.randint(k0, (), 0, n)]
    init = jnp.zeros((k, d), jnp.float32).at[0].set(first)
    mind = _sq_dists(data, first[None])[:, 0]

    def pp(i, carry):
        c, mind = carry
        cum = jnp.cumsum(mind)
        u = jax.random.uniform(jax.random.fold_in(kseq, i), (trials,)) * cum[-1]
        cand = jnp.minimum(jnp.searchsorted(cum, u, side="right"), n - 1)  # P(j) = mind_j / sum(mind)
        dist = jnp.minimum(mind, _sq_dists(data, data[cand]).T)  # (trials, n)
        best = jnp.argmin(dist.sum(axis=1))
        return c.at[i].set(data[cand[best]]), dist[best]

    centroids, _ = jax.lax.fori_loop(1, k, pp, (init, mind))
    return centroids


def _lloyd_run(key, data, k: int, iterations: int, trials: int | None):
    """One k-means from a k-means++ start: (centroids (k, d), inertia)."""

    def step(_, c):
        dist = _sq_dists(data, c)
        s = jnp.argmin(dist, axis=1)
        counts = jax.ops.segment_sum(jnp.ones(data.shape[0], jnp.float32), s, k)
        new = jax.ops.segment_sum(data, s, k) / jnp.maximum(counts, 1.0)[:, None]
        return _refill_empty(new, counts, data, jnp.min(dist, axis=1))

    centroids = jax.lax.fori_loop(0, iterations, step, kmeans_plus_plus(key, data, k, trials))
    return centroids, inertia(data, centroids)


@functools.partial(jax.jit, static_argnames=("k", "iterations", "n_init", "trials"))
def kmeans(key, data, k: int, iterations: int = 20, n_init: int = 1, trials: int | None = None):
    """Plain Euclidean k-means (Lloyd) with greedy k-means++ seeding (``kmeans_plus_plus``, ``trials``
    candidates per centre): returns (centroids (k, d), assignments (n,)).

    ``n_init`` restarts (vmapped; one key each from ``key``, or ``key`` itself for 1) keep the centroids with
    the smallest ``inertia``, as scikit-learn's ``KMeans(n_init=...)``; each runs ``iterations`` Lloyd steps
    (no tolerance stop). Empty clusters are re-seeded with the points farthest from their current centroid.
    Assignments are those of the returned centroids.
    """
    data = data.astype(jnp.float32)
    runs, inertias = jax.vmap(lambda kk: _lloyd_run(kk, data, k, iterations, trials))(_restart_keys(key, n_init))
    centroids = runs[jnp.argmin(inertias)]
    return centroids, jnp.argmin(_sq_dists(data, centroids), axis=1)


def filters_from_kmeans(centroids, mean, W, patch_size: int, channels: int):
    """Fold whitening into conv weights: returns (kernel (patch, patch, C, k) HWIO, bias (k,)).

    With D = centroids.T (d, k): kernel = (W^T D) reshaped, bias = -mean^T (W^T D), so a VALID conv
    over (normalised, unwhitened) images gives D^T W (x - mean) at every patch position x.
    """
    d = patch_size * patch_size * channels
    centroids = jnp.asarray(centroids, jnp.float32)
    if centroids.shape[1] != d:
        raise ValueError(f"centroids have dimension {centroids.shape[1]}, expected {patch_size}*{patch_size}*{channels}={d}")
    wd = jnp.asarray(W, jnp.float32).T @ centroids.T  # (d, k)
    bias = -jnp.asarray(mean, jnp.float32) @ wd
    return wd.reshape(patch_size, patch_size, channels, centroids.shape[0]), bias
