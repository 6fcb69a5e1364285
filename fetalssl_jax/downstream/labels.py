"""Few-label subsets of the training split and the class weights of the loss.

A label budget is either a stratified fraction of the training split (the paper's) or a number of labelled images
per class (`labels_per_class` > 0): 1 % of a small labelled set can be one or two images of a class, while k images
per class says exactly what the classifier saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_class_weight

from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.few_label import draw_label_subsets

LABEL_FRACTIONS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01)  # the paper's 100 ... 1 %


def budget_name(fraction: float, labels_per_class: int = 0) -> str:
    """How tables name a label budget: '5/class' or '10 %'."""
    return f"{labels_per_class}/class" if labels_per_class > 0 else f"{100 * fraction:g} %"


def budget_dirname(fraction: float, labels_per_class: int = 0) -> str:
    """How directories name a label budget: '5perclass' or '10pct'."""
    return f"{labels_per_class}perclass" if labels_per_class > 0 else f"{100 * fraction:g}pct"


def _check_all_classes_present(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
    present = np.unique(labels)
    counts = {class_names[c]: int(np.sum(labels == c)) for c in present}
    absent = [class_names[c] for c in range(len(class_names)) if c not in present]
    if absent:
        raise DataError(f"the training split has no sample of class(es) {absent}; counts: {counts}")
    return counts


def per_class_subset(labels: np.ndarray, labels_per_class: int, seed: int, class_names: Sequence[str]) -> np.ndarray:
    """Sorted indices of exactly `labels_per_class` images of every class, drawn uniformly without replacement.

    The draw is the few-label evaluation's first draw for `seed` (eval/few_label.py), so a grid cell and the
    pretraining monitor's probes with the same seed and k see the same images. Raises ValueError naming every
    class that has fewer than `labels_per_class` training images, with its count.
    """
    labels = np.asarray(labels)
    counts = _check_all_classes_present(labels, class_names)
    short = {name: n for name, n in counts.items() if n < labels_per_class}
    if short:
        raise DataError(
            f"a budget of {labels_per_class} labelled images per class is more than the training split has of "
            + ", ".join(f"class {name!r} ({n} images)" for name, n in short.items())
            + "; use a smaller labels_per_class or more labelled patients"
        )
    return draw_label_subsets(labels, labels_per_class, 1, seed)[0]


def choose_labels(
    labels: np.ndarray, fraction: float, labels_per_class: int, seed: int, class_names: Sequence[str]
) -> np.ndarray:
    """The training subset of a label budget: `labels_per_class` images of every class when > 0, otherwise a
    stratified `fraction` (the config's check allows only one of them)."""
    if labels_per_class > 0:
        return per_class_subset(labels, labels_per_class, seed, class_names)
    return label_subset(labels, fraction, seed, class_names)


def label_subset(labels: np.ndarray, fraction: float, seed: int, class_names: Sequence[str]) -> np.ndarray:
    """Sorted indices of a stratified `fraction` of `labels` (scikit-learn, `seed`).

    Raises ValueError, naming the class, when the subset would leave a class of the training split without a
    sample (a classifier cannot learn a class it never sees, and the class weight would be infinite).
    """
    labels = np.asarray(labels)
    present = np.unique(labels)
    counts = _check_all_classes_present(labels, class_names)
    if fraction == 1.0:
        return np.arange(len(labels))
    keep = int(round(fraction * len(labels)))
    if keep < len(present):
        raise DataError(
            f"{fraction:.0%} of {len(labels)} training images is {keep} images, fewer than the {len(present)} "
            f"classes: some class would have no sample (counts: {counts}); use a larger fraction or more labels"
        )
    indices, _ = train_test_split(
        np.arange(len(labels)), train_size=keep, stratify=labels, random_state=seed, shuffle=True
    )
    missing = sorted(set(present) - set(labels[indices]))
    if missing:
        raise DataError(
            f"a stratified {fraction:.0%} subset ({keep} images) leaves class(es) "
            f"{[class_names[c] for c in missing]} with no sample (counts: {counts})"
        )
    return np.sort(indices)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """weight_c = N / count_c (the reference's class-weighted cross-entropy; scikit-learn's "balanced" weights
    N / (C * count_c) times C); float32 [num_classes]."""
    counts = np.bincount(np.asarray(labels), minlength=num_classes)
    if np.any(counts == 0):
        raise DataError(f"class weights need every class in the training labels; counts: {counts}")
    balanced = compute_class_weight("balanced", classes=np.arange(num_classes), y=np.asarray(labels))
    return (balanced * num_classes).astype(np.float32)
