"""How a sampled scene becomes uint8 frames: fan, body and anatomy, speckle, depth attenuation, gain/TGC and log
compression; one video of a patient."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fetalssl_jax.data.synthetic.scene import (
    F32,
    FAN_MAX_HALF_ANGLE_DEG,
    FAN_MAX_RADIUS,
    NUM_PLANES,
    Scene,
    capsule_sd,
    circle_sd,
    ellipse_sd,
    paint,
    paint_plane,
    sample_patient,
    sample_scene,
    soft,
    speckle_noise,
    vessel,
)


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
# Rendering.
# ----------------------------------------------------------------------------------------------------------


def render_frames(sc: Scene, rng: np.random.Generator, frame_idx: np.ndarray) -> np.ndarray:
    """Renders the kept frames ``frame_idx`` of a scene, returns uint8 ``[n, S, S]``."""
    s = sc.size
    c = (np.arange(s, dtype=F32) + 0.5) / s
    x = (c[None, :] - 0.5)[None]
    y = c[:, None][None]
    r = np.sqrt(x * x + y * y)
    th = np.arctan2(x, y)
    fan = (r >= sc.r_min) & (r <= sc.r_max) & (np.abs(th) <= sc.half_angle)
    px = F32(1.0 / s)
    st = sc.style
    out = np.zeros((len(frame_idx), s, s), np.uint8)
    chunk = max(1, (1 << 18) // (s * s))
    # Lateral taper near the fan edges and a near-field fade in.
    edge = np.clip((sc.half_angle - np.abs(th)) / 0.12, 0.0, 1.0)
    taper = (0.55 + 0.45 * edge) * np.clip((r - sc.r_min) / 0.05, 0.3, 1.0)
    atten = np.exp(-math.log1p(sc.compress) * sc.atten * r).astype(F32) * taper
    spine_pts = np.array([(0.0, 0.78, 0.1), (-0.11, 0.9, 0.065), (0.11, 0.9, 0.065)])
    occ_b = np.concatenate([sc.ribs, spine_pts[:1, :2]], 0).astype(F32)  # occluders: ribs then spine
    occ_w = np.array([0.05] * len(sc.ribs) + [0.13], F32)
    occ_t = np.array([1.0 - st["rib_shadow"]] * len(sc.ribs) + [1.0 - st["spine_shadow"]], F32)

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

        e = np.full((n, s, s), st["fluid"], F32)
        paint(e, soft(r - sc.maternal_depth - 0.015 * np.sin(30 * x), px), st["maternal"])
        # Body with low-frequency echotexture.
        d_body = ellipse_sd(a, b, 0.0, 0.0, 1.0, sc.patient["body_aspect"])
        tex = 1.0
        for kx, kb, ph, amp in sc.tex.tolist():
            tex = tex + (st["tex_amp"] * amp / 2.0) * np.sin(kx * a + kb * b + ph)
        paint(e, soft(d_body, eps), st["tissue"] * tex)
        paint(e, soft(np.abs(d_body + 0.03) - np.maximum(0.025, 0.8 * eps), eps), st["skin"])

        # Plane-specific anatomy, crossfaded.
        w = sc.weights[idx]
        active = [k for k in range(NUM_PLANES) if np.any(w[:, k] > 0)]
        if len(active) == 1:
            planes_e = e
            paint_plane(active[0], planes_e, a, b, eps, beat, sc)
        else:
            planes_e = np.zeros_like(e)
            for k in active:
                sel = np.nonzero(w[:, k] > 0)[0]
                ek = e[sel]
                paint_plane(k, ek, a[sel], b[sel], eps[sel], beat[sel], sc)
                planes_e[sel] += w[sel, k].astype(F32)[:, None, None] * ek
        e = planes_e

        # Shared anatomy: descending aorta, spine, ribs, distractors.
        d = circle_sd(a, b, -0.17, 0.58, 0.07 * (1.0 + 0.5 * beat))
        vessel(e, d, eps, np.maximum(0.03, 1.2 * eps), st["dao"], st["wall"])
        d_sp = None
        for sa, sb, sr in spine_pts.tolist():
            dd = circle_sd(a, b, sa, sb, sr)
            d_sp = dd if d_sp is None else np.minimum(d_sp, dd)
        paint(e, soft(d_sp, eps), st["spine"])
        d_rib = None
        for ra, rb in sc.ribs.tolist():
            dd = circle_sd(a, b, ra, rb, 0.05)
            d_rib = dd if d_rib is None else np.minimum(d_rib, dd)
        paint(e, soft(d_rib, eps), st["rib"])
        for ca, cb, cr in sc.cysts.tolist():
            vessel(e, circle_sd(a, b, ca, cb, cr), eps, np.maximum(0.02, eps), st["cyst"], st["wall"])
        for a0, b0, a1, b1, br in sc.bars.tolist():
            paint(e, soft(capsule_sd(a, b, a0, b0, a1, b1, br), eps), st["bar"])

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
        fresh = speckle_noise(rng, (2, n), s, sc.taps_x, sc.taps_y)
        pp = math.sqrt(sc.speckle_persist)
        pf = math.sqrt(1.0 - sc.speckle_persist)
        re = pp * sc.speckle_field[0] + pf * fresh[0]
        im = pp * sc.speckle_field[1] + pf * fresh[1]
        amp = np.sqrt(re * re + im * im) / F32(math.sqrt(math.pi / 2.0))  # Rayleigh, mean 1
        speckle = amp**sc.speckle_power

        # Echogenicity is defined in display units; go to linear amplitude, apply speckle, attenuation and
        # (time-gain-compensated) gain there, then log-compress back.
        big_l = F32(math.log1p(sc.compress))
        lin = np.expm1(e * big_l) / F32(sc.compress)
        gain = sc.gain[idx][:, None, None] * np.exp(big_l * sc.tgc[idx][:, None, None] * r)
        img = lin * speckle * atten * gain
        img = np.log1p(F32(sc.compress) * img) / big_l
        img = np.clip(img * 255.0, 0.0, 255.0) * fan
        out[start : start + n] = img.astype(np.uint8)
    return out


# ----------------------------------------------------------------------------------------------------------
# Public API.
# ----------------------------------------------------------------------------------------------------------


def check_int(name: str, value: int, minimum: int) -> None:
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
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < NUM_PLANES:
            raise ValueError(f"plane_sequence entries must be plane indices in [0, {NUM_PLANES}), got {v!r}")


def render_patient(
    rng: np.random.Generator,
    patient: dict,
    num_frames: int,
    image_size: int,
    frame_skip: int,
    plane_sequence: Sequence[int] | None,
) -> tuple[np.ndarray, np.ndarray]:
    sc = sample_scene(rng, patient, num_frames, image_size, frame_skip, plane_sequence)
    frames = render_frames(sc, rng, np.arange(num_frames))
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
    check_int("num_frames", num_frames, 1)
    check_int("image_size", image_size, 16)
    check_int("frame_skip", frame_skip, 1)
    _check_sequence(plane_sequence)
    return render_patient(rng, sample_patient(rng), num_frames, image_size, frame_skip, plane_sequence)
