"""Use a trained backbone or classifier on new scans: embed frames, find the standard planes in a video, choose
the frames worth labelling. Numpy in, numpy out::

    from fetalssl_jax import apply

    backbone = apply.load_backbone("workdirs/barlow_twins")   # or an exported backbone, a classifier run, a
    features = apply.embed(backbone, frames)                   # .safetensors file; frames: uint8 [N, H, W]
    chosen = apply.select(features, 25, groups=video_ids, positions=frame_numbers, min_gap=2)
    classifier = apply.load_classifier("runs/classify")
    probabilities = apply.predict(classifier, frames)          # [N, C], columns classifier.class_names

The command-line tasks (configs/embed.py, predict.py, select.py) are in `apply/tasks.py`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fetalssl_jax.apply.embedding import Embeddings, embed, embed_input
from fetalssl_jax.apply.inputs import FrameBlock, Input, open_input
from fetalssl_jax.apply.loading import Backbone, PlaneClassifier, load_backbone, load_classifier
from fetalssl_jax.apply.planes import best_frames, predict, smooth
from fetalssl_jax.apply.selection import DEFAULT_STRATEGY, STRATEGIES, patient_rows
from fetalssl_jax.errors import DataError

__all__ = [
    "Backbone",
    "Embeddings",
    "FrameBlock",
    "Input",
    "PlaneClassifier",
    "best_frames",
    "embed",
    "embed_input",
    "load_backbone",
    "load_classifier",
    "open_input",
    "predict",
    "select",
    "smooth",
    "STRATEGIES",
]


def select(
    embeddings: np.ndarray | Embeddings,
    budget: int,
    *,
    strategy: str = DEFAULT_STRATEGY,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    min_gap: int = 0,
    seed: int = 0,
    patients: Mapping[str, str] | None = None,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """Row indices of `budget` frames to label, in the order of choice, by `strategy` (`apply/selection.py`:
    'typical', the default: the most typical frames of k-means clusters; 'k-center': a covering of the embeddings;
    'random'). `groups` (video or patient per row) spreads the choice over videos, `positions` (frame number per row)
    with `min_gap` skips frames of a group within that many frames of a chosen one. An `Embeddings` brings its own
    groups (source ids) and positions (frame indices); with `patients` ({source id: patient id}, e.g.
    `Input.patients`) the choice spreads over patients instead, and `min_gap` still acts within each video. Rows in
    `labelled` (chosen before) are never chosen again and count as chosen for the spread and min_gap. A budget
    larger than the number of rows not labelled is an error."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy = {strategy!r}: must be one of {', '.join(map(repr, STRATEGIES))}")
    if isinstance(embeddings, Embeddings):
        if patients is not None and groups is None and positions is None:
            groups, positions = patient_rows(embeddings.source_ids, embeddings.frame_index, patients, min_gap)
        groups = embeddings.source_ids if groups is None else groups
        positions = embeddings.frame_index if positions is None else positions
        embeddings = embeddings.features
    elif patients is not None:
        raise ValueError("patients needs an Embeddings (its source ids); with an array, give groups and positions")
    n = len(embeddings)
    labelled = np.unique(np.asarray([] if labelled is None else labelled, np.int64))
    if budget > n - len(labelled):
        before = f", {len(labelled)} of them chosen before" if len(labelled) else ""
        raise DataError(f"budget = {budget}: the input has only {n} frames{before}; choose a budget <= "
                        f"{n - len(labelled)}")  # fmt: skip
    return np.asarray(STRATEGIES[strategy](np.asarray(embeddings), int(budget), groups=groups, positions=positions,
                                           min_gap=min_gap, seed=seed, labelled=labelled))  # fmt: skip
