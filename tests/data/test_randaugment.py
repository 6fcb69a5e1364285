"""Tests for fetalssl_jax.data.randaugment against numpy formulas, PIL, hand-worked cases and invariances."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetalssl_jax.data import augment as aug
from fetalssl_jax.data import randaugment as ra

MEAN = np.asarray(aug.IMAGENET_MEAN, np.float32)
STD = np.asarray(aug.IMAGENET_STD, np.float32)
OP = {name: i for i, name in enumerate(ra.OP_NAMES)}
PIL_LUMA = np.asarray([0.299, 0.587, 0.114])

# One compiled program per image shape: op index and value are traced.
_apply = jax.jit(ra._apply_op)


def _op(x, name, value=0.0):
    return np.asarray(_apply(jnp.asarray(x, jnp.float32), OP[name], float(value)))


def _rand_augment(key, image, num_ops, magnitude):
    """RandAugment of ONE float image [H, W, 3] as `rand_augment_batch` draws it for a sample, without the resize,
    flips and normalisation around it."""
    return ra._rand_augment_from_uniforms(jax.random.uniform(key, (2 * num_ops,)), image, num_ops, magnitude)


def _levels_image(shape, seed=0, lo=0, hi=256):
    """Random float image on the 1/255 grid (so PIL sees exactly the same uint8 values)."""
    q = np.random.default_rng(seed).integers(lo, hi, shape, dtype=np.uint8)
    return q, (q / 255.0).astype(np.float32)


def _np_affine_nearest(x, m):
    """PIL's nearest affine transform: sample the input at ``m`` applied to output pixel centres, fill 0."""
    h, w = x.shape[:2]
    yy, xx = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    xi = np.floor(m[0] * xx + m[1] * yy + m[2]).astype(int)
    yi = np.floor(m[3] * xx + m[4] * yy + m[5]).astype(int)
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    out = np.zeros_like(x)
    out[ok] = x[yi[ok], xi[ok]]
    return out


# --------------------------------------------------------------------------------------------------
# Magnitude table
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("m", [0, 1, 5, 9, 15, 26, 30])
def test_magnitude_table_matches_torchvision(m):
    height, width = 48, 40
    bins = 31
    posterize = 8 - np.round(np.arange(bins) / ((bins - 1) / 4)).astype(int)  # torch rounds half to even too
    expected = {
        "Identity": 0.0,
        "ShearX": np.linspace(0.0, 0.3, bins)[m],
        "ShearY": np.linspace(0.0, 0.3, bins)[m],
        "TranslateX": np.linspace(0.0, 150.0 / 331.0 * width, bins)[m],
        "TranslateY": np.linspace(0.0, 150.0 / 331.0 * height, bins)[m],
        "Rotate": np.linspace(0.0, 30.0, bins)[m],
        "Brightness": np.linspace(0.0, 0.9, bins)[m],
        "Color": np.linspace(0.0, 0.9, bins)[m],
        "Contrast": np.linspace(0.0, 0.9, bins)[m],
        "Sharpness": np.linspace(0.0, 0.9, bins)[m],
        "Posterize": posterize[m],
        "Solarize": np.linspace(255.0, 0.0, bins)[m] / 255.0,  # threshold on [0, 1]
        "AutoContrast": 0.0,
        "Equalize": 0.0,
    }
    got = np.asarray(ra.op_magnitudes(m, height, width))
    np.testing.assert_allclose(got, [expected[n] for n in ra.OP_NAMES], rtol=1e-5, atol=1e-6)
    assert [n for n, s in zip(ra.OP_NAMES, ra.SIGNED_OPS, strict=True) if s] == [
        "ShearX",
        "ShearY",
        "TranslateX",
        "TranslateY",
        "Rotate",
        "Brightness",
        "Color",
        "Contrast",
        "Sharpness",
    ]


def test_argument_validation():
    x = jnp.zeros((2, 8, 8, 1), jnp.uint8)
    with pytest.raises(ValueError, match="magnitude"):
        ra.rand_augment_batch(jax.random.key(0), x, 2, 31, 8)
    with pytest.raises(ValueError, match="num_ops"):
        ra.rand_augment_batch(jax.random.key(0), x, -1, 5, 8)
    with pytest.raises(ValueError, match="hflip_prob"):
        ra.rand_augment_batch(jax.random.key(0), x, 1, 5, 8, hflip_prob=1.5)


# --------------------------------------------------------------------------------------------------
# Single ops
# --------------------------------------------------------------------------------------------------
def test_identity():
    _, x = _levels_image((32, 32, 3), seed=1)
    np.testing.assert_array_equal(_op(x, "Identity", 0.7), x)


def test_rotate():
    _, x = _levels_image((32, 32, 3), seed=2)
    # Positive angles are counter-clockwise (PIL / torchvision), like np.rot90.
    np.testing.assert_allclose(_op(x, "Rotate", 90.0), np.rot90(x, 1), atol=1e-5)
    np.testing.assert_allclose(_op(x, "Rotate", -90.0), np.rot90(x, -1), atol=1e-5)
    # 45 deg: corners come from outside the image -> fill 0; the centre stays inside.
    out = _op(np.ones_like(x), "Rotate", 45.0)
    for corner in (out[0, 0], out[0, -1], out[-1, 0], out[-1, -1]):
        np.testing.assert_array_equal(corner, 0.0)
    np.testing.assert_allclose(out[8:24, 8:24], 1.0, atol=1e-5)


def test_rotate_matches_pil():
    image = pytest.importorskip("PIL.Image")
    q, x = _levels_image((32, 32, 3), seed=3)
    for angle in (17.0, -30.0):
        ref = np.asarray(image.fromarray(q).rotate(angle, resample=image.NEAREST)) / 255.0
        out = _op(x, "Rotate", angle)
        assert np.mean(np.any(np.abs(out - ref) > 1e-6, axis=-1)) < 0.01  # only float ties at pixel edges


@pytest.mark.parametrize("t", [5, -3, 7.8])
def test_translate(t):
    _, x = _levels_image((32, 32, 3), seed=4)
    s = int(t)  # torchvision truncates the magnitude to int pixels
    expected_x = np.roll(x, s, axis=1)
    expected_y = np.roll(x, s, axis=0)
    if s > 0:
        expected_x[:, :s] = 0.0
        expected_y[:s] = 0.0
    else:
        expected_x[:, s:] = 0.0
        expected_y[s:] = 0.0
    np.testing.assert_array_equal(_op(x, "TranslateX", t), expected_x)
    np.testing.assert_array_equal(_op(x, "TranslateY", t), expected_y)


@pytest.mark.parametrize("v", [0.3, -0.17])
def test_shear_matches_numpy_and_pil(v):
    image = pytest.importorskip("PIL.Image")
    q, x = _levels_image((32, 32, 3), seed=5)
    # torchvision (PIL path): shear angle atan(v) about (0, 0) -> inverse map x_in = x + v * y.
    for name, m in (("ShearX", (1, v, 0, 0, 1, 0)), ("ShearY", (1, 0, 0, v, 1, 0))):
        out = _op(x, name, v)
        np.testing.assert_array_equal(out, _np_affine_nearest(x, m))
        ref = np.asarray(image.fromarray(q).transform((32, 32), image.AFFINE, m, resample=image.NEAREST)) / 255.0
        assert np.mean(np.any(np.abs(out - ref) > 1e-6, axis=-1)) < 0.01


def test_brightness_color_contrast():
    _, x = _levels_image((32, 32, 3), seed=6)
    gray = (x @ PIL_LUMA)[..., None]
    for v in (0.5, -0.3):
        f = 1.0 + v
        np.testing.assert_allclose(_op(x, "Brightness", v), np.clip(f * x, 0, 1), atol=1e-6)
        np.testing.assert_allclose(_op(x, "Color", v), np.clip(gray + f * (x - gray), 0, 1), atol=1e-5)
        np.testing.assert_allclose(_op(x, "Contrast", v), np.clip(gray.mean() + f * (x - gray.mean()), 0, 1), atol=1e-5)


def test_enhance_ops_match_pil():
    image = pytest.importorskip("PIL.Image")
    enhance = pytest.importorskip("PIL.ImageEnhance")
    q, x = _levels_image((32, 32, 3), seed=7)
    pil = image.fromarray(q)
    for name, cls in (("Color", enhance.Color), ("Contrast", enhance.Contrast), ("Sharpness", enhance.Sharpness)):
        for v in (0.6, -0.45):
            ref = np.asarray(cls(pil).enhance(1.0 + v)) / 255.0
            # PIL rounds its degenerate image (and, for Contrast, the mean) to uint8.
            np.testing.assert_allclose(_op(x, name, v), ref, atol=2.5 / 255)


def test_sharpness_numpy():
    _, x = _levels_image((32, 32, 3), seed=8)
    k = np.ones((3, 3)) / 13.0
    k[1, 1] = 5.0 / 13.0
    smooth = x.copy()
    smooth[1:-1, 1:-1] = sum(k[i, j] * x[i : 30 + i, j : 30 + j] for i in range(3) for j in range(3))
    f = 1.7
    np.testing.assert_allclose(_op(x, "Sharpness", f - 1.0), np.clip(smooth + f * (x - smooth), 0, 1), atol=1e-5)
    # Sharpening a constant image changes nothing.
    np.testing.assert_allclose(_op(np.full_like(x, 0.4), "Sharpness", 0.9), 0.4, atol=1e-6)


@pytest.mark.parametrize("bits", [4, 5, 6, 7, 8])
def test_posterize(bits):
    image = pytest.importorskip("PIL.Image")
    ops = pytest.importorskip("PIL.ImageOps")
    q, x = _levels_image((32, 32, 3), seed=9)
    mask = np.uint8((0xFF << (8 - bits)) & 0xFF)
    expected = ((x * 255).round().astype(np.uint8) & mask) / 255.0
    np.testing.assert_allclose(_op(x, "Posterize", bits), expected, atol=1e-6)
    pil = np.asarray(ops.posterize(image.fromarray(q), bits)) / 255.0
    np.testing.assert_allclose(_op(x, "Posterize", bits), pil, atol=1e-6)


def test_solarize():
    _, x = _levels_image((32, 32, 3), seed=10)
    for thr in (0.0, 128 / 255, 0.7, 1.0):
        np.testing.assert_allclose(_op(x, "Solarize", thr), np.where(x >= thr, 1.0 - x, x), atol=1e-6)


def test_autocontrast():
    rng = np.random.default_rng(11)
    x = np.stack([rng.uniform(0.2, 0.6, (32, 32)), rng.uniform(0.1, 0.9, (32, 32)), np.full((32, 32), 0.3)], -1)
    out = _op(x, "AutoContrast")
    for c in range(2):
        assert abs(out[..., c].min()) < 1e-6 and abs(out[..., c].max() - 1.0) < 1e-6
        lo, hi = x[..., c].min(), x[..., c].max()
        np.testing.assert_allclose(out[..., c], (x[..., c] - lo) / (hi - lo), atol=1e-5)
    np.testing.assert_allclose(out[..., 2], 0.3, atol=1e-6)  # constant channel unchanged (as PIL)


def _np_pil_equalize(q):
    """numpy port of PIL ``ImageOps.equalize`` (no mask) for uint8 [H, W, C]."""
    out = np.empty_like(q)
    for c in range(q.shape[-1]):
        h = np.bincount(q[..., c].ravel(), minlength=256)
        histo = h[h > 0]
        step = (histo.sum() - histo[-1]) // 256 if len(histo) > 1 else 0
        if step == 0:
            out[..., c] = q[..., c]
            continue
        lut, n = [], step // 2
        for i in range(256):
            lut.append(min(n // step, 255))
            n += h[i]
        out[..., c] = np.asarray(lut)[q[..., c]]
    return out


def test_equalize():
    rng = np.random.default_rng(12)
    # Skewed distributions, a different one per channel.
    q = (255 * rng.uniform(0, 1, (40, 40, 3)) ** np.asarray([2.0, 1.0, 0.5])).round().astype(np.uint8)
    x = q / 255.0
    out = _op(x, "Equalize")
    np.testing.assert_allclose(out, _np_pil_equalize(q) / 255.0, atol=1e-6)
    # Output histogram is roughly uniform: its CDF is close to the identity.
    for c in range(3):
        cdf = np.searchsorted(np.sort(out[..., c].ravel()), np.linspace(0, 1, 11), side="right") / out[..., c].size
        np.testing.assert_allclose(cdf[1:-1], np.linspace(0, 1, 11)[1:-1], atol=0.04)
    # Constant image: unchanged.
    np.testing.assert_allclose(_op(np.full((40, 40, 3), 0.5), "Equalize"), np.round(127.5) / 255.0, atol=1e-6)
    image = pytest.importorskip("PIL.Image")
    ops = pytest.importorskip("PIL.ImageOps")
    np.testing.assert_allclose(out, np.asarray(ops.equalize(image.fromarray(q))) / 255.0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# RandAugment
# --------------------------------------------------------------------------------------------------
@functools.cache
def _ra_vmapped(num_ops, magnitude):
    return jax.jit(jax.vmap(lambda k, im: _rand_augment(k, im, num_ops, magnitude)))


def test_rand_augment_zero_ops_is_identity():
    _, x = _levels_image((32, 32, 3), seed=13)
    np.testing.assert_array_equal(np.asarray(_rand_augment(jax.random.key(0), jnp.asarray(x), 0, 9)), x)


def test_rand_augment_randomness_range_and_determinism():
    _, x = _levels_image((32, 32, 3), seed=14)
    xs = jnp.asarray(np.repeat(x[None], 16, axis=0))
    keys = jax.random.split(jax.random.key(1), 16)
    fn = _ra_vmapped(2, 9)
    out = np.asarray(fn(keys, xs))
    assert out.shape == xs.shape and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    distinct = {o.tobytes() for o in out}
    assert len(distinct) >= 12  # 196 equally likely op pairs (x signs): only rare collisions
    np.testing.assert_array_equal(np.asarray(fn(keys, xs)), out)


def test_rand_augment_draws_ops_uniformly_with_signs():
    # num_ops=1: each output must equal exactly one op applied with +- its table magnitude.
    _, x = _levels_image((32, 32, 3), seed=15, lo=20, hi=230)  # not full range: AutoContrast != Identity
    mags = np.asarray(ra.op_magnitudes(9, 32, 32))
    cands = {}
    for i, name in enumerate(ra.OP_NAMES):
        for sign in (1, -1) if ra.SIGNED_OPS[i] else (1,):
            cands[(name, sign)] = _op(x, name, sign * mags[i])
    n = 420
    keys = jax.random.split(jax.random.key(2), n)
    out = np.asarray(_ra_vmapped(1, 9)(keys, jnp.asarray(np.repeat(x[None], n, axis=0))))
    counts = dict.fromkeys(cands, 0)
    names = list(cands)
    stack = np.stack([cands[k] for k in names])
    for o in out:
        err = np.sort(np.abs(stack - o).reshape(len(names), -1).max(axis=1))
        assert err[0] < 1e-5 and err[1] > 1e-3  # matches exactly one candidate (up to float fusion)
        counts[names[int(np.argmin(np.abs(stack - o).reshape(len(names), -1).max(axis=1)))]] += 1
    per_op = {name: sum(v for (nm, _), v in counts.items() if nm == name) for name in ra.OP_NAMES}
    assert all(12 <= c <= 50 for c in per_op.values()), per_op  # expected 30 each
    assert all(c > 0 for c in counts.values()), counts  # both signs of every signed op occur


def test_rand_augment_batch_shapes_and_eval_consistency():
    imgs = np.random.default_rng(16).integers(0, 256, (4, 48, 48, 1), dtype=np.uint8)
    fn = jax.jit(functools.partial(ra.rand_augment_batch, num_ops=2, magnitude=9, out_size=32))
    out = np.asarray(fn(jax.random.key(3), jnp.asarray(imgs)))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.float32
    u = out * STD + MEAN
    assert np.all(np.isfinite(u)) and u.min() >= -1e-5 and u.max() <= 1 + 1e-5
    np.testing.assert_allclose(u[..., 0], u[..., 1], atol=1e-5)  # grayscale stays grayscale
    np.testing.assert_allclose(u[..., 0], u[..., 2], atol=1e-5)
    # No ops, no flips: exactly the eval transform; forced flips: the flipped eval transform.
    ev = np.asarray(aug.preprocess_eval(jnp.asarray(imgs), 32))
    for p, expected in ((0.0, ev), (1.0, ev[:, ::-1, ::-1])):
        fn = jax.jit(
            functools.partial(ra.rand_augment_batch, num_ops=0, magnitude=9, out_size=32, hflip_prob=p, vflip_prob=p)
        )
        np.testing.assert_allclose(np.asarray(fn(jax.random.key(4), jnp.asarray(imgs))), expected, atol=1e-6)
