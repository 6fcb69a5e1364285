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

from fetalssl_jax.validation import MISSING, Checks, is_number

__all__ = [
    "BOX_UNIFORMS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "acquisition_shift",
    "adjust_brightness",
    "augment_batch",
    "augment_view",
    "blur_kernel_size",
    "check_channels",
    "crop_and_resize",
    "crop_box",
    "default_view_config",
    "imagenet_normalise",
    "preprocess_eval",
    "random_box",
    "resize_to_rgb",
    "rotate",
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
_GRAY_IDENTITY_OPS = ("saturation", "hue", "grayscale_prob")

# Candidate boxes of torchvision's RandomResizedCrop and RandomErasing (both try 10 times).
_BOX_TRIES = 10
BOX_UNIFORMS = 2 * _BOX_TRIES + 2  # area, log-ratio per try; top, left
# All per-view randomness comes from ONE vector of U[0, 1) draws with a fixed layout (one threefry call
# instead of ~20 keeps compile time down; the fixed layout means toggling one op in the config leaves
# every other draw unchanged).
_U_CROP = slice(0, BOX_UNIFORMS)
_U_FLIP, _U_VFLIP, _U_JITTER, _U_GRAY, _U_BLUR, _U_SIGMA, _U_SOLARIZE = range(BOX_UNIFORMS, BOX_UNIFORMS + 7)
_U_JITTER_FACTORS = slice(BOX_UNIFORMS + 7, BOX_UNIFORMS + 11)  # brightness, contrast, sat, hue
_U_JITTER_ORDER = slice(BOX_UNIFORMS + 11, BOX_UNIFORMS + 15)  # argsort -> random permutation
_U_US = slice(BOX_UNIFORMS + 15, BOX_UNIFORMS + 19)  # apply?, gain, TGC slope, speckle strength
_U_ROTATE = slice(BOX_UNIFORMS + 19, BOX_UNIFORMS + 21)  # apply?, angle
_NUM_UNIFORMS = BOX_UNIFORMS + 21


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


_FLOAT_KEYS = (
    *_PROB_KEYS, "brightness", "contrast", "saturation", "hue", "blur_kernel_fraction", "blur_sigma_reference",
    "gain_db", "tgc_db", "speckle", "dynamic_range_db", "rotation_deg",
)  # fmt: skip


def _requirement(key: str, value: Any) -> str | None:
    """What `value` of view key `key` fails to be, or None when it is valid."""
    if key in _PAIR_KEYS:
        ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(is_number(v) for v in value)
        if not ok or value[0] > value[1]:
            return "must be (low, high) with low <= high"
        return None if value[0] > 0 else "must be positive"
    if not is_number(value):
        return "must be a number"
    if key in _PROB_KEYS:
        return None if 0 <= value <= 1 else "must be a probability in [0, 1]"
    bounds = {"hue": (0.0, 0.5), "speckle": (0.0, 1.0)}
    if key in bounds:
        lo, hi = bounds[key]
        return None if lo <= value <= hi else f"must be in [{lo}, {hi}]"
    if key == "dynamic_range_db":
        return None if value > 0 else "must be > 0"
    return None if value >= 0 else "must be >= 0"


def view_problems(cfg: Mapping) -> list[tuple[str, Any, str]]:
    """(key, value, requirement) of every key of a view config that no view can use (unknown keys included)."""
    problems = []
    for key, value in cfg.items():
        if key not in _DEFAULT_VIEW_CONFIG:
            problems.append((key, value, f"unknown view key; valid keys: {', '.join(sorted(_DEFAULT_VIEW_CONFIG))}"))
        elif (requirement := _requirement(key, value)) is not None:
            problems.append((key, value, requirement))
    return problems


def check_view(c: Checks, key: str) -> None:
    """Adds the problems of the view config at `key` (e.g. 'augment.view1') to `c`, one per bad key."""
    view = c.get(key)
    if view is not MISSING:
        for name, value, requirement in view_problems(dict(view)):
            c.fail(f"{key}.{name}", value, requirement)


def _resolve_config(cfg: Mapping) -> dict:
    """Merge ``cfg`` over the defaults, validate it and convert values to static Python floats."""
    problems = view_problems(cfg)
    if problems:
        key, value, requirement = problems[0]
        raise ValueError(f"view config {key!r} = {value!r}: {requirement}")
    out = {**_DEFAULT_VIEW_CONFIG, **cfg}
    for k in _PAIR_KEYS:
        out[k] = (float(out[k][0]), float(out[k][1]))
    for k in _FLOAT_KEYS:
        out[k] = float(out[k])
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
# Boxes: random resized crop and random erasing
# --------------------------------------------------------------------------------------------------
def random_box(
    u: jax.Array,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    erase: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision's box draw from `BOX_UNIFORMS` U[0, 1) draws (area and log-aspect per try; top, left).

    10 tries of area ~ U[scale] x H x W and an aspect log-uniform in `ratio`, sides rounded; the first try that
    fits is placed uniformly at random. `RandomResizedCrop.get_params` (`erase` False): aspect w / h, fits when
    0 < h <= H and 0 < w <= W. `RandomErasing.get_params` (`erase` True): aspect h / w, fits when h < H and w < W.

    Returns:
        ``(top, left, h, w, found)``: int32 scalars and a bool (False: no try fits).
    """
    height, width = int(height), int(width)
    area = float(height * width)
    n = _BOX_TRIES
    target_area = area * _affine(u[:n], scale[0], scale[1])
    aspect = jnp.exp(_affine(u[n : 2 * n], math.log(ratio[0]), math.log(ratio[1])))
    side_a = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
    side_b = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
    if erase:
        h, w = side_a, side_b
        fits = (h < height) & (w < width)
    else:
        w, h = side_a, side_b
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    idx = jnp.argmax(fits)  # first fitting try (0 if none)
    h, w = h[idx], w[idx]
    # Uniform integer offsets in [0, H - h] / [0, W - w] (like torch.randint(0, H - h + 1)).
    top = jnp.minimum(jnp.floor(u[2 * n] * (height - h + 1).astype(jnp.float32)).astype(jnp.int32), height - h)
    left = jnp.minimum(jnp.floor(u[2 * n + 1] * (width - w + 1).astype(jnp.float32)).astype(jnp.int32), width - w)
    return top, left, h, w, jnp.any(fits)


def crop_box(
    u: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision's `RandomResizedCrop.get_params` from `BOX_UNIFORMS` draws: `random_box`, or where no try fits,
    torchvision's centre crop (whole image, aspect w / h clamped to `ratio`). ``(top, left, h, w)``, int32."""
    height, width = int(height), int(width)
    top_s, left_s, h_s, w_s, any_valid = random_box(u, height, width, scale, ratio)

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


def crop_and_resize(
    x: jax.Array, top: jax.Array, left: jax.Array, h: jax.Array, w: jax.Array, out_size: int
) -> jax.Array:
    """Resample box ``[top:top+h, left:left+w]`` of float [H, W, C] to [out, out, C] (bicubic, antialias); the part
    of a box outside the image is black."""
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
def adjust_brightness(x: jax.Array, factor: jax.Array) -> jax.Array:
    """`x` times `factor`, clipped to [0, 1] (torchvision's and PIL's brightness)."""
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
        (("brightness", adjust_brightness), ("contrast", _adjust_contrast), ("saturation", _adjust_saturation))
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

    # Per step, evaluate every op and pick the one at this position with a dynamic index; a fori_loop keeps the
    # traced graph small (why not lax.switch: docs/design.md, "On-device augmentations are written for XLA:CPU").
    def step(pos, y):
        outs = jnp.stack([fn(y, f) for fn, f in zip(ops, factors, strict=True)])
        return outs[order[pos]]

    return jax.lax.fori_loop(0, n, step, x)


def _gaussian_blur(x: jax.Array, sigma: jax.Array, kernel_size: int) -> jax.Array:
    """Separable Gaussian blur of float [H, W, C], reflect padding (like torchvision), static odd kernel.

    Same kernel as ``pix.gaussian_blur`` (``exp(-t^2 / 2 sigma^2)``, normalised), written as a sum of
    shifted slices, which fuse into one elementwise pass: with a per-sample (vmapped) sigma, dm-pix's depthwise
    conv becomes a grouped conv with batched kernels, slow on CPU (docs/design.md).
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


def acquisition_shift(
    x: jax.Array, gain_db: float = 0.0, tgc_db: float = 0.0, speckle: float = 0.0, key: jax.Array | None = None,
    dynamic_range_db: float = 50.0,
) -> jax.Array:  # fmt: skip
    """The ultrasound nuisances of `_ultrasound` at given strengths, on a gray float image [H, W, 1] in [0, 1]: an
    overall gain of `gain_db`, a TGC slope of `tgc_db` from the top to the bottom (0 dB at the middle row), and
    fresh speckle of strength `speckle` in [0, 1] (drawn with `key`), on the echo amplitude behind the log
    compression."""
    cfg = {"gain_db": abs(gain_db), "tgc_db": abs(tgc_db), "speckle": float(speckle),
           "dynamic_range_db": dynamic_range_db}  # fmt: skip
    # the draws that put `_ultrasound`'s uniform ranges [-g, g], [-t, t] and [0, s] at exactly g, t and s
    u = jnp.asarray([1.0, float(gain_db >= 0), float(tgc_db >= 0), 1.0], jnp.float32)
    if speckle > 0 and key is None:
        raise ValueError("speckle needs a key")
    return _ultrasound(u, key, x, cfg)


def rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
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
    are skipped: they are the identity on three equal channels.
    """
    cfg = _resolve_config(cfg)
    if image.ndim != 3:
        raise ValueError(f"augment_view expects one image [H, W, C], got shape {image.shape}.")
    height, width, c = image.shape
    check_channels(c)
    out_size = int(out_size)
    if c == 1:
        cfg = {**cfg, **dict.fromkeys(_GRAY_IDENTITY_OPS, 0.0)}
    key, speckle_key = jax.random.split(key) if cfg["speckle"] > 0.0 and c == 1 else (key, key)
    u = jax.random.uniform(key, (_NUM_UNIFORMS,), jnp.float32)

    top, left, h, w = crop_box(u[_U_CROP], height, width, cfg["crop_scale"], cfg["crop_ratio"])
    x = crop_and_resize(to_float(image), top, left, h, w, out_size)
    u_rot = u[_U_ROTATE]
    angle = _affine(u_rot[1], -cfg["rotation_deg"], cfg["rotation_deg"])
    x = _maybe(u_rot[0], cfg["rotation_prob"], lambda y: rotate(y, angle), x)
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
    return imagenet_normalise(resize_to_rgb(images, out_size))


def resize_to_rgb(images: jax.Array, out_size: int) -> jax.Array:
    """uint8 ``[B, H, W, C]`` -> float32 ``[B, out, out, 3]`` in [0, 1]: the whole frame resized (bicubic,
    antialiased; aspect not preserved), clipped, grayscale replicated to 3 channels."""
    b, _, _, c = images.shape
    check_channels(c)
    x = to_float(images)
    # At the size already the resize is the identity: skipped (which lets the ONNX export trace a symbolic batch).
    if tuple(images.shape[1:3]) != (out_size, out_size):
        x = jax.image.resize(x, (b, out_size, out_size, c), method="cubic", antialias=True)
    return to_rgb(jnp.clip(x, 0.0, 1.0))
