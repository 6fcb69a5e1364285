"""Tests for fetalssl_jax.data.augment, checked against independent numpy computations and invariances."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetalssl_jax.data import augment as aug

MEAN = np.asarray(aug.IMAGENET_MEAN, np.float32)
STD = np.asarray(aug.IMAGENET_STD, np.float32)
# dm-pix rgb_to_grayscale (rec601) weights; torchvision uses (0.299, 0.587, 0.114).
PIX_LUMA = np.asarray([0.2989, 0.5870, 0.1140], np.float32)


def _identity_cfg(**overrides):
    """Full-image crop, no flips, no colour ops, no blur, no solarize."""
    cfg = dict(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        flip_prob=0.0,
        vflip_prob=0.0,
        color_jitter_prob=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
        solarize_prob=0.0,
    )
    cfg.update(overrides)
    return aug.default_view_config(**cfg)


@functools.cache
def _jitted(cfg_items, out_size):
    return jax.jit(functools.partial(aug.augment_batch, cfg=dict(cfg_items), out_size=out_size))


def _run(cfg, images, out_size, seed=0):
    """Jitted augment_batch for a (static) config; compiled once per (config, size, input shape)."""
    fn = _jitted(tuple(sorted(cfg.items())), out_size)
    return np.asarray(fn(jax.random.key(seed), jnp.asarray(images)))


def _unnormalise(y):
    return y * STD + MEAN


def _rand_images(shape, lo=0, hi=256, seed=0):
    return np.random.default_rng(seed).integers(lo, hi, shape, dtype=np.uint8)


def test_default_config_and_unknown_key():
    cfg = aug.default_view_config()
    assert cfg["crop_scale"] == (0.08, 1.0)
    assert cfg["blur_prob"] == 1.0 and cfg["solarize_prob"] == 0.0 and cfg["vflip_prob"] == 0.0
    assert aug.default_view_config(blur_prob=0.1)["blur_prob"] == 0.1
    with pytest.raises(ValueError, match="bogus_key"):
        aug.default_view_config(bogus_key=1)
    with pytest.raises(ValueError, match="another_bad"):
        aug.augment_view(jax.random.key(0), jnp.zeros((8, 8, 3), jnp.uint8), {"another_bad": 0}, 8)


def test_identity_matches_eval_and_numpy():
    imgs = _rand_images((3, 48, 48, 3))
    cfg = _identity_cfg()
    out = _run(cfg, imgs, 32)
    ref = np.asarray(aug.preprocess_eval(jnp.asarray(imgs), 32))
    assert out.shape == (3, 32, 32, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # Same size: bicubic at scale 1 is the identity, so it is just the normalised input.
    imgs32 = _rand_images((2, 32, 32, 3), seed=1)
    out32 = _run(cfg, imgs32, 32)
    np.testing.assert_allclose(out32, (imgs32 / 255.0 - MEAN) / STD, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(aug.preprocess_eval(jnp.asarray(imgs32), 32)), (imgs32 / 255.0 - MEAN) / STD, atol=1e-5
    )


_FLIP_BASE = aug.default_view_config(flip_prob=0.0, solarize_prob=0.5)


@pytest.mark.parametrize("flip_key", ["flip_prob", "vflip_prob"])
def test_flips_commute_with_rest_of_pipeline(flip_key):
    imgs = _rand_images((4, 40, 40, 3), seed=2)
    base = _FLIP_BASE
    out0 = _run(base, imgs, 32, seed=3)
    out1 = _run({**base, flip_key: 1.0}, imgs, 32, seed=3)
    axis = 2 if flip_key == "flip_prob" else 1
    np.testing.assert_allclose(out1, np.flip(out0, axis=axis), atol=2e-5)
    assert not np.allclose(out1, out0, atol=1e-3)


def test_solarize():
    imgs = _rand_images((2, 32, 32, 3), seed=4)
    out = _unnormalise(_run(_identity_cfg(solarize_prob=1.0), imgs, 32))
    x = imgs / 255.0
    np.testing.assert_allclose(out, np.where(x < 0.5, x, 1.0 - x), atol=1e-5)


def test_grayscale():
    imgs = _rand_images((2, 32, 32, 3), seed=5)
    out = _unnormalise(_run(_identity_cfg(grayscale_prob=1.0), imgs, 32))
    gray = (imgs / 255.0) @ PIX_LUMA
    for c in range(3):
        np.testing.assert_allclose(out[..., c], gray, atol=1e-5)


def test_brightness_is_one_multiplicative_factor_per_image():
    # Values in [0.3, 0.6] so that factors up to 1.4 never clip.
    imgs = _rand_images((8, 32, 32, 3), lo=77, hi=153, seed=6)
    cfg = _identity_cfg(color_jitter_prob=1.0, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0)
    out = _unnormalise(_run(cfg, imgs, 32))
    ratio = out / (imgs / 255.0)
    per_img = ratio.reshape(8, -1)
    np.testing.assert_allclose(per_img, np.broadcast_to(per_img[:, :1], per_img.shape), rtol=1e-4)
    factors = per_img[:, 0]
    assert np.all((factors >= 0.6 - 1e-4) & (factors <= 1.4 + 1e-4))
    assert np.ptp(factors) > 0.05  # different factor per image


def test_contrast_and_saturation_preserve_luma_statistics():
    imgs = _rand_images((4, 32, 32, 3), lo=100, hi=156, seed=7)  # mid-range: no clipping for c, s <= 1.4
    x = imgs / 255.0
    gray = x @ PIX_LUMA
    # Contrast: c * x + (1 - c) * mean(gray)  -> gray-mean preserved, deviations scaled by one c.
    cfg = _identity_cfg(color_jitter_prob=1.0, brightness=0.0, contrast=0.4, saturation=0.0, hue=0.0)
    out = _unnormalise(_run(cfg, imgs, 32))
    m = gray.mean(axis=(1, 2))
    np.testing.assert_allclose((out @ PIX_LUMA).mean(axis=(1, 2)), m, atol=1e-4)
    c = (out[..., 0] - m[:, None, None]).sum(axis=(1, 2)) / (x[..., 0] - m[:, None, None]).sum(axis=(1, 2))
    np.testing.assert_allclose(
        out, c[:, None, None, None] * x + (1 - c[:, None, None, None]) * m[:, None, None, None], atol=1e-4
    )
    assert np.all((c > 0.6 - 1e-3) & (c < 1.4 + 1e-3))
    # Saturation: s * x + (1 - s) * gray -> per-pixel gray preserved (weights sum to 0.9999).
    cfg = _identity_cfg(color_jitter_prob=1.0, brightness=0.0, contrast=0.0, saturation=0.2, hue=0.0)
    out = _unnormalise(_run(cfg, imgs, 32))
    np.testing.assert_allclose(out @ PIX_LUMA, gray, atol=1e-3)


def _np_blur(x, sigma, ksize):
    r = ksize // 2
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(t**2) / (2 * sigma**2))
    k /= k.sum()
    xp = np.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = x.shape[:2]
    tmp = sum(k[i] * xp[:, i : i + w] for i in range(ksize))
    return sum(k[i] * tmp[i : i + h] for i in range(ksize))


def test_blur():
    assert aug.blur_kernel_size(224, 0.1) == 23
    assert aug.blur_kernel_size(32, 0.1) == 3
    assert aug.blur_kernel_size(32, 0.2) == 7
    cfg = _identity_cfg(blur_prob=1.0, blur_sigma=(1.0, 1.0), blur_kernel_fraction=0.2)  # kernel 7
    # Constant image stays constant everywhere (reflect padding).
    const = np.full((1, 32, 32, 3), 137, np.uint8)
    out = _unnormalise(_run(cfg, const, 32))
    np.testing.assert_allclose(out, 137 / 255.0, atol=1e-5)
    # Delta: symmetric, sums to 1, matches a numpy separable Gaussian.
    delta = np.zeros((1, 32, 32, 3), np.uint8)
    delta[0, 15, 15, :] = 255
    full = _unnormalise(_run(cfg, delta, 32))[0]
    np.testing.assert_allclose(full, _np_blur(delta[0] / 255.0, 1.0, 7), atol=1e-5)
    out = full[:31, :31]  # centred on the delta
    np.testing.assert_allclose(out.sum(axis=(0, 1)), 1.0, atol=1e-4)
    np.testing.assert_allclose(out, out[::-1], atol=1e-6)
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-6)
    np.testing.assert_allclose(out, out.transpose(1, 0, 2), atol=1e-6)
    imgs = _rand_images((1, 32, 32, 3), seed=8)
    out = _unnormalise(_run(cfg, imgs, 32))[0]
    np.testing.assert_allclose(out, _np_blur(imgs[0] / 255.0, 1.0, 7), atol=1e-5)


def _box_uniforms(key):
    return jax.random.uniform(key, (aug.BOX_UNIFORMS,))


@pytest.mark.parametrize("hw", [(224, 224), (120, 200)])
def test_crop_box_statistics(hw):
    height, width = hw
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    keys = jax.random.split(jax.random.key(9), 4000)
    sample = jax.jit(jax.vmap(lambda k: aug.crop_box(_box_uniforms(k), height, width, scale, ratio)))
    top, left, h, w = (np.asarray(v).astype(np.float64) for v in sample(keys))
    assert np.all((h > 0) & (w > 0) & (top >= 0) & (left >= 0))
    assert np.all((top + h <= height) & (left + w <= width))
    area = height * width
    # Rounding w and h to integers moves each by at most 0.5.
    tol = (0.5 * (h + w) + 0.25) / area
    frac = h * w / area
    assert np.all(frac >= scale[0] - tol) and np.all(frac <= scale[1] + tol)
    # Largest admissible box is min(1, (4/3) H^2 / (H W)) = 0.8 of the area for 120x200.
    assert frac.min() < 0.15 and frac.max() > 0.75
    r_lo, r_hi = (w - 0.5) / (h + 0.5), (w + 0.5) / (h - 0.5)
    assert np.all(r_hi >= ratio[0]) and np.all(r_lo <= ratio[1])
    # Positions are spread over the admissible range.
    assert np.mean(top == 0) < 0.2 and np.mean(left == 0) < 0.2


def _smooth_image(size, seed=0):
    """Smooth uint8 RGB test pattern (no overshoot clipping under bicubic resampling)."""
    rng = np.random.default_rng(seed)
    i, j = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    chans = [128 + 90 * np.sin(i / 6.0 + rng.uniform(0, 6)) * np.cos(j / 9.0 + rng.uniform(0, 6)) for _ in range(3)]
    return np.stack(chans, -1).round().astype(np.uint8)


def test_eval_resize_matches_pil_bicubic():
    image = pytest.importorskip("PIL.Image")
    x = _smooth_image(48, seed=13)
    ref = np.asarray(image.fromarray(x).resize((32, 32), image.BICUBIC)) / 255.0
    out = _unnormalise(np.asarray(aug.preprocess_eval(jnp.asarray(x[None]), 32)))[0]
    np.testing.assert_allclose(out, ref, atol=1.5 / 255)  # PIL rounds to uint8


def test_random_crop_geometry():
    # scale 0.25, ratio 1 on 64x64 -> always a 32x32 box at a random integer offset in [0, 32]^2.
    x = _smooth_image(64, seed=14)
    imgs = np.repeat(x[None], 4, axis=0)
    cfg = _identity_cfg(crop_scale=(0.25, 0.25))
    windows = np.stack([x[t : t + 32, c : c + 32] for t in range(33) for c in range(33)]) / 255.0
    out = _unnormalise(_run(cfg, imgs, 32, seed=15))
    offsets = []
    for o in out:  # no resampling at scale 1: the output is exactly one window
        err = np.abs(windows - o).reshape(len(windows), -1).max(axis=1)
        assert err.min() < 1e-5
        offsets.append(int(err.argmin()))
    assert len(set(offsets)) > 1
    # Downsampling the window 2x matches PIL's antialiased bicubic of that window.
    image = pytest.importorskip("PIL.Image")
    out16 = _unnormalise(_run(cfg, imgs, 16, seed=15))
    for o, k in zip(out16, offsets, strict=True):
        t, c = divmod(k, 33)
        ref = np.asarray(image.fromarray(x).resize((16, 16), image.BICUBIC, box=(c, t, c + 32, t + 32))) / 255.0
        np.testing.assert_allclose(o, ref, atol=1.5 / 255)


def test_crop_box_fallback_is_torchvision_centre_crop():
    # Impossible scale -> all 10 tries fail -> centre crop; W/H = 200/100 = 2 > 4/3:
    # h = 100, w = round(100 * 4/3) = 133, left = (200 - 133) // 2 = 33.
    u = _box_uniforms(jax.random.key(0))
    box = [int(v) for v in aug.crop_box(u, 100, 200, (2.0, 3.0), (3 / 4, 4 / 3))]
    assert box == [0, 33, 100, 133]
    box = [int(v) for v in aug.crop_box(u, 64, 64, (2.0, 3.0), (3 / 4, 4 / 3))]
    assert box == [0, 0, 64, 64]


def test_per_sample_randomness_and_key_determinism():
    cfg = _FLIP_BASE  # same config and shapes as the flip test: no extra compile
    img = _rand_images((1, 40, 40, 3), seed=10)
    imgs = np.repeat(img, 4, axis=0)
    out = _run(cfg, imgs, 32, seed=1)
    assert np.all(np.isfinite(out))
    flat = out.reshape(4, -1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.allclose(flat[i], flat[j], atol=1e-3)
    np.testing.assert_array_equal(_run(cfg, imgs, 32, seed=1), out)
    assert not np.allclose(_run(cfg, imgs, 32, seed=2), out, atol=1e-3)


def test_grayscale_input_and_shapes():
    imgs = _rand_images((5, 48, 48, 1), seed=11)
    cfg = aug.default_view_config(color_jitter_prob=0.0)
    out = _unnormalise(_run(cfg, imgs, 32))
    assert out.shape == (5, 32, 32, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-5)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-5)
    ev = np.asarray(aug.preprocess_eval(jnp.asarray(imgs), 32))
    assert ev.shape == (5, 32, 32, 3) and ev.dtype == np.float32
    np.testing.assert_allclose((ev * STD + MEAN)[..., 0], (ev * STD + MEAN)[..., 2], atol=1e-5)


def test_jit_two_views_finite_and_in_range():
    imgs = _rand_images((4, 48, 48, 3), seed=12)
    cfg1 = aug.default_view_config()
    cfg2 = aug.default_view_config(blur_prob=0.1, solarize_prob=0.2)

    @jax.jit
    def two_views(key, x):
        k1, k2 = jax.random.split(key)
        return aug.augment_batch(k1, x, cfg1, 32), aug.augment_batch(k2, x, cfg2, 32)

    v1, v2 = (np.asarray(v) for v in two_views(jax.random.key(0), jnp.asarray(imgs)))
    for v in (v1, v2):
        assert v.shape == (4, 32, 32, 3) and v.dtype == np.float32
        assert np.all(np.isfinite(v))
        u = _unnormalise(v)
        assert u.min() >= -1e-5 and u.max() <= 1 + 1e-5
    assert not np.allclose(v1, v2, atol=1e-3)
    assert math.isfinite(float(v1.std())) and v1.std() > 0.1


# ---- ultrasound nuisances, gray-identity ops, blur sigma scaling --------------------------------------------------
def _np_compress_roundtrip(x, gain_db, dynamic_range_db=50.0):
    """Independent numpy form: display -> amplitude -> x 10^(gain/20) -> display."""
    c = 10.0 ** (dynamic_range_db / 20.0)
    amplitude = np.expm1(x * np.log1p(c)) / c
    return np.clip(np.log1p(c * amplitude * 10.0 ** (gain_db / 20.0)) / np.log1p(c), 0.0, 1.0)


def _gray_out(cfg, images, seed=0):
    return _unnormalise(_run(cfg, images, images.shape[1], seed))[..., 0]


def test_ultrasound_gain_matches_the_log_compression_formula():
    imgs = _rand_images((4, 16, 16, 1), seed=3)
    imgs[:, :4] = 0  # no echo
    for seed in range(4):
        cfg = _identity_cfg(ultrasound_prob=1.0, gain_db=6.0)
        out = _gray_out(cfg, imgs, seed)
        # The gain drawn per image is unknown to the test: the best gain on a fine grid must explain every pixel.
        for x, y in zip(imgs[..., 0] / 255.0, out, strict=True):
            errors = [np.abs(_np_compress_roundtrip(x, g) - y).max() for g in np.linspace(-6.0, 6.0, 2401)]
            assert min(errors) < 2e-3, min(errors)
        np.testing.assert_array_equal(out[:, :4], 0.0)  # black stays black


def test_ultrasound_zero_strength_is_identity_and_tgc_brightens_with_depth():
    imgs = np.full((2, 16, 16, 1), 128, np.uint8)
    off = _gray_out(_identity_cfg(ultrasound_prob=1.0), imgs)
    np.testing.assert_allclose(off, 128 / 255.0, atol=1e-5)
    for seed in range(6):
        out = _gray_out(_identity_cfg(ultrasound_prob=1.0, tgc_db=10.0), imgs, seed)
        rows = out[0].mean(1)
        assert np.all(np.diff(rows) > 0) or np.all(np.diff(rows) < 0)  # monotonic in depth, one slope per image
        # The middle of the image is where the slope pivots: gain 0 dB there (rows 7/8 straddle the centre).
        assert abs(0.5 * (rows[7] + rows[8]) - 128 / 255.0) < 0.01


def test_ultrasound_speckle_is_multiplicative_with_mean_one():
    imgs = np.full((8, 32, 32, 1), 150, np.uint8)
    imgs[:, :, :8] = 0
    out = _gray_out(_identity_cfg(ultrasound_prob=1.0, speckle=1.0), imgs)
    np.testing.assert_array_equal(out[:, :, :8], 0.0)
    assert out[:, :, 8:].std() > 0.01
    c = 10.0**2.5
    amplitude = np.expm1(out[:, :, 8:] * np.log1p(c)) / c
    base = np.expm1(150 / 255.0 * np.log1p(c)) / c
    # factor = 1 - s + s * Rayleigh(mean 1), s ~ U[0, 1] per image: mean factor 1 over many pixels
    assert abs(amplitude.mean() / base - 1.0) < 0.05


def test_gray_identity_ops_are_skipped_for_gray_input():
    imgs = _rand_images((4, 16, 16, 1), seed=5)
    cfg = _identity_cfg(color_jitter_prob=1.0, brightness=0.4, contrast=0.4)
    with_colour = dict(cfg, saturation=0.8, hue=0.2, grayscale_prob=1.0)
    np.testing.assert_array_equal(_run(cfg, imgs, 16), _run(with_colour, imgs, 16))


def test_blur_sigma_scales_with_output_size():
    imgs = _rand_images((2, 32, 32, 1), seed=7)
    fixed = _identity_cfg(blur_prob=1.0, blur_sigma=(1.0, 1.0), blur_kernel_fraction=0.2)
    scaled = _identity_cfg(
        blur_prob=1.0, blur_sigma=(2.0, 2.0), blur_kernel_fraction=0.2, blur_sigma_reference=64.0
    )  # 2 px at 64 px = 1 px at 32 px
    np.testing.assert_allclose(_run(fixed, imgs, 32), _run(scaled, imgs, 32), atol=1e-6)


@pytest.mark.parametrize(
    "key,value", [("speckle", 1.5), ("gain_db", -1.0), ("tgc_db", -2.0), ("dynamic_range_db", 0.0)]
)
def test_ultrasound_keys_are_validated(key, value):
    with pytest.raises(ValueError, match=key):
        aug.default_view_config(**{key: value})


def test_rotation_by_90_degrees_is_rot90_and_keys_validate():
    x = jnp.asarray(np.random.default_rng(0).random((7, 7, 1)), jnp.float32)
    np.testing.assert_allclose(aug.rotate(x, jnp.float32(90.0)), np.rot90(np.asarray(x), -1), atol=1e-5)  # clockwise
    np.testing.assert_allclose(aug.rotate(x, jnp.float32(0.0)), x, atol=1e-6)
    corners = aug.rotate(jnp.ones((8, 8, 1)), jnp.float32(45.0))
    assert float(corners[0, 0, 0]) == 0.0 and float(corners[4, 4, 0]) == 1.0  # zeros rotate in at the corners
    with pytest.raises(ValueError, match="rotation_deg"):
        aug.default_view_config(rotation_deg=-5.0)
