"""Standard-plane detection in a recorded scan (as SonoNet): per-frame plane probabilities of a classifier, an
optional temporal smoothing, the best frame(s) of each plane above a threshold, a timeline plot and a summary.
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
from fetalssl_jax.downstream.classification import predict_probabilities
from fetalssl_jax.downstream.report import save_figure


def predict(
    classifier: PlaneClassifier | OnnxClassifier, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Class probabilities float32 [N, C] (columns: `classifier.class_names`) of uint8 frames [N, H, W(, C)] or a
    list of images of any sizes; the evaluation's preprocessing and fixed-size batches. An ONNX classifier takes
    frames at its input size only."""
    return probabilities_fn(classifier, batch_size)(as_frames(frames, classifier.image_size))


def probabilities_fn(
    classifier: PlaneClassifier | OnnxClassifier, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities of a batch of uint8 frames (fixed-size batches of `batch_size`, one compiled program; an ONNX
    classifier runs batches of any size as they come)."""
    if isinstance(classifier, OnnxClassifier):
        return classifier.probabilities
    params, batch_stats = classifier.variables["params"], classifier.variables["batch_stats"]
    return lambda x: predict_probabilities(classifier.spec, params, batch_stats, x, batch_size)


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
    probabilities: np.ndarray, frame_index: np.ndarray, threshold: float = 0.5, top_k: int = 1, min_separation: int = 1
) -> list[list[PlaneFrame]]:
    """Per class, up to `top_k` frames whose probability is >= `threshold`, most probable first, rows at least
    `min_separation` kept frames apart (so the 2nd best is not the neighbour of the 1st); [] where none is."""
    found = []
    for c in range(probabilities.shape[1]):
        p = probabilities[:, c]
        chosen: list[int] = []
        for row in np.argsort(-p, kind="stable"):
            if p[row] < threshold or len(chosen) == top_k:
                break
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
    threshold: float, path: pathlib.Path, title: str = "",
) -> None:  # fmt: skip
    """Probability of each plane over the video (frame numbers), the threshold dashed, best frames marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
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
