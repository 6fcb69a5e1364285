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

Modules: `scene` (what a video shows: anatomy, motion, sweep, style), `rendering` (how a scene becomes frames),
`dataset` (videos and labelled sets from seeds).
"""

from fetalssl_jax.data.synthetic.dataset import generate_labelled_frames, generate_video, generate_videos
from fetalssl_jax.data.synthetic.rendering import fan_bounds_mask, render_video
from fetalssl_jax.data.synthetic.scene import FAN_MAX_HALF_ANGLE_DEG, FAN_MAX_RADIUS, FPS, PLANES, SWEEP_ORDER

__all__ = [
    "FAN_MAX_HALF_ANGLE_DEG",
    "FAN_MAX_RADIUS",
    "FPS",
    "PLANES",
    "SWEEP_ORDER",
    "fan_bounds_mask",
    "generate_labelled_frames",
    "generate_video",
    "generate_videos",
    "render_video",
]
