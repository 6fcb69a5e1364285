"""The scene of one embedded video (numpy only): the plane classes and fan geometry, a patient's anatomy traits,
a video's motion, sweep and style, and the plane anatomies drawn as soft signed-distance shapes in normalised
coordinates (the geometry is described in `fetalssl_jax.data.synthetic`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

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

NUM_PLANES = len(PLANES)
_I3VV, _I4CH, _ILVOT, _IRVOT, _INON = range(NUM_PLANES)
F32 = np.float32
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------------------
# Small vectorised geometry helpers (all work on broadcastable float32 arrays).
# ----------------------------------------------------------------------------------------------------------


def soft(d: np.ndarray, eps: np.ndarray | float) -> np.ndarray:
    """Soft inside-mask of a signed distance field (1 inside, 0 outside, linear ramp over ``eps``)."""
    return np.clip(0.5 - d / eps, 0.0, 1.0)


def paint(e: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """In place: ``e = e * (1 - mask) + value * mask``."""
    e += mask * (value - e)


def ellipse_sd(p, q, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse."""
    dx = (p - cx) / rx
    dy = (q - cy) / ry
    return (np.sqrt(dx * dx + dy * dy) - 1.0) * np.minimum(rx, ry)


def circle_sd(p, q, cx, cy, rad):
    dx = p - cx
    dy = q - cy
    return np.sqrt(dx * dx + dy * dy) - rad


def capsule_sd(p, q, x0, y0, x1, y1, rad):
    """Signed distance to a capsule (segment (x0,y0)-(x1,y1) with radius ``rad``)."""
    vx, vy = x1 - x0, y1 - y0
    wx = p - x0
    wy = q - y0
    h = np.clip((wx * vx + wy * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    dx = wx - h * vx
    dy = wy - h * vy
    return np.sqrt(dx * dx + dy * dy) - rad


def vessel(e, d, eps, wall_w, lumen, wall):
    """Paints a vessel/chamber given its lumen signed distance: bright wall ring then dark lumen."""
    paint(e, soft(d - wall_w, eps), wall)
    paint(e, soft(d, eps), lumen)


def _gauss_taps(sigma: float) -> np.ndarray:
    if sigma < 0.3:
        return np.ones(1, F32)
    rad = max(1, int(math.ceil(2.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    return (k / k.sum()).astype(F32)


def speckle_noise(rng: np.random.Generator, lead: tuple[int, ...], size: int, taps_x, taps_y) -> np.ndarray:
    """Spatially correlated zero-mean noise ``[*lead, size, size]`` with unit variance.

    Blurred uniform noise (cheaper than Gaussian noise and close to Gaussian after the blur); generated with a
    margin so that the separable blur is a 'valid' convolution.
    """
    rx, ry = len(taps_x) // 2, len(taps_y) // 2
    x = rng.random((*lead, size + 2 * ry, size + 2 * rx), dtype=F32)
    x -= F32(0.5)
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
    x *= F32(scale)
    return x


# ----------------------------------------------------------------------------------------------------------
# Scene sampling.
# ----------------------------------------------------------------------------------------------------------


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def sample_patient(rng: np.random.Generator) -> dict:
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
        return [int(rng.integers(NUM_PLANES))]
    length = int(rng.choice([2, 3, 4, 5], p=[0.3, 0.3, 0.2, 0.2]))
    start = int(rng.integers(0, NUM_PLANES - length + 1))
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
class Scene:
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
    weights = np.zeros((len(raw_idx), NUM_PLANES), np.float64)
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


def sample_scene(
    rng: np.random.Generator,
    patient: dict,
    num_frames: int,
    image_size: int,
    frame_skip: int,
    plane_sequence: Sequence[int] | None,
) -> Scene:
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
    field = speckle_noise(rng, (2,), s, taps_x, taps_y)
    tex = np.stack(
        [
            rng.normal(0, 6.0, 4),
            rng.normal(0, 6.0, 4),
            rng.uniform(0, _TWO_PI, 4),
            rng.uniform(0.3, 1.0, 4),
        ],
        -1,
    )
    return Scene(
        size=s,
        cx=dx.astype(F32),
        cy=(cy0 + dy).astype(F32),
        phi=phi.astype(F32),
        radius=(radius0 * zoom).astype(F32),
        beat=beat.astype(F32),
        beat_amp=beat_amp,
        gain=gain.astype(F32),
        tgc=tgc.astype(F32),
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


def _heart_coords(sc: Scene, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
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


def _paint_4ch(e, p, q, eps, beat, sc: Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat  # ventricles shrink in systole
    at = 1.0 - 0.7 * (sc.beat_amp - beat)  # atria fill in systole
    d_heart = ellipse_sd(p, q, 0.0, -0.05, 0.9 * cs, 1.05 * cs)
    paint(e, soft(d_heart - w, eps), st["wall"])  # pericardium
    paint(e, soft(d_heart, eps), st["myo"])
    # Septal cross (crux).
    paint(e, soft(np.maximum(np.abs(p) - w, np.abs(q + 0.05) - 0.9 * cs), eps), st["septum"])
    paint(e, soft(np.maximum(np.abs(q + 0.12 * cs) - w, np.abs(p) - 0.7 * cs), eps), st["septum"])
    gap = 0.5 * w + 0.05
    for side, val_v, val_a, rxv, ryv, rxa in (
        (1.0, st["lv"], st["la"], 0.3, 0.5, 0.3),
        (-1.0, st["rv"], st["ra"], 0.33, 0.44, 0.32),
    ):
        rxv_b = rxv * cs * vs
        ryv_b = ryv * cs * vs
        d = ellipse_sd(p, q, side * (gap + rxv * cs), 0.0 * cs + ryv * cs - 0.05, rxv_b, ryv_b)
        paint(e, soft(d, eps), val_v)
        ra_b = rxa * cs * at
        d = ellipse_sd(p, q, side * (gap + rxa * cs), -0.12 * cs - gap - 0.28 * cs, ra_b, 0.28 * cs * at)
        paint(e, soft(d, eps), val_a)


def _paint_lvot(e, p, q, eps, beat, sc: Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat
    d_heart = ellipse_sd(p, q, 0.0, 0.0, 0.85 * cs, 1.0 * cs)
    paint(e, soft(d_heart - w, eps), st["wall"])
    paint(e, soft(d_heart, eps), st["myo"])
    # Left ventricle (elongated) and the aorta leaving its base towards the right shoulder.
    d_lv = ellipse_sd(p, q, 0.15 * cs, 0.22 * cs, 0.33 * cs * vs, 0.55 * cs * vs)
    rad = 0.15 * vsc * (1.0 + 0.5 * beat)
    d_ao = capsule_sd(p, q, 0.05 * cs, -0.2 * cs, -0.45, -1.25, rad)
    d = np.minimum(d_lv, d_ao)
    paint(e, soft(d_ao - w, eps), st["wall"])
    paint(e, soft(d, eps), st["lv"])


def _paint_rvot(e, p, q, eps, beat, sc: Scene) -> None:
    st = sc.style
    cs = sc.patient["chamber_scale"]
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    vs = 1.0 - beat
    d_heart = ellipse_sd(p, q, -0.1, 0.15, 0.75 * cs, 0.85 * cs)
    paint(e, soft(d_heart - w, eps), st["wall"])
    paint(e, soft(d_heart, eps), st["myo"])
    d_rv = ellipse_sd(p, q, -0.2 * cs, 0.3 * cs, 0.36 * cs * vs, 0.42 * cs * vs)
    rad = 0.14 * vsc * (1.0 + 0.5 * beat)
    # Pulmonary trunk crossing over the aorta (round cross-section), then bifurcating.
    bx, by = 0.3, -0.95
    d_pa = capsule_sd(p, q, -0.15 * cs, 0.0, bx, by, rad)
    d_b1 = capsule_sd(p, q, bx, by, bx + 0.6, by - 0.25, 0.7 * rad)
    d_b2 = capsule_sd(p, q, bx, by, bx - 0.25, by - 0.55, 0.7 * rad)
    d_ao = circle_sd(p, q, -0.35, -0.55, 0.15 * vsc * (1.0 + 0.4 * beat))
    vessel(e, d_ao, eps, w, st["ao"], st["wall"])
    d_vessels = np.minimum(d_pa, np.minimum(d_b1, d_b2))
    paint(e, soft(d_vessels - w, eps), st["wall"])
    paint(e, soft(np.minimum(d_vessels, d_rv), eps), st["pa"])


def _paint_3vv(e, p, q, eps, beat, sc: Scene) -> None:
    st = sc.style
    vsc = sc.patient["vessel_scale"]
    w = np.maximum(0.06, 1.3 * eps)
    ang = sc.patient["vessel_line_angle"]
    ux, uy = math.cos(ang), math.sin(ang)
    ox, oy = 0.0, -0.2
    # Mediastinal soft tissue (thymus) behind which the vessels lie.
    d_med = ellipse_sd(p, q, 0.0, -0.2, 1.0, 0.75)
    paint(e, soft(d_med, 4 * eps) * 0.5, st["myo"])
    for tpos, rad0, key, pulse in ((-0.7, 0.3, "pa", 0.6), (0.0, 0.23, "ao", 0.6), (0.6, 0.15, "svc", 0.1)):
        rad = rad0 * vsc * (1.0 + pulse * beat)
        d = circle_sd(p, q, ox + tpos * ux, oy + tpos * uy, rad)
        vessel(e, d, eps, w, st[key], st["wall"])
    if sc.trachea:
        # Trachea: echogenic ring posterior-right of the aorta.
        tx, ty = ox + 0.25 * ux - 0.42 * uy, oy + 0.25 * uy + 0.42 * ux
        d = circle_sd(p, q, tx, ty, 0.12 * vsc)
        vessel(e, d, eps, 1.5 * w, st["trachea"], st["wall"])


def _paint_abdomen(e, a, b, eps, beat, sc: Scene) -> None:
    st = sc.style
    pt = sc.patient
    w = np.maximum(0.04, 1.3 * eps)
    # Liver: slightly different echotexture over the anterior-right half.
    d_liver = ellipse_sd(a, b, -0.3, -0.15, 0.7, 0.65)
    paint(e, soft(d_liver, 6 * eps) * 0.6, st["liver"])
    sx, sy, rx, ry = pt["stomach"]
    d = ellipse_sd(a, b, sx, sy, rx, ry)
    vessel(e, d, eps, w, st["stomach"], st["wall"])
    # Umbilical vein: curved tube from the anterior abdominal wall into the liver (3 capsules on a curve).
    bend = pt["uv_bend"]
    side = 1.0 if bend > 0 else -1.0
    pts = [(0.05 + bend * (1 - u) ** 2 - 0.25 * side * u * u, -0.95 + 0.85 * u) for u in (0.0, 0.35, 0.7, 1.0)]
    d_uv = None
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        dd = capsule_sd(a, b, x0, y0, x1, y1, 0.055)
        d_uv = dd if d_uv is None else np.minimum(d_uv, dd)
    vessel(e, d_uv, eps, w, st["uv"], st["wall"])


_PAINTERS = {_I4CH: _paint_4ch, _ILVOT: _paint_lvot, _IRVOT: _paint_rvot, _I3VV: _paint_3vv}


def paint_plane(k: int, e, a, b, eps, beat, sc: Scene) -> None:
    if k == _INON:
        _paint_abdomen(e, a, b, eps, beat, sc)
        return
    p, q, hs = _heart_coords(sc, a, b)
    _PAINTERS[k](e, p, q, eps / hs, beat, sc)
