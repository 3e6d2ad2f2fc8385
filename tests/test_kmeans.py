"""K-means feature learning: patches, normalisation, ZCA whitening, (spherical) k-means, folded conv filters."""

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from tests.helpers import config_module
from jaxcnn.ssl import pretrain
from jaxcnn.ssl.kmeans import (
    extract_patches,
    filters_from_kmeans,
    inertia,
    kmeans,
    normalize_patches,
    patch_positions,
    spherical_kmeans,
    whiten,
    zca_whitening,
)


def test_extract_patches_are_slices_of_the_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 9, 7, 3), dtype=np.uint8)
    key = jax.random.key(3)
    patches = extract_patches(key, jnp.asarray(images), 4, 32)
    assert patches.shape == (32, 4 * 4 * 3) and patches.dtype == jnp.float32
    idx, rows, cols = map(np.asarray, patch_positions(key, 5, 9, 7, 4, 32))
    for t in range(32):
        i, r, c = idx[t], rows[t], cols[t]
        expected = images[i, r : r + 4, c : c + 4, :].reshape(-1).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(patches[t]), expected)
    assert len(set(idx.tolist())) > 1 and rows.max() <= 5 and cols.max() <= 3


def test_extract_patches_constant_image_trick():
    # Image n is constant n*10 with channel offset c: every patch must come out unscaled from one image.
    images = (np.arange(6)[:, None, None, None] * 10 + np.arange(3)).astype(np.float32)
    images = np.broadcast_to(images, (6, 8, 8, 3))
    patches = np.asarray(extract_patches(jax.random.key(0), jnp.asarray(images), 3, 50)).reshape(50, 9, 3)
    assert np.all(patches == patches[:, :1, :])  # one image per patch, (h, w, c) order keeps channels last
    np.testing.assert_array_equal(patches[:, 0, :] % 10, np.broadcast_to(np.arange(3), (50, 3)))


def test_normalize_patches_zero_mean_unit_contrast():
    rng = np.random.default_rng(1)
    patches = rng.uniform(0, 255, size=(64, 27)).astype(np.float32)
    patches[0] = 7.0  # a flat patch must not blow up
    out = np.asarray(normalize_patches(jnp.asarray(patches)))
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-5)
    var = patches.var(axis=1)
    np.testing.assert_allclose(out.var(axis=1), var / (var + 10.0), rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out[0], 0.0)


def test_zca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(2)
    d, n = 12, 4000
    a = rng.normal(size=(d, d)) + 3 * np.eye(d)
    x = (rng.normal(size=(n, d)) @ a + 5.0).astype(np.float32)

    mean, w = zca_whitening(jnp.asarray(x), eps=1e-7)
    np.testing.assert_allclose(np.asarray(w), np.asarray(w).T, atol=1e-5)
    z = np.asarray(whiten(jnp.asarray(x), mean, w), np.float64)
    cov = z.T @ z / n
    assert np.abs(z.mean(axis=0)).max() < 1e-4
    assert np.abs(cov - np.eye(d)).max() < 2e-3

    eps = 0.5  # against the analytic U diag(S / (S + eps)) U^T
    mean, w = zca_whitening(jnp.asarray(x), eps=eps)
    z = np.asarray(whiten(jnp.asarray(x), mean, w), np.float64)
    xc = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    s, u = np.linalg.eigh(xc.T @ xc / n)
    np.testing.assert_allclose(z.T @ z / n, (u * (s / (s + eps))) @ u.T, atol=2e-3)


def _match(true_vectors, found):
    """Best |cosine| per planted vector, and whether the best matches form a permutation."""
    cos = np.abs(_unit(true_vectors) @ _unit(found).T)
    best = cos.argmax(axis=1)
    return cos.max(axis=1), len(set(best.tolist())) == len(best)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_kmeans_recovers_planted_blobs():
    rng = np.random.default_rng(3)
    k, d, per = 4, 8, 100
    centers = rng.normal(scale=8.0, size=(k, d))
    truth = np.repeat(np.arange(k), per)
    x = (centers[truth] + rng.normal(scale=0.5, size=(k * per, d))).astype(np.float32)
    perm = rng.permutation(k * per)
    x, truth = x[perm], truth[perm]

    centroids, assign = kmeans(jax.random.key(0), jnp.asarray(x), k, iterations=20)
    centroids, assign = np.asarray(centroids), np.asarray(assign)
    table = np.zeros((k, k), int)
    np.add.at(table, (truth, assign), 1)
    assert np.all((table > 0).sum(axis=1) == 1) and np.all((table > 0).sum(axis=0) == 1)  # a permutation
    mapping = table.argmax(axis=1)
    for c in range(k):
        np.testing.assert_allclose(centroids[mapping[c]], x[truth == c].mean(axis=0), atol=1e-4)
        assert np.linalg.norm(centroids[mapping[c]] - centers[c]) < 0.4


def test_kmeans_restarts_match_scikit_learn_on_the_study_patches():
    # The SSL study's data for k-means (configs/ssl_init.py:kmeans, seed 0: its 100,000 patches, ~36,000 of them
    # non-flat), its k (the first conv's filters), iterations and restarts, Euclidean mode: every key within 1 % of
    # scikit-learn's best-of-10 inertia. A single k-means++ start was 0.6-10.9 % above it on these keys.
    cfg = config_module("ssl_init").get_config("kmeans")
    k, iterations, n_init = cfg.model.widths[0], cfg.ssl.kmeans_iterations, cfg.ssl.kmeans_n_init
    white, _, _ = pretrain.whitened_patches(pretrain.pretrain_dataset(cfg).train_images, cfg,
                                            jax.random.key(cfg.seed), k)
    with threadpool_limits(1):  # scikit-learn's OpenMP threads crawl on a shared CPU (1.5 s on one, up to 17 s on two)
        fitted = KMeans(n_clusters=k, n_init=10, random_state=0).fit(np.asarray(white))
    reference = float(inertia(white, fitted.cluster_centers_))
    ratios = [float(inertia(white, kmeans(jax.random.key(seed), white, k, iterations, n_init)[0])) / reference
              for seed in range(10)]
    assert max(ratios) < 1.01, [round(r, 4) for r in ratios]


def test_restarts_keep_the_best_and_one_start_is_the_key_itself():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(300, 4)).astype(np.float32))
    key = jax.random.key(7)
    best = float(inertia(x, kmeans(key, x, 6, iterations=5, n_init=4)[0]))
    singles = [float(inertia(x, kmeans(kk, x, 6, iterations=5)[0])) for kk in jax.random.split(key, 4)]
    assert best == min(singles)
    objective = lambda c: float(jnp.sum(jnp.max((x @ c.T) ** 2, axis=1)))  # noqa: E731
    best = objective(spherical_kmeans(key, x, 6, iterations=5, n_init=4)[0])
    assert best == max(objective(spherical_kmeans(kk, x, 6, iterations=5)[0]) for kk in jax.random.split(key, 4))


def test_spherical_kmeans_finds_planted_directions():
    rng = np.random.default_rng(4)
    k, d, n = 4, 16, 400
    dirs = np.linalg.qr(rng.normal(size=(d, k)))[0].T  # orthonormal rows
    label = rng.integers(0, k, size=n)
    gain = rng.uniform(0.5, 1.5, size=(n, 1)) * rng.choice([-1.0, 1.0], size=(n, 1))  # sign must not matter
    x = (gain * dirs[label] + rng.normal(scale=0.05, size=(n, d))).astype(np.float32)

    for seed in range(3):
        centroids, assign = spherical_kmeans(jax.random.key(seed), jnp.asarray(x), k, iterations=10)
        centroids = np.asarray(centroids)
        np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
        best, is_perm = _match(dirs, centroids)
        assert is_perm and best.min() > 0.95, (seed, best)
        assert np.asarray(assign).shape == (n,)


def test_filters_from_kmeans_fold_the_whitening_into_a_conv():
    rng = np.random.default_rng(5)
    p, c, k = 3, 3, 5
    images = rng.uniform(0, 1, size=(20, 10, 10, 3)).astype(np.float32)
    patches = extract_patches(jax.random.key(1), jnp.asarray(images), p, 600)
    mean, w = zca_whitening(patches, eps=0.01)
    centroids = jnp.asarray(_unit(rng.normal(size=(k, p * p * c))), jnp.float32)
    kernel, bias = filters_from_kmeans(centroids, mean, w, p, c)
    assert kernel.shape == (p, p, c, k) and bias.shape == (k,)

    image = images[:1]
    out = jax.lax.conv_general_dilated(
        jnp.asarray(image), kernel, (1, 1), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=jax.lax.Precision.HIGHEST,
    ) + bias
    h = image.shape[1] - p + 1
    direct = np.stack([image[0, i : i + p, j : j + p, :].reshape(-1) for i in range(h) for j in range(h)])
    expected = np.asarray(whiten(jnp.asarray(direct), mean, w) @ centroids.T).reshape(1, h, h, k)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
