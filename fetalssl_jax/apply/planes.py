"""Standard-plane detection in a recorded scan (as SonoNet): per-frame plane probabilities of a classifier, an
optional temporal smoothing, the best frame(s) of each plane above a threshold, a timeline plot and a summary.

A classifier saved with a known-frame rule (`downstream/trust.py`) also scores every frame; a frame is a known plane
where its score is at most the rule's threshold and it is no colour-Doppler frame (the classifier has seen gray
B-mode scans only; `sector.colour_doppler`). Other frames are "not a known plane": they are never a best frame.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d

from fetalssl_jax.apply.embedding import as_frames
from fetalssl_jax.apply.loading import PlaneClassifier
from fetalssl_jax.apply.onnx_model import OnnxClassifier
from fetalssl_jax.downstream.report import save_figure
from fetalssl_jax.downstream.trust import predict_trusted


def predict(
    classifier: PlaneClassifier | OnnxClassifier, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Class probabilities float32 [N, C] (columns: `classifier.class_names`; calibrated with the classifier's
    temperature) of uint8 frames [N, H, W(, C)] or a list of images of any sizes; the evaluation's preprocessing and
    fixed-size batches. An ONNX classifier takes frames at its input size only."""
    return outputs_fn(classifier, batch_size)(as_frames(frames, classifier.image_size))[:, :-1]


def outputs_fn(classifier: PlaneClassifier | OnnxClassifier, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """float32 [N, C + 1] of a batch of uint8 frames: the calibrated probabilities and, in the last column, the
    known-frame score (NaN for a classifier without the rule); fixed-size batches of `batch_size`, one compiled
    program (an ONNX classifier runs batches of any size as they come)."""
    if isinstance(classifier, OnnxClassifier):
        return classifier.outputs
    model, size, variables = classifier.spec.model(), classifier.image_size, classifier.variables
    return lambda x: predict_trusted(model, size, variables, classifier.trust, x, batch_size)


def known_frames(
    classifier: PlaneClassifier | OnnxClassifier, scores: np.ndarray, doppler: np.ndarray | None = None
) -> np.ndarray | None:
    """bool [N]: the frames that are known planes (score at most the classifier's threshold, not colour Doppler:
    `doppler`, bool [N] or None for none); None for a classifier without a known-frame rule."""
    if classifier.ood_threshold is None:
        return None
    known = np.asarray(scores) <= classifier.ood_threshold
    return known if doppler is None else known & ~np.asarray(doppler, bool)


def smooth(probabilities: np.ndarray, window: int) -> np.ndarray:
    """Moving average over `window` consecutive frames (centred; the edge frames repeated at the ends), so one
    frame's flicker does not make or break a plane; window 1 leaves the probabilities as they are."""
    if window < 1:
        raise ValueError(f"smoothing window must be >= 1 frame, got {window}")
    if window == 1:
        return np.asarray(probabilities, np.float32)
    return uniform_filter1d(np.asarray(probabilities, np.float64), window, axis=0, mode="nearest").astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PlaneFrame:
    """One best frame of a plane: its row in the video's kept frames, the frame number, the probability."""

    row: int
    frame: int
    probability: float


def best_frames(
    probabilities: np.ndarray, frame_index: np.ndarray, threshold: float = 0.5, top_k: int = 1, min_separation: int = 1,
    known: np.ndarray | None = None,
) -> list[list[PlaneFrame]]:  # fmt: skip
    """Per class, up to `top_k` frames whose probability is >= `threshold`, most probable first, rows at least
    `min_separation` kept frames apart (so the 2nd best is not the neighbour of the 1st), among the `known` rows
    (bool [N]; None: all); [] where none is."""
    found = []
    for c in range(probabilities.shape[1]):
        p = probabilities[:, c]
        chosen: list[int] = []
        for row in np.argsort(-p, kind="stable"):
            if p[row] < threshold or len(chosen) == top_k:
                break
            if known is not None and not known[row]:
                continue
            if all(abs(int(row) - r) >= min_separation for r in chosen):
                chosen.append(int(row))
        found.append([PlaneFrame(r, int(frame_index[r]), float(p[r])) for r in chosen])
    return found


def file_safe(name: str) -> str:
    """A class name as part of a file name: '3VV/3VT' -> '3VV-3VT'."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def summarise(
    class_names: Sequence[str], found: list[list[PlaneFrame]], files: list[list[str]], settings: dict[str, Any]
) -> dict[str, Any]:
    """summary.json of one video: planes found (frames, probabilities, PNGs) and planes not found."""
    planes = {
        name: [{"frame": f.frame, "row": f.row, "probability": round(f.probability, 6), "png": file}
               for f, file in zip(frames, names, strict=True)]
        for name, frames, names in zip(class_names, found, files, strict=True) if frames
    }  # fmt: skip
    return {**settings, "planes_found": planes, "planes_not_found": [n for n, f in zip(class_names, found,
                                                                                   strict=True) if not f]}  # fmt: skip


def plot_timeline(
    probabilities: np.ndarray, frame_index: np.ndarray, class_names: Sequence[str], found: list[list[PlaneFrame]],
    threshold: float, path: pathlib.Path, title: str = "", known: np.ndarray | None = None,
) -> None:  # fmt: skip
    """Probability of each plane over the video (frame numbers), the threshold dashed, best frames marked, frames
    that are not a known plane (`known` False) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    if known is not None and not np.all(known):
        half = max(float(np.min(np.diff(frame_index))) / 2, 0.5) if len(frame_index) > 1 else 0.5
        for i in np.flatnonzero(~np.asarray(known)):
            ax.axvspan(frame_index[i] - half, frame_index[i] + half, color="0.85", lw=0)
        ax.plot([], [], "s", color="0.85", label="not a known plane")
    for c, name in enumerate(class_names):
        (line,) = ax.plot(frame_index, probabilities[:, c], lw=1.4, label=name)
        for f in found[c]:
            ax.plot(f.frame, f.probability, "o", ms=8, mfc="none", mew=2, color=line.get_color())
            ax.annotate(f"{f.probability:.2f}", (f.frame, f.probability), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=7, color=line.get_color())  # fmt: skip
    ax.axhline(threshold, ls="--", lw=0.8, color="gray")
    ax.set_ylim(-0.02, 1.1)
    ax.set_xlabel("frame")
    ax.set_ylabel("plane probability")
    ax.legend(fontsize=8, ncol=len(class_names), loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.set_title(title or "plane probabilities (circles: best frames)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
