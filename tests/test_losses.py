"""Barlow Twins loss against an independent numpy computation and its invariances."""

import jax.numpy as jnp
import numpy as np
import pytest

from fetalssl_jax.losses import barlow_twins_loss


def numpy_barlow(z1, z2, lambd):
    """Straight from the paper's pseudo-code, with explicit loops over the matrix entries."""
    n, d = z1.shape
    a = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5)
    b = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + 1e-5)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[k, i] * b[k, j] for k in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij**2
    return loss


@pytest.mark.parametrize("lambd", [0.0051, 0.5])
def test_matches_numpy(lambd):
    rng = np.random.default_rng(0)
    z1 = rng.normal(size=(12, 6)) * 3 + 1
    z2 = z1 + rng.normal(size=(12, 6))
    got = float(barlow_twins_loss(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), lambd))
    assert got == pytest.approx(numpy_barlow(z1, z2, lambd), rel=1e-4)


def test_invariances():
    rng = np.random.default_rng(1)
    z1 = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    z2 = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    base = float(barlow_twins_loss(z1, z2))
    # symmetric in the two views (C becomes its transpose)
    assert float(barlow_twins_loss(z2, z1)) == pytest.approx(base, rel=1e-5)
    # per-dimension positive scaling and shifting is removed by the standardisation
    scale = jnp.asarray(rng.uniform(0.5, 4, size=8), jnp.float32)
    assert float(barlow_twins_loss(z1 * scale + 3.0, z2)) == pytest.approx(base, rel=1e-4)
    # permuting the batch (the same way in both views) changes nothing
    perm = rng.permutation(32)
    assert float(barlow_twins_loss(z1[perm], z2[perm])) == pytest.approx(base, rel=1e-5)


def test_perfect_twins_with_decorrelated_dims_cost_nothing():
    # Orthogonal, zero-mean columns: C is the identity, so both terms vanish.
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(64, 8)))
    z = q - q.mean(0)
    z = z / z.std(0)
    loss = float(barlow_twins_loss(jnp.asarray(z, jnp.float32), jnp.asarray(z, jnp.float32)))
    assert loss < 0.05  # not exact: centring breaks orthogonality slightly, eps in the standardisation


def test_identical_collapsed_dims_are_penalised():
    z = np.random.default_rng(3).normal(size=(16, 1)).repeat(4, axis=1)  # every dimension the same
    loss = float(barlow_twins_loss(jnp.asarray(z, jnp.float32), jnp.asarray(z, jnp.float32), lambd=1.0))
    assert loss == pytest.approx(12.0, rel=1e-3)  # 12 off-diagonal entries of C equal 1; diagonal is perfect
