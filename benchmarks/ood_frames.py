"""Does predict say "not a known plane" where it should? A folder of frames that are no plane a classifier knows,
predicted with each classifier; the share of each kind that predict still reports as a plane (`known` true).

  python benchmarks/ood_frames.py --classifiers runs/classify_random,runs/classify_barlow [--per_kind 50]
      [--size 128] [--seed 0] [--out DIR]

Kinds (`KINDS`), `--per_kind` PNGs each at `--size` px, generated here (nothing is downloaded):
- black: all-zero frames (the probe lifted, a frozen blank screen);
- colour_doppler: generated scans (data/synthetic) with a colour-flow overlay as scanners draw it: a box outline in
  the sector, red-to-yellow and blue-to-cyan velocity colours on its darkest (blood) 30-60 %, and a colour bar;
- dead_leaves: occluding discs of power-law sizes, gray or colour (the dead-leaves model of natural-image
  statistics);
- pink_noise: 1/f^a noise, a in [1.5, 2.5], gray or colour (natural-image spectra);
- text: screenshots of lines of text, dark on light or light on dark;
- checkerboard: squares of 3 to 32 px, two random gray levels;
- scans: generated scans of new patients without any overlay, which a classifier should know (the share known).
The folder is predicted as a user would (`configs/predict.py` defaults: de-identified, stretched to the classifier's
size); the classifier's own test split's known share is read from its results.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import time

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from fetalssl_jax.data.synthetic import render_video

REPO = pathlib.Path(__file__).resolve().parents[1]
KINDS = ("black", "colour_doppler", "dead_leaves", "pink_noise", "text", "checkerboard", "scans")
NOT_PLANES = KINDS[:-1]
WORDS = ("patient", "exam", "report", "gain", "depth", "frequency", "the", "of", "and", "heart", "view", "normal",
         "measurement", "cm", "Hz", "2026", "notes", "image", "settings", "file", "edit", "help", "window")  # fmt: skip


def _scans(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """`n` gray generated scans, one random frame of each of `n` new sweeps."""
    out = []
    for _ in range(n):
        frames, _ = render_video(rng, 8, size, frame_skip=3)
        out.append(frames[int(rng.integers(len(frames)))])
    return out


def colour_doppler(scan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A gray scan [S, S] as an RGB frame with a colour-flow overlay (see the module docstring)."""
    s = scan.shape[0]
    rgb = np.repeat(scan[..., None], 3, axis=-1).astype(np.float32)
    top, left = int(rng.uniform(0.2, 0.4) * s), int(rng.uniform(0.25, 0.4) * s)
    bottom, right = top + int(rng.uniform(0.3, 0.45) * s), left + int(rng.uniform(0.25, 0.35) * s)
    yy, xx = np.mgrid[0:s, 0:s] / s
    velocity = np.sin(2 * np.pi * (rng.uniform(1, 3) * yy + rng.uniform(-2, 2) * xx) + rng.uniform(0, 2 * np.pi))
    inside = np.zeros((s, s), bool)
    inside[top:bottom, left:right] = True
    # blood is dark: flow fills the darkest 30-60 % of the box in the smoothed scan (chambers, vessels, and the
    # blooming around them), never outside the sector
    smooth = gaussian_filter(scan.astype(np.float32), 0.02 * s)
    flow = inside & (smooth <= np.percentile(smooth[inside], rng.uniform(30, 60))) & (scan > 0)
    speed = np.abs(velocity)
    hot = np.stack([255 * (0.4 + 0.6 * speed), 255 * np.clip(2 * speed - 1.2, 0, 1), np.zeros_like(speed)], -1)
    cold = np.stack([np.zeros_like(speed), 255 * np.clip(2 * speed - 1.2, 0, 1), 255 * (0.4 + 0.6 * speed)], -1)
    colours = np.where((velocity > 0)[..., None], hot, cold)
    rgb[flow] = colours[flow]
    rgb[[top, bottom - 1], left:right] = rgb[top:bottom, [left, right - 1]] = 200  # the box outline
    bar = np.linspace(1, -1, int(0.4 * s))[:, None]
    rgb[int(0.2 * s) : int(0.2 * s) + len(bar), 2:6] = np.where(
        (bar > 0)[..., None], [255, 0, 0] * np.abs(bar)[..., None], [0, 0, 255] * np.abs(bar)[..., None]
    )
    return np.clip(rgb, 0, 255).astype(np.uint8)


def dead_leaves(size: int, rng: np.random.Generator) -> np.ndarray:
    """Occluding discs with radii of density ~ r^-3 (the dead-leaves model), gray or colour."""
    colour = rng.random() < 0.6
    image = np.zeros((size, size, 3), np.float32) + rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(int(rng.integers(300, 600))):
        r = size * 0.02 / np.sqrt(rng.uniform(0.0025, 1.0))  # 2 % to 40 % of the side
        cy, cx = rng.uniform(-r, size + r, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disc] = rng.uniform(0, 255, 3) if colour else rng.uniform(0, 255)
    return image.astype(np.uint8) if colour else image[..., 0].astype(np.uint8)


def pink_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Noise with an amplitude spectrum ~ 1/f^a, a in [1.5, 2.5], stretched to 0..255, gray or colour."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij"))
    f[0, 0] = 1.0
    a = rng.uniform(1.5, 2.5)
    channels = 3 if rng.random() < 0.5 else 1
    out = []
    for _ in range(channels):
        field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / f**a))
        out.append(255 * (field - field.min()) / max(np.ptp(field), 1e-9))
    image = np.stack(out, -1).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def text_screenshot(size: int, rng: np.random.Generator) -> np.ndarray:
    """Lines of random words in PIL's default font, dark on light or light on dark."""
    dark = rng.random() < 0.5
    image = Image.new("L", (size, size), 20 if dark else 245)
    draw = ImageDraw.Draw(image)
    for y in range(2, size - 10, int(rng.integers(11, 16))):
        line = " ".join(rng.choice(WORDS, int(rng.integers(2, 8))))
        draw.text((int(rng.integers(2, 10)), y), line, fill=230 if dark else 15)
    return np.asarray(image)


def checkerboard(size: int, rng: np.random.Generator) -> np.ndarray:
    """Squares of 3 to 32 px at a random phase in two random gray levels."""
    side = int(rng.integers(3, 33))
    yy, xx = np.mgrid[0:size, 0:size] + rng.integers(0, side, 2)[:, None, None]
    low, high = sorted(rng.integers(0, 256, 2))
    return np.where((yy // side + xx // side) % 2 == 0, low, high).astype(np.uint8)


def make_frames(kind: str, n: int, size: int, seed: int) -> list[np.ndarray]:
    """`n` uint8 frames of `kind` (`KINDS`) at `size` px, gray [S, S] or RGB [S, S, 3]."""
    rng = np.random.default_rng([seed, KINDS.index(kind)])
    if kind == "black":
        return [np.zeros((size, size), np.uint8) for _ in range(n)]
    if kind == "scans":
        return _scans(n, size, rng)
    if kind == "colour_doppler":
        return [colour_doppler(scan, rng) for scan in _scans(n, size, rng)]
    make = {"dead_leaves": dead_leaves, "pink_noise": pink_noise, "text": text_screenshot,
            "checkerboard": checkerboard}[kind]  # fmt: skip
    return [make(size, rng) for _ in range(n)]


def write_folder(root: pathlib.Path, per_kind: int, size: int, seed: int, kinds=KINDS) -> dict[str, str]:
    """`per_kind` PNGs of every kind in `root`/<kind>/; {file path relative to root: kind}."""
    files = {}
    for kind in kinds:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(make_frames(kind, per_kind, size, seed)):
            Image.fromarray(frame).save(root / kind / f"{i:03d}.png")
            files[f"{kind}/{i:03d}.png"] = kind
    return files


def known_shares(predict_dir: pathlib.Path, files: dict[str, str], threshold: float) -> dict[str, dict[str, float]]:
    """Per kind, the share of its frames predict reports as known (`known` true) in predictions.csv, the share whose
    score alone is at most `threshold` (the colour rule aside), and the mean score; sources.csv maps the salted ids
    to the files."""
    with open(predict_dir / "sources.csv") as f:
        path_of = {row["source_id"]: row["path"] for row in csv.DictReader(f)}
    with open(predict_dir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for kind in dict.fromkeys(files.values()):
        mine = [r for r in rows if files[path_of[r["source_id"]]] == kind]
        scores = np.array([float(r["ood_score"]) for r in mine])
        out[kind] = {"frames": len(mine), "known": float(np.mean([r["known"] == "true" for r in mine])),
                     "score_known": float(np.mean(scores <= threshold)),
                     "mean_score": float(np.mean(scores))}  # fmt: skip
    return out


def main() -> None:
    from fetalssl_jax.apply import load_classifier
    from fetalssl_jax.apply.tasks import run_predict
    from fetalssl_jax.config_lib import load_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classifiers", required=True, help="comma-separated classification runs (or .onnx)")
    parser.add_argument("--per_kind", type=int, default=50)
    parser.add_argument("--size", type=int, default=64, help="px; the classifier's training size (scans of it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="workdirs/ood_frames")
    args = parser.parse_args()
    start, out = time.perf_counter(), pathlib.Path(args.out)
    files = write_folder(out / "frames", args.per_kind, args.size, args.seed)
    result = {"args": vars(args), "classifiers": {}}
    for spec in args.classifiers.split(","):
        config = load_config(str(REPO / "configs" / "predict.py"))
        config.classifier, config.input, config.input_type = spec, str(out / "frames"), "images"
        config.overwrite = True
        config.progress_bar = False
        workdir = out / f"predict_{pathlib.Path(spec).name}"
        run_predict(config, workdir)
        shares = known_shares(workdir, files, load_classifier(spec).ood_threshold)
        results = pathlib.Path(spec) / "results.json"
        test = json.loads(results.read_text()).get("ood", {}) if results.is_file() else {}
        result["classifiers"][spec] = {
            "kinds": shares, "threshold": load_classifier(spec).ood_threshold,
            "not_planes_known": float(np.mean([shares[k]["known"] for k in NOT_PLANES])),
            "not_planes_score_known": float(np.mean([shares[k]["score_known"] for k in NOT_PLANES])),
            "test_split_known": test.get("test_known_fraction"),
        }  # fmt: skip
    print(format_table(result))
    (out / "ood_frames.json").write_text(json.dumps({**result, "wall_s": time.perf_counter() - start}, indent=1))
    (out / "ood_frames.md").write_text(format_table(result) + "\n")


def format_table(result: dict) -> str:
    """Markdown: per classifier, the share of each kind that predict reports as a known plane (in brackets: by the
    score alone, without the colour rule)."""
    lines = ["| classifier | " + " | ".join(KINDS) + " | all not-planes | its test split |",
             "|---|" + "---:|" * (len(KINDS) + 2)]  # fmt: skip
    for spec, r in result["classifiers"].items():
        cells = [f"{100 * r['kinds'][k]['known']:.1f} % ({100 * r['kinds'][k]['score_known']:.1f} %)" for k in KINDS]
        test = "" if r["test_split_known"] is None else f"{100 * r['test_split_known']:.1f} %"
        lines.append(f"| {pathlib.Path(spec).name} | " + " | ".join(cells) + f" | {100 * r['not_planes_known']:.1f} % "
                     f"({100 * r['not_planes_score_known']:.1f} %) | {test} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
