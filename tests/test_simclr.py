"""SimCLR NT-Xent loss: against a loop-by-loop NumPy reference, invariances, gradient, jit, validation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.ssl.simclr import nt_xent


def reference_nt_xent(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    two_n = len(z)
    n = two_n // 2
    total = 0.0
    for i in range(two_n):
        pos = (i + n) % two_n
        num = np.exp(z[i] @ z[pos] / t)
        den = sum(np.exp(z[i] @ z[k] / t) for k in range(two_n) if k != i)
        total += -np.log(num / den)
    return total / two_n


@pytest.mark.parametrize("n,d,t", [(2, 1, 0.5), (2, 3, 1.0), (5, 8, 0.1), (8, 16, 0.5), (16, 4, 2.0), (7, 32, 0.07)])
def test_matches_loop_reference(n, d, t):
    rng = np.random.default_rng(n * 100 + d)
    z1 = rng.normal(size=(n, d)).astype(np.float32)
    z2 = rng.normal(size=(n, d)).astype(np.float32)
    got = float(nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature=t))
    np.testing.assert_allclose(got, reference_nt_xent(z1, z2, t), rtol=1e-5)


def test_default_temperature_is_half():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(float(nt_xent(z1, z2)), reference_nt_xent(z1, z2, 0.5), rtol=1e-5)


def test_symmetric_in_the_views():
    rng = np.random.default_rng(2)
    z1, z2 = jnp.asarray(rng.normal(size=(2, 9, 12)), jnp.float32)
    np.testing.assert_allclose(float(nt_xent(z1, z2)), float(nt_xent(z2, z1)), rtol=1e-6)


def test_invariant_to_positive_rescaling():
    rng = np.random.default_rng(3)
    z1, z2 = jnp.asarray(rng.normal(size=(2, 6, 10)), jnp.float32)
    s1 = jnp.asarray(rng.uniform(0.1, 10.0, size=(6, 1)), jnp.float32)
    s2 = jnp.asarray(rng.uniform(0.1, 10.0, size=(6, 1)), jnp.float32)
    np.testing.assert_allclose(float(nt_xent(z1 * s1, z2 * s2)), float(nt_xent(z1, z2)), rtol=1e-5)


def test_perfect_alignment_beats_random():
    rng = np.random.default_rng(4)
    z1 = jnp.eye(8, 16, dtype=jnp.float32)  # orthogonal rows
    aligned = float(nt_xent(z1, z1, temperature=0.5))
    random = float(nt_xent(z1, jnp.asarray(rng.normal(size=(8, 16)), jnp.float32), temperature=0.5))
    assert aligned < random
    np.testing.assert_allclose(aligned, reference_nt_xent(np.asarray(z1), np.asarray(z1), 0.5), rtol=1e-5)


def test_gradient_is_finite():
    rng = np.random.default_rng(5)
    z1, z2 = jnp.asarray(rng.normal(size=(2, 4, 3)), jnp.float32)
    g1, g2 = jax.grad(nt_xent, argnums=(0, 1))(z1, z2, 0.1)
    assert g1.shape == z1.shape and g2.shape == z2.shape
    assert bool(jnp.all(jnp.isfinite(g1)) & jnp.all(jnp.isfinite(g2)))
    assert float(jnp.abs(g1).sum()) > 0


def test_jit_matches_eager():
    rng = np.random.default_rng(6)
    z1, z2 = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
    eager = float(nt_xent(z1, z2, 0.3))
    jitted = jax.jit(nt_xent, static_argnames="temperature")(z1, z2, temperature=0.3)
    traced_t = jax.jit(nt_xent)(z1, z2, 0.3)
    np.testing.assert_allclose(float(jitted), eager, rtol=1e-6)
    np.testing.assert_allclose(float(traced_t), eager, rtol=1e-6)


@pytest.mark.parametrize(
    "shape1,shape2,t,match",
    [
        ((4, 3), (4, 5), 0.5, r"\(4, 5\)"),
        ((4, 3), (5, 3), 0.5, r"\(5, 3\)"),
        ((1, 3), (1, 3), 0.5, "N=1"),
        ((4,), (4,), 0.5, r"\(4,\)"),
        ((4, 3), (4, 3), 0.0, "0.0"),
        ((4, 3), (4, 3), -1.0, "-1.0"),
        ((4, 3), (4, 3), float("inf"), "inf"),
    ],
)
def test_bad_inputs_raise(shape1, shape2, t, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(jnp.ones(shape1), jnp.ones(shape2), temperature=t)
