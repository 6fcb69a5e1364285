"""On-device SSL view augmentations in JAX (BYOL / Barlow Twins style).

uint8 frames travel to the accelerator; floats are made there. Every function here is pure, jit-able and
free of data-dependent shapes or host callbacks, so it can sit inside a jitted (sharded) train step.
Per-sample randomness comes from ``jax.random.split`` + ``jax.vmap`` (as in DeepMind's BYOL JAX code).

The pipeline of :func:`augment_view` follows torchvision's BYOL / Barlow Twins transforms::

    RandomResizedCrop(bicubic) -> HorizontalFlip -> (VerticalFlip) -> RandomApply(ColorJitter)
    -> RandomGrayscale -> RandomApply(GaussianBlur) -> RandomSolarize -> Normalize

The view config (see :func:`default_view_config`) holds plain Python numbers: it is read at trace time
(it selects which ops are traced at all and fixes the blur kernel size), so close over it or pass it as
a static argument; do not pass it as a traced pytree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import dm_pix as pix
import jax
import jax.numpy as jnp

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "augment_batch",
    "augment_view",
    "blur_kernel_size",
    "check_channels",
    "default_view_config",
    "gray_identity_ops",
    "imagenet_normalise",
    "preprocess_eval",
    "sample_crop_box",
    "to_float",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEFAULT_VIEW_CONFIG: dict[str, Any] = {
    "crop_scale": (0.08, 1.0),
    "crop_ratio": (3.0 / 4.0, 4.0 / 3.0),
    "flip_prob": 0.5,
    "color_jitter_prob": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.2,
    "hue": 0.1,
    "grayscale_prob": 0.2,
    "blur_prob": 1.0,
    "blur_sigma": (0.1, 2.0),
    "blur_kernel_fraction": 0.1,
    "solarize_prob": 0.0,
    "vflip_prob": 0.0,
    # blur_sigma is given for images of this side and scaled to the output size (0: sigma in output pixels)
    "blur_sigma_reference": 0.0,
    # Ultrasound acquisition nuisances, applied to the echo amplitude behind an assumed log compression of
    # `dynamic_range_db`: overall gain U[-gain_db, gain_db] dB, a time-gain-compensation slope
    # U[-tgc_db, tgc_db] dB from the top (near field) to the bottom of the image, and fresh multiplicative
    # speckle of strength U[0, speckle]. Black (no echo) stays black. All off by default.
    # Rotation by U[-rotation_deg, rotation_deg] about the centre (bilinear, zeros outside): the fetal heart's
    # orientation in the image follows the fetal lie, which is arbitrary.
    "rotation_prob": 0.0,
    "rotation_deg": 0.0,
    "ultrasound_prob": 0.0,
    "gain_db": 0.0,
    "tgc_db": 0.0,
    "speckle": 0.0,
    "dynamic_range_db": 50.0,
}
_PAIR_KEYS = ("crop_scale", "crop_ratio", "blur_sigma")
_PROB_KEYS = (
    "flip_prob", "vflip_prob", "color_jitter_prob", "grayscale_prob", "blur_prob", "solarize_prob", "ultrasound_prob",
    "rotation_prob",
)  # fmt: skip
# Ops that are the identity on gray frames (replicated to 3 equal channels): skipped for 1-channel input.
GRAY_IDENTITY_OPS = ("saturation", "hue", "grayscale_prob")

# Number of candidate boxes drawn by the vectorised RandomResizedCrop (torchvision tries 10 times).
_CROP_TRIES = 10
_CROP_NUM_UNIFORMS = 2 * _CROP_TRIES + 2  # area, log-ratio per try; top, left
# All per-view randomness comes from ONE vector of U[0, 1) draws with a fixed layout (one threefry call
# instead of ~20 keeps compile time down; the fixed layout means toggling one op in the config leaves
# every other draw unchanged).
_U_CROP = slice(0, _CROP_NUM_UNIFORMS)
_U_FLIP, _U_VFLIP, _U_JITTER, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLARIZE = range(
    _CROP_NUM_UNIFORMS, _CROP_NUM_UNIFORMS + 7
)
_U_JITTER_FACTORS = slice(_CROP_NUM_UNIFORMS + 7, _CROP_NUM_UNIFORMS + 11)  # brightness, contrast, sat, hue
_U_JITTER_ORDER = slice(_CROP_NUM_UNIFORMS + 11, _CROP_NUM_UNIFORMS + 15)  # argsort -> random permutation
_U_US = slice(_CROP_NUM_UNIFORMS + 15, _CROP_NUM_UNIFORMS + 19)  # apply?, gain, TGC slope, speckle strength
_U_ROTATE = slice(_CROP_NUM_UNIFORMS + 19, _CROP_NUM_UNIFORMS + 21)  # apply?, angle
_NUM_UNIFORMS = _CROP_NUM_UNIFORMS + 21


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
def default_view_config(**overrides: Any) -> dict:
    """Return a view config with Barlow Twins view-1 defaults, updated with ``overrides``.

    Keys: ``crop_scale, crop_ratio, flip_prob, color_jitter_prob, brightness, contrast, saturation, hue,
    grayscale_prob, blur_prob, blur_sigma, blur_kernel_fraction, solarize_prob, vflip_prob``.
    (Barlow Twins view 2 is ``default_view_config(blur_prob=0.1, solarize_prob=0.2)``.)

    Raises:
        ValueError: if an override key is unknown (the message names it) or a value is out of range.
    """
    return _resolve_config(overrides)


def _resolve_config(cfg: Mapping) -> dict:
    """Merge ``cfg`` over the defaults, validate it and convert values to static Python floats."""
    unknown = sorted(set(cfg) - set(_DEFAULT_VIEW_CONFIG))
    if unknown:
        raise ValueError(
            f"Unknown view-config key(s): {', '.join(map(repr, unknown))}. "
            f"Valid keys: {', '.join(sorted(_DEFAULT_VIEW_CONFIG))}."
        )
    out = dict(_DEFAULT_VIEW_CONFIG)
    out.update(cfg)
    try:
        for k in _PAIR_KEYS:
            lo, hi = out[k]
            out[k] = (float(lo), float(hi))
            if lo > hi:
                raise ValueError(f"View-config {k!r} must be (low, high) with low <= high, got {out[k]}.")
        for k in (
            *_PROB_KEYS, "brightness", "contrast", "saturation", "hue", "blur_kernel_fraction", "blur_sigma_reference",
            "gain_db", "tgc_db", "speckle", "dynamic_range_db", "rotation_deg",
        ):  # fmt: skip
            out[k] = float(out[k])
    except jax.errors.ConcretizationTypeError as e:  # pragma: no cover - message only
        raise ValueError("View-config values must be static Python numbers, not traced arrays.") from e
    for k in _PROB_KEYS:
        if not 0.0 <= out[k] <= 1.0:
            raise ValueError(f"View-config {k!r} must be a probability in [0, 1], got {out[k]}.")
    for k in ("brightness", "contrast", "saturation"):
        if out[k] < 0.0:
            raise ValueError(f"View-config {k!r} must be >= 0, got {out[k]}.")
    if not 0.0 <= out["hue"] <= 0.5:
        raise ValueError(f"View-config 'hue' must be in [0, 0.5], got {out['hue']}.")
    if out["crop_scale"][0] <= 0.0 or out["crop_ratio"][0] <= 0.0:
        raise ValueError("View-config 'crop_scale' and 'crop_ratio' must be positive.")
    if out["blur_sigma"][0] <= 0.0:
        raise ValueError("View-config 'blur_sigma' must be positive.")
    for k in ("blur_sigma_reference", "gain_db", "tgc_db", "rotation_deg"):
        if out[k] < 0.0:
            raise ValueError(f"View-config {k!r} must be >= 0, got {out[k]}.")
    if not 0.0 <= out["speckle"] <= 1.0:
        raise ValueError(f"View-config 'speckle' must be in [0, 1], got {out['speckle']}.")
    if out["dynamic_range_db"] <= 0.0:
        raise ValueError(f"View-config 'dynamic_range_db' must be > 0, got {out['dynamic_range_db']}.")
    return out


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------
def to_float(image: jax.Array) -> jax.Array:
    """uint8 (or any integer) -> float32 in [0, 1]; float inputs are assumed to be in [0, 1] already."""
    if jnp.issubdtype(image.dtype, jnp.integer):
        return image.astype(jnp.float32) / 255.0
    return image.astype(jnp.float32)


def check_channels(c: int) -> None:
    """ValueError unless `c` (the channels-last size) is 1 or 3."""
    if c not in (1, 3):
        raise ValueError(f"Images must have 1 or 3 channels (channels-last), got {c}.")


def to_rgb(x: jax.Array) -> jax.Array:
    """Replicate a single channel to 3 (static shape decision)."""
    if x.shape[-1] == 1:
        return jnp.repeat(x, 3, axis=-1)
    return x


def imagenet_normalise(x: jax.Array) -> jax.Array:
    """RGB in [0, 1] -> standardised with the ImageNet mean and std (what the ResNets expect)."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (x - mean) / std


def _gray(x: jax.Array) -> jax.Array:
    """Luma with dm-pix rec601 weights (0.2989, 0.5870, 0.1140), shape [..., H, W, 1]."""
    return pix.rgb_to_grayscale(x)


def _affine(u: jax.Array, lo: float, hi: float) -> jax.Array:
    """Map U[0, 1) draws to U[lo, hi)."""
    return lo + (hi - lo) * u


def blur_kernel_size(out_size: int, fraction: float) -> int:
    """Static odd Gaussian kernel size ``~ fraction * out_size``, at least 3 (23 for 224 px at 0.1)."""
    k = int(round(fraction * out_size))
    if k % 2 == 0:
        k += 1
    return max(3, k)


# --------------------------------------------------------------------------------------------------
# Random resized crop
# --------------------------------------------------------------------------------------------------
def sample_crop_box(
    key: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Sample a crop box like torchvision ``RandomResizedCrop.get_params``, vectorised.

    Draws 10 candidates (area fraction ~ U[scale], aspect ratio log-uniform in ``ratio``, integer sizes by
    rounding), takes the first one that fits inside the image and places it uniformly at random; if none
    fits, falls back to torchvision's centre crop (whole image, aspect clamped to ``ratio``).

    Args:
        key: PRNG key.
        height, width: static image size.
        scale: (min, max) fraction of the image area.
        ratio: (min, max) aspect ratio ``w / h``.

    Returns:
        ``(top, left, h, w)`` as int32 scalars (traceable; vmap over ``key`` for a batch).
    """
    u = jax.random.uniform(key, (_CROP_NUM_UNIFORMS,), jnp.float32)
    return _crop_box_from_uniforms(u, height, width, scale, ratio)


def _crop_box_from_uniforms(
    u: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`sample_crop_box` from ``_CROP_NUM_UNIFORMS`` U[0, 1) draws (one threefry call per sample)."""
    height, width = int(height), int(width)
    area = float(height * width)
    n = _CROP_TRIES
    target_area = area * _affine(u[:n], scale[0], scale[1])
    aspect = jnp.exp(_affine(u[n : 2 * n], math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    idx = jnp.argmax(valid)  # first valid candidate (0 if none, masked below)
    any_valid = jnp.any(valid)
    h_s, w_s = h[idx], w[idx]
    # Uniform integer offsets in [0, H - h] / [0, W - w] (like torch.randint(0, H - h + 1)).
    u_top, u_left = u[2 * n], u[2 * n + 1]
    top_s = jnp.minimum(jnp.floor(u_top * (height - h_s + 1).astype(jnp.float32)).astype(jnp.int32), height - h_s)
    left_s = jnp.minimum(jnp.floor(u_left * (width - w_s + 1).astype(jnp.float32)).astype(jnp.int32), width - w_s)

    # Fallback centre crop (static: depends only on the static size and ratio).
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    f_top, f_left = (height - fh) // 2, (width - fw) // 2

    top = jnp.where(any_valid, top_s, f_top).astype(jnp.int32)
    left = jnp.where(any_valid, left_s, f_left).astype(jnp.int32)
    h_out = jnp.where(any_valid, h_s, fh).astype(jnp.int32)
    w_out = jnp.where(any_valid, w_s, fw).astype(jnp.int32)
    return top, left, h_out, w_out


def _crop_and_resize(
    x: jax.Array, top: jax.Array, left: jax.Array, h: jax.Array, w: jax.Array, out_size: int
) -> jax.Array:
    """Resample box ``[top:top+h, left:left+w]`` of float [H, W, C] to [out, out, C] (bicubic, antialias)."""
    top, left, h, w = (jnp.asarray(v, jnp.float32) for v in (top, left, h, w))
    sy = out_size / h
    sx = out_size / w
    scale = jnp.stack([sy, sx])
    translation = jnp.stack([-top * sy, -left * sx])
    out = jax.image.scale_and_translate(
        x,
        (out_size, out_size, x.shape[-1]),
        (0, 1),
        scale,
        translation,
        method="cubic",
        antialias=True,
    )
    return jnp.clip(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# Colour ops (torchvision ColorJitter semantics), all on float [H, W, 3] in [0, 1]
# --------------------------------------------------------------------------------------------------
def _adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(x * factor, 0.0, 1.0)


def _adjust_contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    mean = jnp.mean(_gray(x))
    return jnp.clip(factor * x + (1.0 - factor) * mean, 0.0, 1.0)


def _adjust_saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
    return jnp.clip(factor * x + (1.0 - factor) * _gray(x), 0.0, 1.0)


def _adjust_hue(x: jax.Array, delta: jax.Array) -> jax.Array:
    return jnp.clip(pix.adjust_hue(x, delta), 0.0, 1.0)


def _color_jitter(u_factors: jax.Array, u_order: jax.Array, x: jax.Array, cfg: Mapping) -> jax.Array:
    """ColorJitter with the ops in a random order; ops with zero strength are left out statically.

    Factors as torchvision: brightness / contrast / saturation ~ U[max(0, 1 - s), 1 + s], hue ~ U[-h, h].
    ``u_factors`` and ``u_order`` are 4 U[0, 1) draws each.
    """
    ops = []
    factors = []
    for i, (name, fn) in enumerate(
        (("brightness", _adjust_brightness), ("contrast", _adjust_contrast), ("saturation", _adjust_saturation))
    ):
        s = cfg[name]
        if s > 0.0:
            ops.append(fn)
            factors.append(_affine(u_factors[i], max(0.0, 1.0 - s), 1.0 + s))
    if cfg["hue"] > 0.0:
        ops.append(_adjust_hue)
        factors.append(_affine(u_factors[3], -cfg["hue"], cfg["hue"]))
    n = len(ops)
    if n == 0:
        return x
    if n == 1:
        return ops[0](x, factors[0])
    order = jnp.argsort(u_order[:n])  # uniformly random permutation of the n ops

    # Per step, evaluate every op and pick the one at this position with a dynamic index. (Under vmap a
    # lax.switch / select_n chain lets XLA:CPU re-fuse the hue op into every later step and is ~30x slower;
    # stacking materialises each step once.)
    # A fori_loop (not a Python loop) keeps the traced graph, and so compile time, 4x smaller.
    def step(pos, y):
        outs = jnp.stack([fn(y, f) for fn, f in zip(ops, factors, strict=True)])
        return outs[order[pos]]

    return jax.lax.fori_loop(0, n, step, x)


def _gaussian_blur(x: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of float [H, W, C], reflect padding (like torchvision), static odd kernel.

    Same kernel as ``pix.gaussian_blur`` (``exp(-t^2 / 2 sigma^2)``, normalised), written as a sum of
    shifted slices: with a per-sample (vmapped) sigma, dm-pix's depthwise conv becomes a grouped conv with
    batched kernels, which is ~20x slower on CPU; the shifted sum fuses into one elementwise pass.
    """
    r = kernel_size // 2
    height, width = x.shape[0], x.shape[1]
    if r >= min(height, width):
        raise ValueError(f"Blur kernel {kernel_size} too large for a {height}x{width} image.")
    t = jnp.arange(-r, r + 1, dtype=jnp.float32)
    w = jnp.exp(-(t**2) / (2.0 * jnp.asarray(sigma, jnp.float32) ** 2))
    w = w / jnp.sum(w)
    xp = jnp.pad(x, ((r, r), (r, r), (0, 0)), mode="reflect")
    tmp = sum(w[i] * xp[:, i : i + width] for i in range(kernel_size))
    return sum(w[i] * tmp[i : i + height] for i in range(kernel_size))


def _ultrasound(u: jax.Array, key: jax.Array, x: jax.Array, cfg: Mapping) -> jax.Array:
    """Gain, TGC and speckle on a gray float image [H, W, 1] in [0, 1] (display units).

    Display values are taken as log-compressed echo amplitude, d = log(1 + c a) / log(1 + c) with c the linear
    dynamic range; the nuisances multiply the amplitude a, as the scanner's gain, its depth-dependent TGC and a
    new speckle realisation would, and the result is compressed back. So a gain change shifts mid-grey tissue
    more than it lifts near-black fluid, and no-echo pixels (outside the sector) stay 0.
    """
    c = 10.0 ** (cfg["dynamic_range_db"] / 20.0)
    big_l = math.log1p(c)
    amplitude = jnp.expm1(x * big_l) / c
    depth = (jnp.arange(x.shape[0], dtype=jnp.float32)[:, None, None] + 0.5) / x.shape[0] - 0.5  # -0.5 .. 0.5
    gain_db = _affine(u[1], -cfg["gain_db"], cfg["gain_db"]) + _affine(u[2], -cfg["tgc_db"], cfg["tgc_db"]) * depth
    amplitude = amplitude * 10.0 ** (gain_db / 20.0)
    if cfg["speckle"] > 0.0:
        # Rayleigh amplitude with mean 1 (fully developed speckle), blended in with a random strength.
        rayleigh = jnp.sqrt(-2.0 * jnp.log1p(-jax.random.uniform(key, x.shape))) / math.sqrt(math.pi / 2.0)
        strength = u[3] * cfg["speckle"]
        amplitude = amplitude * (1.0 - strength + strength * rayleigh)
    return jnp.clip(jnp.log1p(c * amplitude) / big_l, 0.0, 1.0)


def _rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotates float [H, W, C] by `degrees` about its centre (clockwise as displayed); bilinear, 0 outside."""
    height, width = x.shape[0], x.shape[1]
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rows, cols = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    # Output pixel (r, c) samples the input at the inverse rotation of its offset from the centre.
    src_r = cy + cos * (rows - cy) - sin * (cols - cx)
    src_c = cx + sin * (rows - cy) + cos * (cols - cx)
    channels = [
        jax.scipy.ndimage.map_coordinates(x[..., k], [src_r, src_c], order=1, mode="constant", cval=0.0)
        for k in range(x.shape[-1])
    ]
    return jnp.stack(channels, axis=-1)


def _maybe(u: jax.Array, prob: float, fn, x: jax.Array) -> jax.Array:
    """Apply ``fn`` iff ``u < prob`` (u ~ U[0, 1)); static 0 / 1 short-cuts, a select otherwise (vmap-friendly)."""
    if prob <= 0.0:
        return x
    if prob >= 1.0:
        return fn(x)
    return jnp.where(u < prob, fn(x), x)


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------
def augment_view(key: jax.Array, image: jax.Array, cfg: Mapping, out_size: int) -> jax.Array:
    """One augmented view of ONE image.

    Args:
        key: PRNG key for this sample.
        image: uint8 ``[H, W, C]`` with C = 1 or 3 (grayscale is replicated to 3 channels). Float input is
            accepted and assumed to be in [0, 1].
        cfg: view config (see :func:`default_view_config`); missing keys take the defaults, unknown keys
            raise ``ValueError``. Values must be static Python numbers.
        out_size: static output side length.

    Returns:
        float32 ``[out_size, out_size, 3]``, ImageNet-normalised.

    Order (torchvision BYOL / Barlow Twins, with the ultrasound nuisances first): random resized crop
    (bicubic, antialiased) -> rotation with prob -> gain / TGC / speckle with prob (gray input only) -> h-flip
    -> v-flip -> colour jitter (random op order) with prob -> grayscale with prob -> Gaussian blur with prob ->
    solarize (threshold 0.5) with prob -> normalise. On gray (1-channel) input, saturation, hue and grayscale
    are skipped: they are the identity on three equal channels (see :func:`gray_identity_ops`).
    """
    cfg = _resolve_config(cfg)
    if image.ndim != 3:
        raise ValueError(f"augment_view expects one image [H, W, C], got shape {image.shape}.")
    height, width, c = image.shape
    check_channels(c)
    out_size = int(out_size)
    if c == 1:
        cfg = {**cfg, "saturation": 0.0, "hue": 0.0, "grayscale_prob": 0.0}
    key, speckle_key = jax.random.split(key) if cfg["speckle"] > 0.0 and c == 1 else (key, key)
    u = jax.random.uniform(key, (_NUM_UNIFORMS,), jnp.float32)

    top, left, h, w = _crop_box_from_uniforms(u[_U_CROP], height, width, cfg["crop_scale"], cfg["crop_ratio"])
    x = _crop_and_resize(to_float(image), top, left, h, w, out_size)
    u_rot = u[_U_ROTATE]
    angle = _affine(u_rot[1], -cfg["rotation_deg"], cfg["rotation_deg"])
    x = _maybe(u_rot[0], cfg["rotation_prob"], lambda y: _rotate(y, angle), x)
    if c == 1:
        u_us = u[_U_US]
        x = _maybe(u_us[0], cfg["ultrasound_prob"], lambda y: _ultrasound(u_us, speckle_key, y, cfg), x)
    x = to_rgb(x)

    x = _maybe(u[_U_FLIP], cfg["flip_prob"], pix.flip_left_right, x)
    x = _maybe(u[_U_VFLIP], cfg["vflip_prob"], pix.flip_up_down, x)
    x = _maybe(
        u[_U_JITTER],
        cfg["color_jitter_prob"],
        lambda y: _color_jitter(u[_U_JITTER_FACTORS], u[_U_JITTER_ORDER], y, cfg),
        x,
    )
    x = _maybe(u[_U_GRAY], cfg["grayscale_prob"], lambda y: jnp.repeat(_gray(y), 3, axis=-1), x)
    if cfg["blur_prob"] > 0.0:
        ks = blur_kernel_size(out_size, cfg["blur_kernel_fraction"])
        sigma = _affine(u[_U_SIGMA], *cfg["blur_sigma"])
        if cfg["blur_sigma_reference"] > 0.0:
            sigma = sigma * (out_size / cfg["blur_sigma_reference"])
        x = _maybe(u[_U_BLUR], cfg["blur_prob"], lambda y: _gaussian_blur(y, sigma, ks), x)
    x = _maybe(u[_U_SOLARIZE], cfg["solarize_prob"], lambda y: pix.solarize(y, 0.5), x)
    return imagenet_normalise(x)


def gray_identity_ops(cfg: Mapping) -> list[str]:
    """The keys of `cfg` that ask for an op that does nothing on gray frames (and is skipped for them)."""
    cfg = _resolve_config(cfg)
    return [k for k in GRAY_IDENTITY_OPS if cfg[k] > 0.0]


def augment_batch(key: jax.Array, images: jax.Array, cfg: Mapping, out_size: int) -> jax.Array:
    """Augment a batch: uint8 ``[B, H, W, C]`` -> float32 ``[B, out_size, out_size, 3]``.

    Each sample gets its own key (``jax.random.split(key, B)``) and :func:`augment_view` is vmapped.
    For two SSL views call it twice with independent keys (and the two view configs).
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects [B, H, W, C], got shape {images.shape}.")
    cfg = _resolve_config(cfg)
    keys = jax.random.split(key, images.shape[0])
    return jax.vmap(lambda k, im: augment_view(k, im, cfg, out_size))(keys, images)


def preprocess_eval(images: jax.Array, out_size: int) -> jax.Array:
    """Deterministic eval preprocessing: uint8 ``[B, H, W, C]`` -> float32 ``[B, out, out, 3]``.

    Resizes the whole frame to ``out_size x out_size`` (bicubic, antialiased; aspect not preserved),
    clips to [0, 1], replicates grayscale to 3 channels and ImageNet-normalises.
    """
    if images.ndim != 4:
        raise ValueError(f"preprocess_eval expects [B, H, W, C], got shape {images.shape}.")
    b, _, _, c = images.shape
    check_channels(c)
    x = to_float(images)
    # At the size already the resize is the identity: skipped (which lets the ONNX export trace a symbolic batch).
    if tuple(images.shape[1:3]) != (out_size, out_size):
        x = jax.image.resize(x, (b, out_size, out_size, c), method="cubic", antialias=True)
    x = jnp.clip(x, 0.0, 1.0)
    return imagenet_normalise(to_rgb(x))
