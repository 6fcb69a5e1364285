"""Embedded, generated fetal-cardiac-ultrasound-like videos (numpy only).

This is the default data of the project. Everything is generated deterministically from integer seeds with
``np.random.default_rng``; nothing is downloaded.

Image geometry (normalised coordinates, resolution independent). For an image of ``S x S`` pixels, pixel
``(row, col)`` has centre ``x = (col + 0.5) / S - 0.5`` (lateral, 0 at the image centre line) and
``y = (row + 0.5) / S`` (depth, 0 at the top edge). The fan (sector) apex is at ``(x, y) = (0, 0)``, i.e. the
top centre. With ``r = hypot(x, y)`` and ``theta = atan2(x, y)`` (0 pointing straight down) a pixel is inside the
fan of a video iff ``r_min <= r <= r_max`` and ``|theta| <= half_angle``, with per-video
``half_angle`` in [30, 40] degrees (opening 60-80 degrees), ``r_max`` in [0.90, 0.98] and ``r_min`` = 0.02.
Every pixel outside the fan is exactly 0, in particular every pixel with ``r > FAN_MAX_RADIUS`` or
``|theta| > FAN_MAX_HALF_ANGLE_DEG`` (see :func:`fan_bounds_mask`).

Scene model, per video: a round fetal body cross-section (skin ring, bright spine with acoustic shadow, rib
echoes with shadows, descending aorta) floating in dark amniotic fluid below a band of maternal tissue; one of
five plane-specific anatomies (see ``PLANES``) drawn inside it; random distractors (small dark cysts, bright
limb-like bars) in every class; heartbeat (2.0-2.5 Hz), probe drift (bounded random walk of translation and
rotation), per-video scale; sweeps through a sequence of planes with crossfades; speckle, depth attenuation,
gain/TGC and log compression.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from fetalssl_jax.data.types import LabelledFrames, Video

PLANES: tuple[str, ...] = ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")
"""Plane class names; a plane label is an index into this tuple."""

FPS: float = 25.0
"""Raw video time base (frames per second) of the rendered scenes."""

SWEEP_ORDER: tuple[int, ...] = (4, 1, 2, 3, 0)
"""Typical sonographer sweep order (caudal to cranial): non-heart -> 4CH -> LVOT -> RVOT -> 3VV/3VT."""

FAN_MAX_HALF_ANGLE_DEG: float = 40.0
"""No video's fan is wider than this half angle (degrees from the vertical through the apex)."""

FAN_MAX_RADIUS: float = 1.0
"""No video's fan reaches further than this distance from the apex (in units of the image side)."""

_NUM_PLANES = len(PLANES)
_I3VV, _I4CH, _ILVOT, _IRVOT, _INON = range(_NUM_PLANES)
_F32 = np.float32
_TWO_PI = 2.0 * math.pi

# Random-stream tags, so that the streams of videos, patients and labelled sets never coincide.
_TAG_VIDEO = 101
_TAG_PATIENT = 202
_TAG_LABELLED = 303
_TAG_SPLIT = 404


# ----------------------------------------------------------------------------------------------------------
# Small vectorised geometry helpers (all work on broadcastable float32 arrays).
# ----------------------------------------------------------------------------------------------------------


def _soft(d: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """Soft inside-mask of a signed distance field (1 inside, 0 outside, linear ramp over ``eps``)."""
    return np.clip(0.5 - d / eps, 0.0, 1.0)


def _paint(e: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """In place: ``e = e * (1 - mask) + value * mask``."""
    e += mask * (value - e)


def _ellipse_sd(p, q, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse."""
    dx = (p - cx) / rx
    dy = (q - cy) / ry
    return (np.sqrt(dx * dx + dy * dy) - 1.0) * np.minimum(rx, ry)


def _circle_sd(p, q, cx, cy, rad):
    dx = p - cx
    dy = q - cy
    return np.sqrt(dx * dx + dy * dy) - rad


def _capsule_sd(p, q, x0, y0, x1, y1, rad):
    """Signed distance to a capsule (segment (x0,y0)-(x1,y1) with radius ``rad``)."""
    vx, vy = x1 - x0, y1 - y0
    wx = p - x0
    wy = q - y0
    h = np.clip((wx * vx + wy * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    dx = wx - h * vx
    dy = wy - h * vy
    return np.sqrt(dx * dx + dy * dy) - rad


def _vessel(e, d, eps, wall_w, lumen, wall):
    """Paints a vessel/chamber given its lumen signed distance: bright wall ring then dark lumen."""
    _paint(e, _soft(d - wall_w, eps), wall)
    _paint(e, _soft(d, eps), lumen)


def _gauss_taps(sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return np.ones(1, _F32)
    rad = max(1, int(math.ceil(2.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    return (k / k.sum()).astype(_F32)


def _speckle_noise(rng: np.random.Generator, lead: tuple[int, ...], size: int, taps_x, taps_y) -> np.ndarray:
    """Spatially correlated zero-mean noise ``[*lead, size, size]`` with unit variance.

    Blurred uniform noise (cheaper than Gaussian noise and close to Gaussian after the blur); generated with a
    margin so that the separable blur is a 'valid' convolution.
    """
    rx, ry = len(taps_x) // 2, len(taps_y) // 2
    x = rng.random((*lead, size + 2 * ry, size + 2 * rx), dtype=_F32)
    x -= _F32(0.5)
    if rx:
        acc = taps_x[0] * x[..., :, 0:size]
        for i in range(1, len(taps_x)):
            acc += taps_x[i] * x[..., :, i : i + size]
        x = acc
    if ry:
        acc = taps_y[0] * x[..., 0:size, :]
        for i in range(1, len(taps_y)):
            acc += taps_y[i] * x[..., i : i + size, :]
        x = acc
    scale = math.sqrt(12.0 / (float(np.sum(taps_x**2)) * float(np.sum(taps_y**2))))
    x *= _F32(scale)
    return x


def fan_bounds_mask(image_size: int) -> np.ndarray:
    """Boolean ``[S, S]`` mask of the largest possible fan (any video's fan lies inside it).

    Pixels where this is False are 0 in every rendered frame.
    """
    c = (np.arange(image_size) + 0.5) / image_size
    x = c[None, :] - 0.5
    y = c[:, None]
    r = np.hypot(x, y)
    th = np.degrees(np.arctan2(x, y))
    return (r <= FAN_MAX_RADIUS) & (np.abs(th) <= FAN_MAX_HALF_ANGLE_DEG)


# ----------------------------------------------------------------------------------------------------------
# Scene sampling.
# ----------------------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_patient(rng: np.random.Generator) -> dict:
    """Anatomy traits shared by all videos of one patient."""
    return {
        "body_scale": _u(rng, 0.6, 1.0),
        "body_aspect": _u(rng, 0.85, 1.0),
        "heart_pos": (_u(rng, -0.25, -0.02), _u(rng, -0.32, -0.08)),
        "heart_size": _u(rng, 0.42, 0.56),
        # Direction of the cardiac long axis (towards the apex) in body coordinates: anterior-left.
        "heart_angle": math.radians(-125.0 + _u(rng, -25.0, 25.0)),
        "vessel_line_angle": math.radians(_u(rng, -30.0, 30.0)),
        "vessel_scale": _u(rng, 0.85, 1.15),
        "chamber_scale": _u(rng, 0.85, 1.15),
        "stomach": (_u(rng, 0.15, 0.45), _u(rng, -0.35, 0.15), _u(rng, 0.18, 0.30), _u(rng, 0.12, 0.2)),
        "uv_bend": _u(rng, -0.35, 0.35),
    }


def _sample_sequence(rng: np.random.Generator) -> list[int]:
    if rng.random() < 0.2:
        return [int(rng.integers(_NUM_PLANES))]
    length = int(rng.choice([2, 3, 4, 5], p=[0.3, 0.3, 0.2, 0.2]))
    start = int(rng.integers(0, _NUM_PLANES - length + 1))
    seq = list(SWEEP_ORDER[start : start + length])
    if rng.random() < 0.3:
        seq.reverse()
    return seq


def _bounded_walk(rng: np.random.Generator, n: int, step: float, bound: float) -> np.ndarray:
    """Random walk of ``n`` steps reflected into [-bound, bound], random start."""
    w = np.cumsum(rng.normal(0.0, step, size=n)) + rng.uniform(-bound, bound)
    period = 4.0 * bound
    m = np.mod(w + bound, period)
    return np.where(m < 2.0 * bound, m - bound, 3.0 * bound - m)


@dataclasses.dataclass
class _Scene:
    size: int
    # Per kept frame.
    cx: np.ndarray
    cy: np.ndarray
    phi: np.ndarray
    radius: np.ndarray
    beat: np.ndarray
    beat_amp: float
    gain: np.ndarray
    tgc: np.ndarray
    weights: np.ndarray  # [T, 5]
    # Per video.
    flip: float
    half_angle: float
    r_max: float
    r_min: float
    patient: dict
    style: dict
    cysts: np.ndarray  # [K, 3] (a, b, radius) in body coordinates
    bars: np.ndarray  # [K, 5] (a0, b0, a1, b1, radius)
    ribs: np.ndarray  # [K, 2] body-coordinate positions
    trachea: bool
    speckle_power: float
    speckle_persist: float
    speckle_field: np.ndarray  # float32 [2, S, S] persistent part (real, imaginary)
    taps_x: np.ndarray
    taps_y: np.ndarray
    atten: float
    compress: float
    maternal_depth: float
    tex: np.ndarray  # [K, 4] texture sinusoids (kx, kb, phase, amp)


def _sample_style(rng: np.random.Generator) -> dict:
    """Per-video echogenicity of every structure (so brightness alone is not a cue)."""
    blood = _u(rng, 0.04, 0.16)

    def b() -> float:
        return float(np.clip(blood * _u(rng, 0.6, 1.5), 0.02, 0.22))

    return {
        "fluid": _u(rng, 0.02, 0.12),
        "maternal": _u(rng, 0.25, 0.5),
        "tissue": _u(rng, 0.28, 0.5),
        "tex_amp": _u(rng, 0.1, 0.3),
        "skin": _u(rng, 0.55, 0.9),
        "myo": _u(rng, 0.42, 0.7),
        "septum": _u(rng, 0.65, 1.0),
        "wall": _u(rng, 0.6, 1.0),
        "spine": _u(rng, 0.8, 1.0),
        "rib": _u(rng, 0.6, 0.95),
        "lv": b(),
        "rv": b(),
        "la": b(),
        "ra": b(),
        "ao": b(),
        "pa": b(),
        "svc": b(),
        "dao": b(),
        "trachea": _u(rng, 0.15, 0.35),
        "stomach": b(),
        "uv": b(),
        "liver": _u(rng, 0.3, 0.55),
        "cyst": b(),
        "bar": _u(rng, 0.6, 1.0),
        "spine_shadow": _u(rng, 0.15, 0.45),
        "rib_shadow": _u(rng, 0.4, 0.75),
    }


def _segment_weights(rng: np.random.Generator, sequence: Sequence[int], n_raw: int, raw_idx: np.ndarray) -> np.ndarray:
    """Crossfade weights ``[T, 5]`` (rows sum to 1) of the planes at the given raw frame times."""
    k = len(sequence)
    weights = np.zeros((len(raw_idx), _NUM_PLANES), np.float64)
    if k == 1:
        weights[:, sequence[0]] = 1.0
        return weights
    frac = rng.dirichlet(np.full(k, 2.0)) + 0.3
    frac /= frac.sum()
    bounds = np.cumsum(frac)[:-1] * n_raw
    fade = _u(rng, 0.25, 0.6) * FPS  # crossfade length in raw frames
    t = raw_idx.astype(np.float64)
    ramps = [np.clip((t - bnd) / fade + 0.5, 0.0, 1.0) for bnd in bounds]
    for i, plane in enumerate(sequence):
        w = (ramps[i - 1] if i > 0 else 1.0) - (ramps[i] if i < k - 1 else 0.0)
        weights[:, plane] += w
    return weights


def _sample_scene(
    rng: np.random.Generator,
    patient: dict,
    num_frames: int,
    image_size: int,
    frame_skip: int,
    plane_sequence: Sequence[int] | None,
) -> _Scene:
    s = image_size
    n_raw = (num_frames - 1) * frame_skip + 1
    raw_idx = np.arange(num_frames) * frame_skip
    t = raw_idx / FPS
    sequence = list(plane_sequence) if plane_sequence is not None else _sample_sequence(rng)
    weights = _segment_weights(rng, sequence, n_raw, raw_idx)

    half_angle = math.radians(_u(rng, 30.0, 40.0))
    r_max = _u(rng, 0.90, 0.98)
    # Body: centre depth, radius relative to the fan width at that depth.
    cy0 = _u(rng, 0.5, 0.6)
    half_width = cy0 * math.tan(half_angle)
    radius0 = patient["body_scale"] * half_width * _u(rng, 0.95, 1.05)
    radius0 = min(radius0, 0.95 * (r_max - cy0))
    # Probe drift: bounded random walks (per raw frame) of translation and rotation.
    drift_step = _u(rng, 0.0015, 0.004)
    dx = _bounded_walk(rng, n_raw, drift_step, 0.08)[raw_idx]
    dy = _bounded_walk(rng, n_raw, drift_step * 0.7, 0.05)[raw_idx]
    phi0 = _u(rng, 0.0, _TWO_PI)
    phi = phi0 + _bounded_walk(rng, n_raw, _u(rng, 0.002, 0.008), 0.35)[raw_idx]
    zoom = 1.0 + 0.04 * np.sin(_TWO_PI * t / _u(rng, 4.0, 12.0) + _u(rng, 0, _TWO_PI))
    # Heartbeat: 0 = diastole (ventricles full), 1 = end systole.
    hr = _u(rng, 2.0, 2.5)
    beat = 0.5 - 0.5 * np.cos(_TWO_PI * hr * t + _u(rng, 0, _TWO_PI))
    beat_amp = _u(rng, 0.08, 0.2)
    beat = beat * beat_amp
    # Gain: per-video overall gain, slow time variation; TGC slope also slowly varying.
    gain = _u(rng, 0.5, 2.5) * np.exp(
        0.12 * np.sin(_TWO_PI * t / _u(rng, 3.0, 10.0) + _u(rng, 0, _TWO_PI))
        + _bounded_walk(rng, n_raw, 0.004, 0.1)[raw_idx]
    )
    atten = _u(rng, 0.25, 0.6)  # display-units loss per unit depth, before TGC
    tgc = atten * _u(rng, 0.2, 0.8) * (1.0 + 0.25 * np.sin(_TWO_PI * t / _u(rng, 4.0, 15.0) + _u(rng, 0, _TWO_PI)))

    n_cysts = int(rng.integers(0, 3))
    ang = rng.uniform(0, _TWO_PI, n_cysts)
    rad = np.sqrt(rng.uniform(0.0, 0.7, n_cysts))
    cysts = np.stack([rad * np.cos(ang), rad * np.sin(ang), rng.uniform(0.03, 0.09, n_cysts)], -1)
    n_bars = int(rng.integers(0, 3))
    bars = np.zeros((n_bars, 5))
    for i in range(n_bars):
        a = _u(rng, 0, _TWO_PI)
        dist = _u(rng, 0.3, 1.5)
        o = _u(rng, 0, _TWO_PI)
        length = _u(rng, 0.2, 0.55)
        x0, y0 = dist * math.cos(a), dist * math.sin(a)
        bars[i] = (x0, y0, x0 + length * math.cos(o), y0 + length * math.sin(o), _u(rng, 0.02, 0.04))
    n_ribs = int(rng.integers(2, 5))
    rib_ang = math.pi / 2 + rng.choice([-1.0, 1.0], n_ribs) * rng.uniform(0.7, 2.2, n_ribs)
    ribs = 0.92 * np.stack([np.cos(rib_ang), np.sin(rib_ang)], -1)

    grain = max(0.45, 0.9 * s / 128.0) * _u(rng, 0.8, 1.2)
    taps_x = _gauss_taps(grain)
    taps_y = _gauss_taps(grain * 0.55)
    field = _speckle_noise(rng, (2,), s, taps_x, taps_y)
    tex = np.stack(
        [
            rng.normal(0, 6.0, 4),
            rng.normal(0, 6.0, 4),
            rng.uniform(0, _TWO_PI, 4),
            rng.uniform(0.3, 1.0, 4),
        ],
        -1,
    )
    return _Scene(
        size=s,
        cx=dx.astype(_F32),
        cy=(cy0 + dy).astype(_F32),
        phi=phi.astype(_F32),
        radius=(radius0 * zoom).astype(_F32),
        beat=beat.astype(_F32),
        beat_amp=beat_amp,
        gain=gain.astype(_F32),
        tgc=tgc.astype(_F32),
        weights=weights,
        flip=float(rng.choice([-1.0, 1.0])),
        half_angle=half_angle,
        r_max=r_max,
        r_min=0.02,
        patient=patient,
        style=_sample_style(rng),
        cysts=cysts,
        bars=bars,
        ribs=ribs,
        trachea=bool(rng.random() < 0.5),
        speckle_power=_u(rng, 1.0, 1.8),  # exponent on the Rayleigh amplitude (speckle contrast)
        speckle_persist=_u(rng, 0.3, 0.7),
        speckle_field=field,
        taps_x=taps_x,
        taps_y=taps_y,
        atten=atten,
        compress=10.0 ** (_u(rng, 40.0, 60.0) / 20.0),  # dynamic range 40-60 dB
        maternal_depth=_u(rng, 0.1, 0.25),
        tex=tex,
    )


# ----------------------------------------------------------------------------------------------------------
# Plane anatomies, drawn in heart coordinates (p lateral, q along the cardiac long axis towards the apex).
# ----------------------------------------------------------------------------------------------------------


def _heart_coords(sc: _Scene, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    pt = sc.patient
    hx, hy = pt["heart_pos"]
    hs = pt["heart_size"]
    ang = pt["heart_angle"]
    # q axis = (cos ang, sin ang); p axis = perpendicular.
    ca, sa = math.cos(ang), math.sin(ang)
    da = a - hx
    db = b - hy
    q = (da * ca + db * sa) / hs
    p = (-da * sa + db * ca) / hs
    return p, q, hs


def _paint_4ch(e, p, q, eps, beat, sc: _Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat  # ventricles shrink in systole
    at = 1.0 - 0.7 * (sc.beat_amp - beat)  # atria fill in systole
    d_heart = _ellipse_sd(p, q, 0.0, -0.05, 0.9 * cs, 1.05 * cs)
    _paint(e, _soft(d_heart - w, eps), st["wall"])  # pericardium
    _paint(e, _soft(d_heart, eps), st["myo"])
    # Septal cross (crux).
    _paint(e, _soft(np.maximum(np.abs(p) - w, np.abs(q + 0.05) - 0.9 * cs), eps), st["septum"])
    _paint(e, _soft(np.maximum(np.abs(q + 0.12 * cs) - w, np.abs(p) - 0.7 * cs), eps), st["septum"])
    gap = 0.5 * w + 0.05
    for side, val_v, val_a, rxv, ryv, rxa in (
        (1.0, st["lv"], st["la"], 0.3, 0.5, 0.3),
        (-1.0, st["rv"], st["ra"], 0.33, 0.44, 0.32),
    ):
        rxv_b = rxv * cs * vs
        ryv_b = ryv * cs * vs
        d = _ellipse_sd(p, q, side * (gap + rxv * cs), 0.0 * cs + ryv * cs - 0.05, rxv_b, ryv_b)
        _paint(e, _soft(d, eps), val_v)
        ra_b = rxa * cs * at
        d = _ellipse_sd(p, q, side * (gap + rxa * cs), -0.12 * cs - gap - 0.28 * cs, ra_b, 0.28 * cs * at)
        _paint(e, _soft(d, eps), val_a)


def _paint_lvot(e, p, q, eps, beat, sc: _Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat
    d_heart = _ellipse_sd(p, q, 0.0, 0.0, 0.85 * cs, 1.0 * cs)
    _paint(e, _soft(d_heart - w, eps), st["wall"])
    _paint(e, _soft(d_heart, eps), st["myo"])
    # Left ventricle (elongated) and the aorta leaving its base towards the right shoulder.
    d_lv = _ellipse_sd(p, q, 0.15 * cs, 0.22 * cs, 0.33 * cs * vs, 0.55 * cs * vs)
    rad = 0.15 * vsc * (1.0 + 0.5 * beat)
    d_ao = _capsule_sd(p, q, 0.05 * cs, -0.2 * cs, -0.45, -1.25, rad)
    d = np.minimum(d_lv, d_ao)
    _paint(e, _soft(d_ao - w, eps), st["wall"])
    _paint(e, _soft(d, eps), st["lv"])


def _paint_rvot(e, p, q, eps, beat, sc: _Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat
    d_heart = _ellipse_sd(p, q, -0.1, 0.15, 0.75 * cs, 0.85 * cs)
    _paint(e, _soft(d_heart - w, eps), st["wall"])
    _paint(e, _soft(d_heart, eps), st["myo"])
    d_rv = _ellipse_sd(p, q, -0.2 * cs, 0.3 * cs, 0.36 * cs * vs, 0.42 * cs * vs)
    rad = 0.14 * vsc * (1.0 + 0.5 * beat)
    # Pulmonary trunk crossing over the aorta (round cross-section), then bifurcating.
    bx, by = 0.3, -0.95
    d_pa = _capsule_sd(p, q, -0.15 * cs, 0.0, bx, by, rad)
    d_b1 = _capsule_sd(p, q, bx, by, bx + 0.6, by - 0.25, 0.7 * rad)
    d_b2 = _capsule_sd(p, q, bx, by, bx - 0.25, by - 0.55, 0.7 * rad)
    d_ao = _circle_sd(p, q, -0.35, -0.55, 0.15 * vsc * (1.0 + 0.4 * beat))
    _vessel(e, d_ao, eps, w, st["ao"], st["wall"])
    d_vessels = np.minimum(d_pa, np.minimum(d_b1, d_b2))
    _paint(e, _soft(d_vessels - w, eps), st["wall"])
    _paint(e, _soft(np.minimum(d_vessels, d_rv), eps), st["pa"])


def _paint_3vv(e, p, q, eps, beat, sc: _Scene) -> None:
    st = sc.style
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    ang = sc.patient["vessel_line_angle"]
    ux, uy = math.cos(ang), math.sin(ang)
    ox, oy = 0.0, -0.2
    # Mediastinal soft tissue (thymus) behind which the vessels lie.
    d_med = _ellipse_sd(p, q, 0.0, -0.2, 1.0, 0.75)
    _paint(e, _soft(d_med, 4 * eps) * 0.5, st["myo"])
    for tpos, rad0, key, pulse in ((-0.7, 0.3, "pa", 0.6), (0.0, 0.23, "ao", 0.6), (0.6, 0.15, "svc", 0.1)):
        rad = rad0 * vsc * (1.0 + pulse * beat)
        d = _circle_sd(p, q, ox + tpos * ux, oy + tpos * uy, rad)
        _vessel(e, d, eps, w, st[key], st["wall"])
    if sc.trachea:
        # Trachea: echogenic ring posterior-right of the aorta.
        tx, ty = ox + 0.25 * ux - 0.42 * uy, oy + 0.25 * uy + 0.42 * ux
        d = _circle_sd(p, q, tx, ty, 0.12 * vsc)
        _vessel(e, d, eps, 1.5 * w, st["trachea"], st["wall"])


def _paint_abdomen(e, a, b, eps, beat, sc: _Scene) -> None:
    st = sc.style
    pt = sc.patient
    w = np.maximum(0.04, 1.3 * eps)
    # Liver: slightly different echotexture over the anterior-right half.
    d_liver = _ellipse_sd(a, b, -0.3, -0.15, 0.7, 0.65)
    _paint(e, _soft(d_liver, 6 * eps) * 0.6, st["liver"])
    sx, sy, rx, ry = pt["stomach"]
    d = _ellipse_sd(a, b, sx, sy, rx, ry)
    _vessel(e, d, eps, w, st["stomach"], st["wall"])
    # Umbilical vein: curved tube from the anterior abdominal wall into the liver (3 capsules on a curve).
    bend = pt["uv_bend"]
    side = 1.0 if bend > 0 else -1.0
    pts = [(0.05 + bend * (1 - u) ** 2 - 0.25 * side * u * u, -0.95 + 0.85 * u) for u in (0.0, 0.35, 0.7, 1.0)]
    d_uv = None
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        dd = _capsule_sd(a, b, x0, y0, x1, y1, 0.055)
        d_uv = dd if d_uv is None else np.minimum(d_uv, dd)
    _vessel(e, d_uv, eps, w, st["uv"], st["wall"])


_PAINTERS = {_I4CH: _paint_4ch, _ILVOT: _paint_lvot, _IRVOT: _paint_rvot, _I3VV: _paint_3vv}


# ----------------------------------------------------------------------------------------------------------
# Rendering.
# ----------------------------------------------------------------------------------------------------------


def _render_frames(sc: _Scene, rng: np.random.Generator, frame_idx: np.ndarray) -> np.ndarray:
    """Renders the kept frames ``frame_idx`` of a scene, returns uint8 ``[n, S, S]``."""
    s = sc.size
    c = (np.arange(s, dtype=_F32) + 0.5) / s
    x = (c[None, :] - 0.5)[None]
    y = c[:, None][None]
    r = np.sqrt(x * x + y * y)
    th = np.arctan2(x, y)
    fan = (r >= sc.r_min) & (r <= sc.r_max) & (np.abs(th) <= sc.half_angle)
    px = _F32(1.0 / s)
    st = sc.style
    out = np.zeros((len(frame_idx), s, s), np.uint8)
    chunk = max(1, (1 << 18) // (s * s))
    # Lateral taper near the fan edges and a near-field fade in.
    edge = np.clip((sc.half_angle - np.abs(th)) / 0.12, 0.0, 1.0)
    taper = (0.55 + 0.45 * edge) * np.clip((r - sc.r_min) / 0.05, 0.3, 1.0)
    atten = np.exp(-math.log1p(sc.compress) * sc.atten * r).astype(_F32) * taper
    spine_pts = np.array([(0.0, 0.78, 0.1), (-0.11, 0.9, 0.065), (0.11, 0.9, 0.065)])
    occ_b = np.concatenate([sc.ribs, spine_pts[:1, :2]], 0).astype(_F32)  # occluders: ribs then spine
    occ_w = np.array([0.05] * len(sc.ribs) + [0.13], _F32)
    occ_t = np.array([1.0 - st["rib_shadow"]] * len(sc.ribs) + [1.0 - st["spine_shadow"]], _F32)

    for start in range(0, len(frame_idx), chunk):
        idx = frame_idx[start : start + chunk]
        n = len(idx)
        cx = sc.cx[idx][:, None, None]
        cy = sc.cy[idx][:, None, None]
        rad = sc.radius[idx][:, None, None]
        cph = np.cos(sc.phi[idx])[:, None, None]
        sph = np.sin(sc.phi[idx])[:, None, None]
        beat = sc.beat[idx][:, None, None]
        dx = x - cx
        dy = y - cy
        a = sc.flip * (cph * dx + sph * dy) / rad
        b = (-sph * dx + cph * dy) / rad
        eps = px / rad  # one pixel in body units

        e = np.full((n, s, s), st["fluid"], _F32)
        _paint(e, _soft(r - sc.maternal_depth - 0.015 * np.sin(30 * x), px), st["maternal"])
        # Body with low-frequency echotexture.
        d_body = _ellipse_sd(a, b, 0.0, 0.0, 1.0, sc.patient["body_aspect"])
        tex = 1.0
        for kx, kb, ph, amp in sc.tex.tolist():
            tex = tex + (st["tex_amp"] * amp / 2.0) * np.sin(kx * a + kb * b + ph)
        _paint(e, _soft(d_body, eps), st["tissue"] * tex)
        _paint(e, _soft(np.abs(d_body + 0.03) - np.maximum(0.025, 0.8 * eps), eps), st["skin"])

        # Plane-specific anatomy, crossfaded.
        w = sc.weights[idx]
        active = [k for k in range(_NUM_PLANES) if np.any(w[:, k] > 0)]
        if len(active) == 1:
            planes_e = e
            _paint_plane(active[0], planes_e, a, b, eps, beat, sc)
        else:
            planes_e = np.zeros_like(e)
            for k in active:
                sel = np.nonzero(w[:, k] > 0)[0]
                ek = e[sel]
                _paint_plane(k, ek, a[sel], b[sel], eps[sel], beat[sel], sc)
                planes_e[sel] += w[sel, k].astype(_F32)[:, None, None] * ek
        e = planes_e

        # Shared anatomy: descending aorta, spine, ribs, distractors.
        d = _circle_sd(a, b, -0.17, 0.58, 0.07 * (1.0 + 0.5 * beat))
        _vessel(e, d, eps, np.maximum(0.03, 1.2 * eps), st["dao"], st["wall"])
        d_sp = None
        for sa, sb, sr in spine_pts.tolist():
            dd = _circle_sd(a, b, sa, sb, sr)
            d_sp = dd if d_sp is None else np.minimum(d_sp, dd)
        _paint(e, _soft(d_sp, eps), st["spine"])
        d_rib = None
        for ra, rb in sc.ribs.tolist():
            dd = _circle_sd(a, b, ra, rb, 0.05)
            d_rib = dd if d_rib is None else np.minimum(d_rib, dd)
        _paint(e, _soft(d_rib, eps), st["rib"])
        for ca, cb, cr in sc.cysts.tolist():
            _vessel(e, _circle_sd(a, b, ca, cb, cr), eps, np.maximum(0.02, eps), st["cyst"], st["wall"])
        for a0, b0, a1, b1, br in sc.bars.tolist():
            _paint(e, _soft(_capsule_sd(a, b, a0, b0, a1, b1, br), eps), st["bar"])

        # Acoustic shadows behind bright occluders (along the beam, i.e. radially from the apex).
        oa = occ_b[None, :, 0] * sc.flip
        ob = occ_b[None, :, 1]
        cph1, sph1, rad1 = cph[:, :, 0], sph[:, :, 0], rad[:, :, 0]
        ox = cx[:, :, 0] + rad1 * (cph1 * oa - sph1 * ob)
        oy = cy[:, :, 0] + rad1 * (sph1 * oa + cph1 * ob)
        o_r = np.sqrt(ox * ox + oy * oy)[:, :, None, None]
        o_th = np.arctan2(ox, oy)[:, :, None, None]
        o_half = (occ_w[None, :] * rad1)[:, :, None, None] / o_r
        ang_in = np.clip((o_half - np.abs(th[None] - o_th)) / (o_half * 0.5 + 1e-6), 0.0, 1.0)
        beyond = np.clip((r[None] - o_r) / (o_half * o_r + 1e-6), 0.0, 1.0)
        shadow = 1.0 - (1.0 - occ_t[None, :, None, None]) * ang_in * beyond
        e *= shadow.min(axis=1)

        # Speckle: correlated Rayleigh amplitude, partly persistent within the video.
        fresh = _speckle_noise(rng, (2, n), s, sc.taps_x, sc.taps_y)
        pp = math.sqrt(sc.speckle_persist)
        pf = math.sqrt(1.0 - sc.speckle_persist)
        re = pp * sc.speckle_field[0] + pf * fresh[0]
        im = pp * sc.speckle_field[1] + pf * fresh[1]
        amp = np.sqrt(re * re + im * im) / _F32(math.sqrt(math.pi / 2.0))  # Rayleigh, mean 1
        speckle = amp**sc.speckle_power

        # Echogenicity is defined in display units; go to linear amplitude, apply speckle, attenuation and
        # (time-gain-compensated) gain there, then log-compress back.
        big_l = _F32(math.log1p(sc.compress))
        lin = np.expm1(e * big_l) / _F32(sc.compress)
        gain = sc.gain[idx][:, None, None] * np.exp(big_l * sc.tgc[idx][:, None, None] * r)
        img = lin * speckle * atten * gain
        img = np.log1p(_F32(sc.compress) * img) / big_l
        img = np.clip(img * 255.0, 0.0, 255.0) * fan
        out[start : start + n] = img.astype(np.uint8)
    return out


def _paint_plane(k: int, e, a, b, eps, beat, sc: _Scene) -> None:
    if k == _INON:
        _paint_abdomen(e, a, b, eps, beat, sc)
        return
    p, q, hs = _heart_coords(sc, a, b)
    _PAINTERS[k](e, p, q, eps / hs, beat, sc)


# ----------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------


def _check_int(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_sequence(plane_sequence: Sequence[int] | None) -> None:
    if plane_sequence is None:
        return
    seq = list(plane_sequence)
    if not seq:
        raise ValueError("plane_sequence must not be empty")
    for v in seq:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < _NUM_PLANES:
            raise ValueError(f"plane_sequence entries must be plane indices in [0, {_NUM_PLANES}), got {v!r}")


def _render(
    rng: np.random.Generator,
    patient: dict,
    num_frames: int,
    image_size: int,
    frame_skip: int,
    plane_sequence: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    sc = _sample_scene(rng, patient, num_frames, image_size, frame_skip, plane_sequence)
    frames = _render_frames(sc, rng, np.arange(num_frames))
    return frames, np.argmax(sc.weights, axis=1).astype(np.int32)


def render_video(
    rng: np.random.Generator,
    num_frames: int,
    image_size: int,
    frame_skip: int = 1,
    plane_sequence: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one video; frame i is the scene at raw time ``i * frame_skip / 25`` s.

    Args:
        rng: source of all randomness (patient anatomy, motion, sweep, speckle).
        num_frames: number of frames returned (>= 1).
        image_size: side S of the square frames (>= 16).
        frame_skip: raw 25 fps frames between consecutive returned frames (>= 1).
        plane_sequence: plane indices visited in order, each for a random-length segment with crossfades in
            between; ``None`` samples a typical sweep (sometimes a single plane).

    Returns:
        ``(frames, planes)``: uint8 ``[T, S, S]`` and int32 ``[T]`` (dominant plane of each frame).
    """
    _check_int("num_frames", num_frames, 1)
    _check_int("image_size", image_size, 16)
    _check_int("frame_skip", frame_skip, 1)
    _check_sequence(plane_sequence)
    return _render(rng, _sample_patient(rng), num_frames, image_size, frame_skip, plane_sequence)


def generate_videos(
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    frame_skip: int = 5,
    videos_per_patient: int = 2,
) -> list[Video]:
    """Unlabelled scan videos (``num_frames`` kept frames each, after frame skip).

    Video ``i`` belongs to patient ``i // videos_per_patient`` (ids ``"P0000"``, ``"P0001"``, ...); videos of a
    patient share its anatomy traits. Each video has its own random stream, so the first ``k`` videos do not
    depend on ``num_videos``.
    """
    _check_int("num_videos", num_videos, 1)
    _check_int("num_frames", num_frames, 1)
    _check_int("image_size", image_size, 16)
    _check_int("seed", seed, 0)
    _check_int("frame_skip", frame_skip, 1)
    _check_int("videos_per_patient", videos_per_patient, 1)
    return [generate_video(i, num_frames, image_size, seed, frame_skip, videos_per_patient) for i in range(num_videos)]


def generate_video(
    index: int, num_frames: int, image_size: int, seed: int, frame_skip: int = 5, videos_per_patient: int = 2
) -> Video:
    """Video `index` of :func:`generate_videos` with the same arguments, rendered alone (for builders that make
    one video per worker)."""
    _check_int("index", index, 0)
    pat, k = divmod(index, videos_per_patient)
    patient = _sample_patient(np.random.default_rng([seed, _TAG_PATIENT, pat]))
    rng = np.random.default_rng([seed, _TAG_VIDEO, index])
    frames, planes = _render(rng, patient, num_frames, image_size, frame_skip, None)
    pid = f"P{pat:04d}"
    return Video(frames=frames, planes=planes, patient_id=pid, video_id=f"{pid}-v{k}")


def _split_counts(num_patients: int, fractions: tuple[float, float, float]) -> list[int]:
    raw = np.asarray(fractions, np.float64) * num_patients
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num_patients - counts.sum()]:
        counts[i] += 1
    return [int(c) for c in counts]


def generate_labelled_frames(
    num_patients: int,
    frames_per_patient: int,
    image_size: int,
    seed: int,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> dict[str, LabelledFrames]:
    """Labelled plane images for 'train', 'valid', 'test', split BY PATIENT (no patient in two splits).

    Patients (ids ``"L0000"``, ...) are disjoint from those of :func:`generate_videos` with any seed. Each
    patient's frames are drawn from two rendered sweep videos of that patient covering all five planes; every
    patient contributes frames of every class (counts as equal as possible, so ``frames_per_patient >= 5``),
    and only frames whose dominant plane has crossfade weight >= 0.9 are used. Patients are assigned to splits
    by a seeded permutation in proportions ``split_fractions``.
    """
    _check_int("num_patients", num_patients, 3)
    _check_int("frames_per_patient", frames_per_patient, _NUM_PLANES)
    _check_int("image_size", image_size, 16)
    _check_int("seed", seed, 0)
    fr = tuple(float(f) for f in split_fractions)
    if len(fr) != 3 or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three positive numbers summing to 1, got {split_fractions!r}")
    counts = _split_counts(num_patients, fr)
    if min(counts) < 1:
        raise ValueError(
            f"num_patients={num_patients} is too small to give every split a patient with "
            f"split_fractions={split_fractions!r}"
        )
    order = np.random.default_rng([seed, _TAG_SPLIT]).permutation(num_patients)
    split_of = np.empty(num_patients, int)
    split_of[order[: counts[0]]] = 0
    split_of[order[counts[0] : counts[0] + counts[1]]] = 1
    split_of[order[counts[0] + counts[1] :]] = 2

    images: list[list[np.ndarray]] = [[], [], []]
    labels: list[list[np.ndarray]] = [[], [], []]
    pids: list[list[str]] = [[], [], []]
    num_videos = 2
    for pat in range(num_patients):
        rng = np.random.default_rng([seed, _TAG_LABELLED, pat])
        patient = _sample_patient(rng)
        # Per class frame counts (as equal as possible), then spread over the videos.
        per_class = np.full(_NUM_PLANES, frames_per_patient // _NUM_PLANES)
        per_class[rng.permutation(_NUM_PLANES)[: frames_per_patient % _NUM_PLANES]] += 1
        per_video = np.zeros((num_videos, _NUM_PLANES), int)
        for cls in range(_NUM_PLANES):
            first = int(rng.integers(num_videos))
            for j in range(per_class[cls]):
                per_video[(first + j) % num_videos, cls] += 1
        for v in range(num_videos):
            if per_video[v].sum() == 0:
                continue
            frame_skip = int(rng.integers(2, 6))
            need = int(per_video[v].max())
            timeline = 12 * need + 80  # only the chosen frames are rendered, so a long timeline is cheap
            seq = list(SWEEP_ORDER) if rng.random() < 0.5 else list(SWEEP_ORDER[::-1])
            sc = _sample_scene(rng, patient, timeline, image_size, frame_skip, seq)
            dominant = np.argmax(sc.weights, axis=1)
            purity = sc.weights.max(axis=1)
            chosen = []
            for cls in range(_NUM_PLANES):
                if per_video[v, cls] == 0:
                    continue
                cand = np.nonzero((dominant == cls) & (purity >= 0.9))[0]
                if len(cand) == 0:
                    cand = np.nonzero(dominant == cls)[0]
                replace = len(cand) < per_video[v, cls]
                chosen.append(rng.choice(cand, per_video[v, cls], replace=replace))
            idx = np.sort(np.concatenate(chosen))
            sp = split_of[pat]
            images[sp].append(_render_frames(sc, rng, idx))
            labels[sp].append(dominant[idx].astype(np.int32))
            pids[sp] += [f"L{pat:04d}"] * len(idx)

    result = {}
    for sp, name in enumerate(("train", "valid", "test")):
        result[name] = LabelledFrames(
            images=np.concatenate(images[sp], 0),
            labels=np.concatenate(labels[sp], 0),
            patient_ids=np.asarray(pids[sp]),
        )
    return result
