"""Frozen-feature evaluation of a backbone: weighted kNN and a logistic-regression linear probe.

Both are fitted on the labelled training split and scored on the test split (patients never seen in
training). Features are the pooled backbone outputs in eval mode (BatchNorm running statistics).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fetalssl_jax.data.augment import preprocess_eval

KNN_TEMPERATURE = 0.07  # neighbour weight exp(cosine / T), as InstDisc / DINO / solo-learn's kNN monitor


@functools.partial(jax.jit, static_argnums=(0, 1))
def _features(backbone: nn.Module, image_size: int, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    return backbone.apply(variables, preprocess_eval(images, image_size), train=False)


def extract_features(
    backbone: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    image_size: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Pooled features [N, F] (float32) of uint8 images [N, H, W] or [N, H, W, C]; fixed-size batches, one compile."""
    if images.ndim == 3:
        images = images[..., None]
    variables = jax.device_get(variables)  # replicated on the mesh: every process holds a full copy
    out = []
    batch_size = min(batch_size, len(images))
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if n < batch_size:  # pad the last batch so every call has the same shape
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(_features(backbone, image_size, variables, batch))[:n])
    return np.concatenate(out).astype(np.float32)


def classification_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Macro-F1, balanced accuracy and accuracy."""
    return {
        "macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        "accuracy": float(accuracy_score(labels, predictions)),
    }


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 20) -> np.ndarray:
    """Cosine kNN; each of the k neighbours votes with weight exp(cosine similarity / 0.07)."""
    knn = KNeighborsClassifier(
        n_neighbors=min(k, len(train_x)),
        metric="cosine",
        algorithm="brute",
        weights=lambda distance: np.exp((1.0 - distance) / KNN_TEMPERATURE),
    )
    return knn.fit(train_x, train_y).predict(test_x)


def linear_probe_predict(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, max_iter: int = 2000, seed: int = 0
) -> np.ndarray:
    """Logistic regression on standardised frozen features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    return probe.fit(train_x, train_y).predict(test_x)


@dataclasses.dataclass(frozen=True)
class FrozenEval:
    """kNN and linear-probe metrics of one backbone on one split."""

    knn: dict[str, float]
    linear_probe: dict[str, float]


def evaluate_backbone(
    backbone: nn.Module,
    variables: Mapping[str, Any],
    splits: Mapping[str, Any],
    image_size: int,
    knn_k: int = 20,
    batch_size: int = 256,
    probe_max_iter: int = 2000,
    test_split: str = "test",
) -> FrozenEval:
    """Fits kNN and the probe on `splits['train']`, scores them on `splits[test_split]`."""
    train, test = splits["train"], splits[test_split]
    train_x = extract_features(backbone, variables, train.images, image_size, batch_size)
    test_x = extract_features(backbone, variables, test.images, image_size, batch_size)
    if not (np.all(np.isfinite(train_x)) and np.all(np.isfinite(test_x))):
        raise FloatingPointError("the backbone produced non-finite features")
    knn = knn_predict(train_x, train.labels, test_x, knn_k)
    probe = linear_probe_predict(train_x, train.labels, test_x, probe_max_iter)
    return FrozenEval(classification_metrics(test.labels, knn), classification_metrics(test.labels, probe))


def format_table(rows: Mapping[str, FrozenEval]) -> str:
    """A Markdown table: one row per initialisation, macro-F1 and balanced accuracy of kNN and probe."""
    header = "| init | kNN macro-F1 | kNN bal. acc. | linear macro-F1 | linear bal. acc. |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r.knn['macro_f1']:.3f} | {r.knn['balanced_accuracy']:.3f} "
            f"| {r.linear_probe['macro_f1']:.3f} | {r.linear_probe['balanced_accuracy']:.3f} |"
        )
    return "\n".join(lines)
