"""Few-label subsets of the training split and the class weights of the loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split

LABEL_FRACTIONS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01)  # the paper's 100 ... 1 %


def label_subset(labels: np.ndarray, fraction: float, seed: int, class_names: Sequence[str]) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of `labels` (scikit-learn, `seed`).

    Raises ValueError, naming the class, when the subset would leave a class of the training split without a
    sample (a classifier cannot learn a class it never sees, and the class weight would be infinite).
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    present = np.unique(labels)
    counts = {class_names[c]: int(np.sum(labels == c)) for c in present}
    absent = [class_names[c] for c in range(len(class_names)) if c not in present]
    if absent:
        raise ValueError(f"the training split has no sample of class(es) {absent}; counts: {counts}")
    if fraction == 1.0:
        return np.arange(len(labels))
    keep = int(round(fraction * len(labels)))
    if keep < len(present):
        raise ValueError(
            f"{fraction:.0%} of {len(labels)} training images is {keep} images, fewer than the {len(present)} "
            f"classes: some class would have no sample (counts: {counts}); use a larger fraction or more labels"
        )
    indices, _ = train_test_split(
        np.arange(len(labels)), train_size=keep, stratify=labels, random_state=seed, shuffle=True
    )
    missing = sorted(set(present) - set(labels[indices]))
    if missing:
        raise ValueError(
            f"a stratified {fraction:.0%} subset ({keep} images) leaves class(es) "
            f"{[class_names[c] for c in missing]} with no sample (counts: {counts})"
        )
    return np.sort(indices)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """weight_c = N / count_c (the reference's class-weighted cross-entropy); float32 [num_classes]."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    if np.any(counts == 0):
        raise ValueError(f"class weights need every class in the training labels; counts: {counts.astype(int)}")
    return (len(labels) / counts).astype(np.float32)
