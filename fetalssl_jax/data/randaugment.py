"""On-device RandAugment in JAX with torchvision's semantics: ``RandAugment(num_ops, magnitude,
num_magnitude_bins=31)`` as applied to a PIL image (the reference resizes a PIL frame and augments it before
``ToTensor``).

``num_ops`` ops are drawn uniformly with replacement from the 14 of :data:`OP_NAMES`; signed ops flip their
magnitude with probability 1/2. Geometry uses PIL's conventions (pixel centres at ``i + 0.5``, nearest
resampling, shear about the top-left corner, rotation about the image centre, counter-clockwise for positive
angles, fill 0). The image stays float in [0, 1]; it is quantised to 256 levels only where an op is defined on
levels (Posterize, Equalize), and Contrast uses the float mean of the luma instead of PIL's rounded mean.
Pure and jit-able; ``num_ops`` and ``magnitude`` are read at trace time (pass Python numbers).
"""

from __future__ import annotations

import dm_pix as pix
import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import adjust_brightness, imagenet_normalise, resize_to_rgb

__all__ = ["NUM_MAGNITUDE_BINS", "OP_NAMES", "SIGNED_OPS", "op_magnitudes", "rand_augment_batch"]

NUM_MAGNITUDE_BINS = 31
_MAX_BIN = NUM_MAGNITUDE_BINS - 1

# Same order as torchvision's ``RandAugment._augmentation_space`` (the op index is drawn over this list).
OP_NAMES = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
SIGNED_OPS = tuple(
    name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness")
    for name in OP_NAMES
)
_NUM_OPS = len(OP_NAMES)
_GEOMETRIC = (1, 2, 3, 4, 5)

# PIL's ``convert("L")`` weights (ImageEnhance.Color / Contrast build their degenerate image with it).
_PIL_LUMA = (0.299, 0.587, 0.114)

# Candidate images computed by one op step; op index -> candidate. All five geometric ops share ONE warp
# (their inverse matrices are selected first), so a step costs one resampling instead of five.
_CAND_IDENTITY, _CAND_WARP = 0, 1
_OP_TO_CANDIDATE = (0, 1, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9)


# --------------------------------------------------------------------------------------------------
# Magnitudes
# --------------------------------------------------------------------------------------------------
def _check_magnitude(magnitude: float) -> None:
    if isinstance(magnitude, (int, float)) and not 0 <= magnitude <= _MAX_BIN:
        raise ValueError(f"RandAugment magnitude must be a bin in [0, {_MAX_BIN}], got {magnitude}.")


def op_magnitudes(magnitude: float | jax.Array, height: int, width: int) -> jax.Array:
    """Unsigned op magnitudes for bin ``magnitude`` of 31, in :data:`OP_NAMES` order (float32 ``[14]``).

    torchvision's ``_augmentation_space`` written as ``linspace(0, v, 31)[m] = v * m / 30`` (so a
    fractional bin interpolates linearly): shear 0.3, translate ``150/331 * size`` pixels (X: width,
    Y: height), rotate 30 deg, enhancement offsets 0.9, posterize bits ``8 - round(m / 7.5)``, solarize
    threshold ``1 - m / 30`` on [0, 1] (torchvision: ``linspace(255, 0)`` on uint8); 0 for the ops without
    a magnitude.
    """
    _check_magnitude(magnitude)
    t = jnp.asarray(magnitude, jnp.float32) / _MAX_BIN
    zero = jnp.zeros((), jnp.float32)
    # torchvision: 8 - (arange(31) / ((31 - 1) / 4)).round().int(); jnp.round is half-to-even like torch.
    bits = 8.0 - jnp.round(jnp.asarray(magnitude, jnp.float32) / (_MAX_BIN / 4.0))
    return jnp.stack(
        [
            zero,  # Identity
            0.3 * t,  # ShearX
            0.3 * t,  # ShearY
            150.0 / 331.0 * width * t,  # TranslateX
            150.0 / 331.0 * height * t,  # TranslateY
            30.0 * t,  # Rotate
            0.9 * t,  # Brightness
            0.9 * t,  # Color
            0.9 * t,  # Contrast
            0.9 * t,  # Sharpness
            bits,  # Posterize
            1.0 - t,  # Solarize
            zero,  # AutoContrast
            zero,  # Equalize
        ]
    )


# --------------------------------------------------------------------------------------------------
# Geometry (PIL affine conventions)
# --------------------------------------------------------------------------------------------------
def _inverse_matrices(magnitude_value: jax.Array, height: int, width: int) -> jax.Array:
    """Inverse affine maps ``[14, 6]`` (output -> input pixel coords, PIL ``Image.transform`` layout).

    Row ``k`` is ``(a, b, c, d, e, f)`` with ``x_in = a x + b y + c``, ``y_in = d x + e y + f`` for op ``k``
    at signed value ``magnitude_value``; non-geometric ops get the identity. Derived from torchvision's
    ``_get_inverse_affine_matrix`` (shear angle ``atan(v)`` so ``tan`` gives ``v`` back; shear centre
    (0, 0); translation ``int(v)`` pixels) and PIL's ``Image.rotate`` (about ``(W/2, H/2)``).
    """
    v = jnp.asarray(magnitude_value, jnp.float32)
    one, zero = jnp.ones((), jnp.float32), jnp.zeros((), jnp.float32)
    ident = jnp.stack([one, zero, zero, zero, one, zero])
    shear_x = jnp.stack([one, v, zero, zero, one, zero])
    shear_y = jnp.stack([one, zero, zero, v, one, zero])
    t = jnp.trunc(v)  # torchvision passes translate=[int(magnitude), 0]
    trans_x = jnp.stack([one, zero, -t, zero, one, zero])
    trans_y = jnp.stack([one, zero, zero, zero, one, -t])
    theta = jnp.deg2rad(v)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    cx, cy = width / 2.0, height / 2.0
    rotate = jnp.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy])
    rows = [ident] * _NUM_OPS
    rows[1:6] = [shear_x, shear_y, trans_x, trans_y, rotate]
    return jnp.stack(rows)


def _warp(x: jax.Array, m: jax.Array) -> jax.Array:
    """Resample float ``[H, W, C]`` through inverse map ``m`` (6,) with PIL's nearest rule (sample at pixel centres
    ``i + 0.5``, take the floor), fill 0 outside the input."""
    height, width = x.shape[0], x.shape[1]
    yy, xx = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32) + 0.5, jnp.arange(width, dtype=jnp.float32) + 0.5, indexing="ij"
    )
    ix = jnp.floor(m[0] * xx + m[1] * yy + m[2]).astype(jnp.int32)
    iy = jnp.floor(m[3] * xx + m[4] * yy + m[5]).astype(jnp.int32)
    inside = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    vals = x[jnp.clip(iy, 0, height - 1), jnp.clip(ix, 0, width - 1)]
    return jnp.where(inside[..., None], vals, 0.0)


# --------------------------------------------------------------------------------------------------
# Colour ops on float [H, W, 3] in [0, 1] (PIL ImageEnhance / ImageOps semantics)
# --------------------------------------------------------------------------------------------------
def _luma(x: jax.Array) -> jax.Array:
    return x @ jnp.asarray(_PIL_LUMA, jnp.float32)


def _blend(degenerate: jax.Array, x: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL ``ImageEnhance``: ``degenerate + factor * (x - degenerate)``, clipped."""
    return jnp.clip(degenerate + factor * (x - degenerate), 0.0, 1.0)


def _color(x: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(_luma(x)[..., None], x, factor)


def _contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    return _blend(jnp.mean(_luma(x)), x, factor)


def _sharpness(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, sum 13); border pixels keep their value (as PIL)."""
    height, width = x.shape[0], x.shape[1]
    # Separable 3x3 box sum, then +4 x centre; a mask (not ``.at[].set``) restores the border: it fuses.
    rows = x[:, :-2] + x[:, 1:-1] + x[:, 2:]
    box = rows[:-2] + rows[1:-1] + rows[2:]
    inner = jnp.pad((box + 4.0 * x[1:-1, 1:-1]) / 13.0, ((1, 1), (1, 1), (0, 0)))
    i = jnp.arange(height)[:, None, None]
    j = jnp.arange(width)[None, :, None]
    interior = (i > 0) & (i < height - 1) & (j > 0) & (j < width - 1)
    return _blend(jnp.where(interior, inner, x), x, factor)


def _levels(x: jax.Array) -> jax.Array:
    """Float [0, 1] -> int32 levels 0..255 by rounding (what a uint8 PIL image would hold)."""
    return jnp.clip(jnp.round(x * 255.0), 0, 255).astype(jnp.int32)


def _posterize(x: jax.Array, bits: jax.Array) -> jax.Array:
    shift = jnp.clip(8 - jnp.asarray(bits).astype(jnp.int32), 0, 8)
    mask = jnp.left_shift(jnp.right_shift(jnp.int32(255), shift), shift)  # keep the top `bits` bits
    return jnp.bitwise_and(_levels(x), mask).astype(jnp.float32) / 255.0


def _autocontrast(x: jax.Array) -> jax.Array:
    """Per channel, stretch [min, max] to [0, 1]; a constant channel is left unchanged (as PIL)."""
    lo = jnp.min(x, axis=(0, 1))
    hi = jnp.max(x, axis=(0, 1))
    flat = hi <= lo
    scale = jnp.where(flat, 1.0, 1.0 / jnp.where(flat, 1.0, hi - lo))
    lo = jnp.where(flat, 0.0, lo)
    return jnp.clip((x - lo) * scale, 0.0, 1.0)


def _equalize_lut(q: jax.Array) -> jax.Array:
    """PIL ``ImageOps.equalize`` LUT ``[256]`` for one channel of int levels ``q`` ``[N]``."""
    hist = jnp.bincount(q, length=256)  # scatter-add, not a one-hot histogram (docs/design.md)
    # step = (sum of the histogram - count of the highest occupied level) // 256.
    step = (q.shape[0] - hist[jnp.max(q)]) // 256
    cum_before = jnp.cumsum(hist) - hist  # pixels strictly below each level
    lut = jnp.minimum((step // 2 + cum_before) // jnp.maximum(step, 1), 255)
    return jnp.where(step == 0, jnp.arange(256), lut)  # step 0 (e.g. a constant channel): identity, as PIL


def _equalize(x: jax.Array) -> jax.Array:
    """Per-channel histogram equalisation on 256 levels (PIL ``ImageOps.equalize``)."""
    height, width, c = x.shape
    q = _levels(x).reshape(height * width, c)
    lut = jax.vmap(_equalize_lut, in_axes=1)(q)  # [C, 256]
    # The barrier materialises the LUT and the levels: otherwise XLA:CPU fuses the cumsum and divisions
    # into the per-pixel gather and recomputes them for every pixel.
    lut, q = jax.lax.optimization_barrier((lut, q))
    out = jax.vmap(lambda lc, qc: lc[qc], in_axes=(0, 1), out_axes=1)(lut, q)
    return out.reshape(height, width, c).astype(jnp.float32) / 255.0


def _candidates(x: jax.Array, op_index: jax.Array, v: jax.Array) -> list[jax.Array]:
    """The 10 distinct results of one step, in ``_OP_TO_CANDIDATE`` order."""
    m = _inverse_matrices(v, x.shape[0], x.shape[1])[op_index]
    factor = 1.0 + v
    return [
        x,
        _warp(x, m),
        adjust_brightness(x, factor),
        _color(x, factor),
        _contrast(x, factor),
        _sharpness(x, factor),
        _posterize(x, v),
        pix.solarize(x, v),  # PIL inverts levels >= threshold
        _autocontrast(x),
        _equalize(x),
    ]


def _select(candidates: list[jax.Array], op_index: jax.Array) -> jax.Array:
    """Pick the candidate of ``op_index`` as a one-hot weighted sum (all candidates are finite, in [0, 1]). Under
    vmap every candidate is computed anyway; the sum is the fastest pick on CPU (docs/design.md)."""
    w = jax.nn.one_hot(jnp.asarray(_OP_TO_CANDIDATE, jnp.int32)[op_index], len(candidates), dtype=jnp.float32)
    return sum(w[k] * c for k, c in enumerate(candidates))


def _apply_op(x: jax.Array, op_index: jax.Array, v: jax.Array) -> jax.Array:
    """Op ``OP_NAMES[op_index]`` (traced) on ONE float image ``[H, W, 3]`` in [0, 1] (torchvision ``_apply_op``).

    ``v`` is the signed value torchvision hands to ``_apply_op``: shear factor (ShearX/Y), pixels (Translate,
    truncated to int), degrees counter-clockwise (Rotate), enhancement offset with factor ``1 + v`` (Brightness,
    Color, Contrast, Sharpness), bits kept (Posterize), threshold on [0, 1] (Solarize); ignored by Identity,
    AutoContrast and Equalize.
    """
    return _select(_candidates(x, op_index, v), op_index)


# --------------------------------------------------------------------------------------------------
# RandAugment
# --------------------------------------------------------------------------------------------------
def _rand_augment_from_uniforms(u: jax.Array, x: jax.Array, num_ops: int, magnitude: float) -> jax.Array:
    """RandAugment of ONE float image ``x`` ``[H, W, 3]`` in [0, 1] from ``2 * num_ops`` U[0, 1) draws (op choice,
    sign per op)."""
    if num_ops == 0:
        return x
    height, width = x.shape[0], x.shape[1]
    mags = op_magnitudes(magnitude, height, width)
    signed = jnp.asarray(SIGNED_OPS)
    u = u.reshape(num_ops, 2)
    ops = jnp.minimum(jnp.floor(u[:, 0] * _NUM_OPS), _NUM_OPS - 1).astype(jnp.int32)

    # A fori_loop (not a Python loop) keeps the traced graph, and so compile time, independent of num_ops.
    def step(i: jax.Array, y: jax.Array) -> jax.Array:
        op = ops[i]
        v = jnp.where(signed[op] & (u[i, 1] < 0.5), -mags[op], mags[op])  # torchvision: sign flip w.p. 1/2
        return _apply_op(y, op, v)

    return jax.lax.fori_loop(0, num_ops, step, x)


def rand_augment_batch(
    key: jax.Array,
    images_uint8: jax.Array,
    num_ops: int,
    magnitude: float,
    out_size: int,
    hflip_prob: float = 0.5,
    vflip_prob: float = 0.5,
) -> jax.Array:
    """Supervised training transform: uint8 ``[B, H, W, C]`` -> float32 ``[B, out, out, 3]``, normalised.

    The reference's ``Resize -> RandAugment(n, m) -> RandomHorizontalFlip -> RandomVerticalFlip -> Normalize``:
    the resize of :func:`.augment.preprocess_eval` (:func:`.augment.resize_to_rgb`), RandAugment per sample
    (``num_ops`` ops, ``magnitude`` a bin in [0, 30]), flips with the given probabilities, ImageNet normalisation.
    Per-sample keys come from ``jax.random.split(key, B)``.
    """
    if images_uint8.ndim != 4:
        raise ValueError(f"rand_augment_batch expects [B, H, W, C], got shape {images_uint8.shape}.")
    if int(num_ops) != num_ops or num_ops < 0:
        raise ValueError(f"num_ops must be a non-negative int, got {num_ops}.")
    num_ops = int(num_ops)
    _check_magnitude(magnitude)
    for name, p in (("hflip_prob", hflip_prob), ("vflip_prob", vflip_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p}.")
    x = resize_to_rgb(images_uint8, int(out_size))
    keys = jax.random.split(key, images_uint8.shape[0])

    def one(k: jax.Array, img: jax.Array) -> jax.Array:
        u = jax.random.uniform(k, (2 * num_ops + 2,), jnp.float32)  # one threefry call per sample
        y = _rand_augment_from_uniforms(u[: 2 * num_ops], img, num_ops, magnitude)
        if hflip_prob > 0.0:
            y = jnp.where(u[2 * num_ops] < hflip_prob, pix.flip_left_right(y), y)
        if vflip_prob > 0.0:
            y = jnp.where(u[2 * num_ops + 1] < vflip_prob, pix.flip_up_down(y), y)
        return imagenet_normalise(y)

    return jax.vmap(one)(keys, x)
