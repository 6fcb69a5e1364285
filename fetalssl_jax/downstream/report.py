"""Test-set metrics and the files a classification run leaves: confusion matrix (PNG, JSON), predictions CSV."""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
)


def summary_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1."""
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def full_report(labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Summary metrics, scikit-learn's per-class report and the confusion matrix (rows: true, columns: predicted)."""
    classes = list(range(len(class_names)))
    return {
        **summary_metrics(labels, predictions),
        "per_class": classification_report(
            labels, predictions, labels=classes, target_names=list(class_names), output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, predictions, labels=classes).tolist(),
        "class_names": list(class_names),
        "num_images": len(labels),
    }


def write_json(path: pathlib.Path, data: Any) -> None:
    """JSON written to a temporary file and renamed: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def save_figure(fig, path: pathlib.Path, dpi: int = 120) -> None:
    """Saves a matplotlib figure to a temporary file renamed into place (a reader never sees half a PNG) and
    closes it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: pathlib.Path, title: str = "") -> None:
    """Counts in the cells, colour by row-normalised recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 2, 1.1 * len(class_names) + 1.5))
    image = ax.imshow(recall, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if recall[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_predictions(
    path: pathlib.Path,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    patient_ids: Sequence[str] | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One row per test image: index, patient, true and predicted class, every class probability, and the columns
    of `extra` (name -> one value per image)."""
    predictions = probabilities.argmax(axis=1)
    extra = dict(extra or {})
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "patient_id", "label", "prediction", *[f"p_{name}" for name in class_names],
                         *extra])  # fmt: skip
        for i, (label, prediction, probs) in enumerate(zip(labels, predictions, probabilities, strict=True)):
            patient = "" if patient_ids is None else str(patient_ids[i])
            writer.writerow([i, patient, class_names[label], class_names[prediction], *[f"{p:.6f}" for p in probs],
                             *(values[i] for values in extra.values())])  # fmt: skip
    tmp.replace(path)
