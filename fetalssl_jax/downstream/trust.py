"""What a classifier knows of its limits, fitted at the end of its classification run and applied wherever it
predicts: the temperature of its calibrated probabilities (`calibration`) and its known-frame rule (`ood`).

Both are fitted on the validation split (the temperature on the selected classifier's logits, the rule's threshold
on the validation frames' scores, its reference the training images' features) and reported on the test split
(results.json: ECE before and after scaling, the share of test frames known; reliability_diagram.png). They are
stored with the classifier: `temperature` and `ood` in classifier.json, the rule's reference in
``ood_reference.npy`` beside it. A classifier saved without them predicts with temperature 1 and no rule.

`trusted_outputs` is the one function of a batch of frames that gives both, the calibrated probabilities and the
score: the JAX path of predict and the ONNX export run it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.downstream import calibration
from fetalssl_jax.downstream.ood import KnownRule, knn_distance, reference_rows
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.frozen import map_batches, with_channel

RELIABILITY_PNG = "reliability_diagram.png"


@dataclasses.dataclass(frozen=True, eq=False)
class Trust:
    """A classifier's temperature and its known-frame rule (None: every frame counts as known, no score)."""

    temperature: float = 1.0
    rule: KnownRule | None = None

    def description(self) -> dict[str, Any]:
        """The entries of classifier.json."""
        return {"temperature": self.temperature, **({"ood": self.rule.description()} if self.rule else {})}

    def identity(self) -> dict[str, Any]:
        """What predict's fingerprint records of it (empty for a classifier saved without them)."""
        if self.temperature == 1.0 and self.rule is None:
            return {}
        return {"temperature": self.temperature, "ood_sha256": self.rule.digest() if self.rule else None}

    def save(self, directory: pathlib.Path) -> None:
        """The rule's reference into the classifier's directory (classifier.json holds the rest)."""
        if self.rule is not None:
            self.rule.save(directory)


def classifier_directory(path: str | pathlib.Path) -> pathlib.Path:
    """The directory holding classifier.json: `path` or `path`/classifier."""
    path = pathlib.Path(path)
    for directory in (path, path / "classifier"):
        if (directory / "classifier.json").is_file():
            return directory
    raise DataError(f"{path} holds no trained classifier (classifier.json)")


def load_trust(path: str | pathlib.Path) -> Trust:
    """The Trust stored with the classifier at `path` (a classification run or its ``classifier/`` directory)."""
    directory = classifier_directory(path)
    description = json.loads((directory / "classifier.json").read_text())
    rule = KnownRule.load(directory, description["ood"]) if "ood" in description else None
    return Trust(float(description.get("temperature", 1.0)), rule)


def _logits_and_features(module, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    pooled = module.backbone(images, train=False)
    return module.logits_from_features(pooled, train=False), pooled.astype(jnp.float32)


def logits_and_features(model, image_size: int, variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits [B, C] and pooled backbone features [B, F] of uint8 images [B, H, W, C]: `preprocess_eval`, BatchNorm
    running statistics (as `classification.class_probabilities`)."""
    return model.apply(variables, preprocess_eval(images, image_size), method=_logits_and_features)


def trusted_outputs(
    model, image_size: int, variables: Any, temperature: jax.Array | float, reference: jax.Array | None, k: int,
    images: jax.Array,
) -> tuple[jax.Array, ...]:  # fmt: skip
    """(probabilities [B, C] = softmax(logits / temperature),) and, with a `reference` (L2-normalised training
    features [M, F]), the score [B] (`ood.knn_distance` to its `k`-th row)."""
    logits, features = logits_and_features(model, image_size, variables, images)
    probabilities = jax.nn.softmax(logits / temperature, axis=-1)
    if reference is None:
        return (probabilities,)
    return probabilities, knn_distance(features, reference, k)


_trusted = jax.jit(trusted_outputs, static_argnums=(0, 1, 5))
_outputs = jax.jit(logits_and_features, static_argnums=(0, 1))


def predict_trusted(
    model, image_size: int, variables: Any, trust: Trust, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """float32 [N, C + 1] of uint8 images [N, H, W(, 1)] in fixed-size batches: the calibrated probabilities and,
    in the last column, the score (NaN without a rule)."""
    rule = trust.rule
    reference, k = (None, 0) if rule is None else (jnp.asarray(rule.reference), rule.k)
    temperature = jnp.float32(trust.temperature)

    def batch(x: np.ndarray) -> np.ndarray:
        out = _trusted(model, image_size, variables, temperature, reference, k, x)
        score = out[1] if len(out) > 1 else jnp.full(len(x), jnp.nan)
        return np.concatenate([np.asarray(out[0]), np.asarray(score, np.float32)[:, None]], axis=1)

    return map_batches(batch, with_channel(images), batch_size)


def _outputs_of(model, image_size, variables, images, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of uint8 images in fixed-size batches."""
    joined = map_batches(lambda x: np.concatenate([np.asarray(a) for a in _outputs(model, image_size, variables, x)],
                                                  axis=1), with_channel(images), batch_size)  # fmt: skip
    num_classes = model.num_classes
    return joined[:, :num_classes], joined[:, num_classes:]


@dataclasses.dataclass(frozen=True)
class TrustFit:
    """The fitted Trust, the test split's calibrated probabilities, scores and known frames, and what results.json
    reports of them (`calibration`, `ood`)."""

    trust: Trust
    test_probabilities: np.ndarray
    test_scores: np.ndarray
    test_known: np.ndarray
    test_uncalibrated: np.ndarray
    calibration: dict[str, Any]
    ood: dict[str, Any]

    def columns(self) -> dict[str, list[str]]:
        """The extra columns of the run's predictions.csv."""
        return {"ood_score": [f"{s:.6f}" for s in self.test_scores],
                "known": [str(bool(k)).lower() for k in self.test_known]}  # fmt: skip

    def plot(self, path: pathlib.Path, labels: np.ndarray, title: str = "") -> None:
        """The test split's reliability diagram before and after scaling."""
        calibration.plot_reliability({"before (T = 1)": self.test_uncalibrated,
                                      f"after (T = {self.trust.temperature:.2f})": self.test_probabilities},
                                     labels, path, title)  # fmt: skip


def fit_trust(
    model, image_size: int, variables: Any, splits: Mapping[str, Any], seed: int, batch_size: int
) -> TrustFit:
    """The temperature (validation NLL) and the known-frame rule (reference: the training split's features,
    `ood.reference_rows`; threshold: the validation scores' quantile) of a trained classifier, scored on the test
    split."""
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    valid_logits, valid_features = _outputs_of(model, image_size, variables, valid.images, batch_size)
    _, train_features = _outputs_of(model, image_size, variables,
                                    train.images[reference_rows(len(train.labels), seed)], batch_size)  # fmt: skip
    temperature = calibration.fit_temperature(valid_logits, valid.labels)
    rule = KnownRule.fit(train_features, lambda reference, k: knn_distance(valid_features, reference, k))
    test_logits, test_features = _outputs_of(model, image_size, variables, test.images, batch_size)
    before, after = calibration.calibrated(test_logits, 1.0), calibration.calibrated(test_logits, temperature)
    scores = rule.scores(test_features)
    known = rule.known(scores)
    correct = before.argmax(1) == test.labels
    ece = calibration.expected_calibration_error
    cal = {
        "temperature": temperature, "fitted_on": "valid", "bins": calibration.ECE_BINS,
        "valid_nll": {"before": calibration.nll(valid_logits, valid.labels),
                      "after": calibration.nll(valid_logits, valid.labels, temperature)},
        "test_nll": {"before": calibration.nll(test_logits, test.labels),
                     "after": calibration.nll(test_logits, test.labels, temperature)},
        "test_ece": {"before": ece(before, test.labels), "after": ece(after, test.labels)},
    }  # fmt: skip
    ood = {
        **rule.description(), "valid_known_fraction": float(np.mean(rule.known(rule.scores(valid_features)))),
        "test_known_fraction": float(np.mean(known)),
        "test_accuracy_known": float(np.mean(correct[known])) if known.any() else None,
        "test_accuracy_not_known": float(np.mean(correct[~known])) if (~known).any() else None,
    }  # fmt: skip
    return TrustFit(Trust(temperature, rule), after, scores, known, before, cal, ood)
