"""Frozen-feature evaluation of backbones: weighted kNN and few-label logistic-regression probes (few_label.py).

Both are fitted on the labelled training split and scored on the test split (patients never seen in
training), every backbone on the same label draws, with paired intervals. Features are the pooled backbone
outputs in eval mode (BatchNorm running statistics).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.eval.few_label import (
    DEFAULT_SHOTS,
    FewLabelResult,
    Interval,
    few_label_evaluation,
    interval,
    patient_bootstrap,
    shot_name,
)

KNN_TEMPERATURE = 0.07  # neighbour weight exp(cosine / T), as InstDisc / DINO / solo-learn's kNN monitor


def eval_features(backbone: nn.Module, image_size: int, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
    """Pooled features of uint8 images [B, H, W, C]: `preprocess_eval`, BatchNorm running statistics."""
    return backbone.apply(variables, preprocess_eval(images, image_size), train=False)


_features = jax.jit(eval_features, static_argnums=(0, 1))


def map_batches(fn: Callable[[np.ndarray], jax.Array], images: np.ndarray, batch_size: int, multiple: int = 1):
    """`fn` over `images` in fixed-size batches (at most `batch_size`, rounded up to a `multiple` of the devices;
    the last batch zero-padded, so one compilation serves them all), concatenated as numpy."""
    batch_size = -(-min(batch_size, len(images)) // multiple) * multiple
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(fn(batch))[:n])
    return np.concatenate(out)


def with_channel(images: np.ndarray) -> np.ndarray:
    """uint8 images [N, H, W] -> [N, H, W, 1]; [N, H, W, C] unchanged."""
    return images[..., None] if images.ndim == 3 else images


def extract_features(
    backbone: nn.Module,
    variables: Mapping[str, Any],
    images: np.ndarray,
    image_size: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Pooled features [N, F] (float32) of uint8 images [N, H, W] or [N, H, W, C]; fixed-size batches, one compile."""
    variables = jax.device_get(variables)  # replicated on the mesh: every process holds a full copy
    features = map_batches(lambda x: _features(backbone, image_size, variables, x), with_channel(images), batch_size)
    return features.astype(np.float32)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 20) -> np.ndarray:
    """Cosine kNN; each of the k neighbours votes with weight exp(cosine similarity / 0.07)."""
    knn = KNeighborsClassifier(
        n_neighbors=min(k, len(train_x)),
        metric="cosine",
        algorithm="brute",
        weights=lambda distance: np.exp((1.0 - distance) / KNN_TEMPERATURE),
    )
    return knn.fit(train_x, train_y).predict(test_x)


def effective_rank(features: np.ndarray) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of features [N, F].

    Near 1 for collapsed features, up to min(N, F) for features that use every direction equally."""
    s = np.linalg.svd(np.asarray(features, np.float64), compute_uv=False)
    p = s / max(s.sum(), 1e-12) + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


@dataclasses.dataclass
class FrozenEval:
    """Frozen-feature evaluation of several initialisations on one test split.

    `knn`: weighted kNN on every labelled training image, macro-F1 with a test-patient bootstrap interval;
    `few_label`: logistic-regression probes with k labelled images per class over random label draws;
    `knn_differences`: paired kNN differences to each baseline; `effective_rank`: RankMe of the test features.
    """

    knn: dict[str, Interval]
    few_label: FewLabelResult
    knn_differences: dict[str, dict[str, Interval]]
    effective_rank: dict[str, float]
    num_train: int
    num_test: int
    num_test_patients: int  # 0: the test images have no patient ids (resampled image by image)
    features: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        return {
            "knn_macro_f1": {k: dataclasses.asdict(v) for k, v in self.knn.items()},
            "knn_differences": {
                b: {k: dataclasses.asdict(v) for k, v in rows.items()} for b, rows in self.knn_differences.items()
            },
            "few_label_macro_f1": self.few_label.to_dict(),
            "effective_rank": self.effective_rank,
            "num_train": self.num_train,
            "num_test": self.num_test,
            "num_test_patients": self.num_test_patients,
        }


def evaluate_inits(
    backbone: nn.Module,
    inits: Mapping[str, Mapping[str, Any]],
    splits: Mapping[str, Any],
    image_size: int,
    num_classes: int,
    baselines: tuple[str, ...] = (),
    knn_k: int = 20,
    batch_size: int = 256,
    shots: tuple[int, ...] = DEFAULT_SHOTS,
    draws: int = 20,
    seed: int = 0,
    probe_max_iter: int = 1000,
    test_split: str = "test",
    features: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> FrozenEval:
    """kNN and few-label probes of every backbone in `inits` (name -> variables) on the same label draws and
    test patients, with paired differences to the `baselines` (names in `inits`).

    `features` may hold already extracted (train, test) features of some names (e.g. baselines computed once).
    """
    train, test = splits["train"], splits[test_split]
    feats = dict(features or {})
    for name, variables in inits.items():
        if name not in feats:
            train_x = extract_features(backbone, variables, train.images, image_size, batch_size)
            test_x = extract_features(backbone, variables, test.images, image_size, batch_size)
            if not (np.all(np.isfinite(train_x)) and np.all(np.isfinite(test_x))):
                raise FloatingPointError(f"the backbone {name!r} produced non-finite features")
            feats[name] = (train_x, test_x)
    feats = {name: feats[name] for name in inits}
    groups = np.asarray(test.patient_ids).astype(str)
    by_image = len(groups) == 0 or bool(np.any(groups == ""))
    if by_image:  # no patient ids (a planes CSV without patient_id): each image is its own resampling unit
        groups = np.arange(len(test.labels)).astype(str)
    knn_preds = {name: knn_predict(tr, train.labels, te, knn_k) for name, (tr, te) in feats.items()}
    knn = patient_bootstrap(test.labels, knn_preds, groups, num_classes, seed=seed)
    knn_differences = {
        base: {
            name: interval(knn[name][0].mean - knn[base][0].mean, knn[name][1] - knn[base][1])
            for name in feats
            if name != base
        }
        for base in baselines
    }
    few = few_label_evaluation(
        feats, train.labels, test.labels, groups, num_classes, shots, draws, baselines, seed=seed,
        max_iter=probe_max_iter,
    )  # fmt: skip
    return FrozenEval(
        knn={name: v[0] for name, v in knn.items()},
        few_label=few,
        knn_differences=knn_differences,
        effective_rank={name: effective_rank(te) for name, (_, te) in feats.items()},
        num_train=len(train.labels),
        num_test=len(test.labels),
        num_test_patients=0 if by_image else len(np.unique(groups)),
        features=feats,
    )


def format_table(result: FrozenEval) -> str:
    """Markdown: macro-F1 [95 % interval] of kNN and of the few-label probes per initialisation, then the paired
    differences to each baseline (* where the interval excludes zero)."""
    shots = result.few_label.shots
    cols = ["kNN (all labels)", *(f"probe {shot_name(k)}" for k in shots)]
    lines = ["| init | " + " | ".join(cols) + " | eff. rank |", "|---|" + "---:|" * (len(cols) + 1)]
    for name, knn in result.knn.items():
        cells = [f"{knn}", *(f"{result.few_label.scores[name][k]}" for k in shots)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result.effective_rank[name]:.1f} |")
    for base, rows in result.knn_differences.items():
        lines += ["", f"Paired difference to {base} (* = 95 % interval excludes 0):", ""]
        lines += ["| init | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        for name, knn in rows.items():
            diffs = [knn, *(result.few_label.differences[base][name][k] for k in shots)]
            cells = [f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{'*' if d.excludes_zero else ''}" for d in diffs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"macro-F1 on {result.num_test} test images of "
        + (
            f"{result.num_test_patients} patients unseen in training; "
            if result.num_test_patients
            else "unknown patients (no patient ids: resampled image by image, so the intervals are too narrow); "
        )
        + f"probes: logistic regression on k labelled images per class, {result.few_label.draws} label draws; "
        "intervals: bootstrap over label draws and test patients.",
    ]
    return "\n".join(lines)
