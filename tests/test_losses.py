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


# ---- NT-Xent -------------------------------------------------------------------------------------------------


def numpy_nt_xent(z1, z2, t):
    """Per-view loop, as in the SimCLR paper: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t)."""
    z = np.concatenate([z1, z2])
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denominator = sum(np.exp(z[i] @ z[k] / t) for k in range(n2) if k != i)
        total += -np.log(np.exp(z[i] @ z[j] / t) / denominator)
    return total / n2


def test_nt_xent_matches_numpy_and_invariances():
    from fetalssl_jax.losses import nt_xent_loss

    rng = np.random.default_rng(4)
    z1, z2 = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    got = float(nt_xent_loss(jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32), 0.5))
    assert got == pytest.approx(numpy_nt_xent(z1, z2, 0.5), rel=1e-4)
    j1, j2 = jnp.asarray(z1, jnp.float32), jnp.asarray(z2, jnp.float32)
    assert float(nt_xent_loss(j2, j1, 0.5)) == pytest.approx(got, rel=1e-5)  # symmetric in the views
    perm = rng.permutation(6)
    assert float(nt_xent_loss(j1[perm], j2[perm], 0.5)) == pytest.approx(got, rel=1e-5)  # batch order
    assert float(nt_xent_loss(3 * j1, 0.5 * j2, 0.5)) == pytest.approx(got, rel=1e-5)  # only directions count


def test_nt_xent_perfect_pairs_approach_the_bound():
    from fetalssl_jax.losses import nt_xent_loss

    # views identical and images orthogonal: s_pos = 1, s_neg = 0 -> -log(e^{1/t} / (e^{1/t} + 2N - 2))
    z = jnp.eye(4, dtype=jnp.float32)
    t = 0.5
    want = -np.log(np.exp(1 / t) / (np.exp(1 / t) + 6))
    assert float(nt_xent_loss(z, z, t)) == pytest.approx(want, rel=1e-5)


# ---- VICReg --------------------------------------------------------------------------------------------------


def numpy_vicreg(x, y, sim, std, cov):
    """The VICReg reference written out with loops for the covariance."""
    n, d = x.shape
    invariance = np.mean((x - y) ** 2)
    variance = 0.0
    covariance = 0.0
    for z in (x, y):
        z = z - z.mean(0)
        variance += np.mean(np.maximum(0, 1 - np.sqrt(z.var(0, ddof=1) + 1e-4))) / 2
        c = z.T @ z / (n - 1)
        covariance += sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return sim * invariance + std * variance + cov * covariance


def test_vicreg_matches_numpy():
    from fetalssl_jax.losses import vicreg_loss

    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 4)) * 0.5
    y = x + rng.normal(size=(10, 4)) * 0.3
    got = float(vicreg_loss(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), 25.0, 25.0, 1.0))
    assert got == pytest.approx(numpy_vicreg(x, y, 25.0, 25.0, 1.0), rel=1e-4)


def test_vicreg_terms_vanish_where_they_should():
    from fetalssl_jax.losses import vicreg_loss

    # decorrelated, unit-or-larger-variance, identical views: all three terms are zero
    a = np.random.default_rng(6).normal(size=(32, 6))
    q, _ = np.linalg.qr(a - a.mean(0))  # orthonormal columns in the span of zero-mean columns: zero mean
    z = q * 10.0
    zj = jnp.asarray(z, jnp.float32)
    assert float(vicreg_loss(zj, zj, 0.0, 0.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(vicreg_loss(zj, zj, 1.0, 1.0, 0.0)) == pytest.approx(0.0, abs=1e-6)
    # a collapsed branch costs the full variance term: relu(1 - sqrt(1e-4)) = 0.99, averaged over two branches
    collapsed = jnp.zeros((8, 3), jnp.float32)
    assert float(vicreg_loss(collapsed, collapsed, 0.0, 1.0, 0.0)) == pytest.approx(0.99, rel=1e-5)


def test_reconstruction_loss_is_the_pixel_mean_squared_error():
    from fetalssl_jax.losses import reconstruction_loss

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(2, 5, 5, 3)), rng.normal(size=(2, 5, 5, 3))
    want = sum((a.flat[i] - b.flat[i]) ** 2 for i in range(a.size)) / a.size
    got = float(reconstruction_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert got == pytest.approx(want, rel=1e-5)
    assert float(reconstruction_loss(jnp.asarray(a), jnp.asarray(a))) == 0.0
