"""What a classifier knows of its limits, fitted at the end of its classification run and applied wherever it
predicts: the temperature (and, with `calibration = "temperature_and_bias"`, the class biases) of its calibrated
probabilities (`calibration`) and its known-frame rule (`ood`).

Both are fitted on the validation split (the temperature on the selected classifier's logits, the rule's threshold
on the validation frames' scores, its reference the training images' features) and reported on the test split
(results.json: ECE before and after scaling, the share of test frames known; reliability_diagram.png). They are
stored with the classifier: `temperature`, `class_bias` and `ood` in classifier.json, the rule's reference in
``ood_reference.npy`` beside it. A classifier saved without them predicts with temperature 1 and no rule.

`trusted_outputs` is the one function of a batch of frames that gives both, the calibrated probabilities and the
score: the JAX path of predict and the ONNX export run it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import f1_score

from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.downstream import calibration
from fetalssl_jax.downstream.ood import KnownRule, knn_distance, normalised, reference_rows
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.few_label import Resamples, interval
from fetalssl_jax.eval.frozen import map_batches, with_channel
from fetalssl_jax.models.vit import ViT

RELIABILITY_PNG = "reliability_diagram.png"

log = logging.getLogger("fetalssl_jax")


@dataclasses.dataclass(frozen=True, eq=False)
class Trust:
    """A classifier's temperature, its class biases (empty: none) and its known-frame rule (None: every frame counts
    as known, no score): probabilities = softmax(logits / temperature + bias)."""

    temperature: float = 1.0
    rule: KnownRule | None = None
    bias: tuple[float, ...] = ()

    def calibration(self) -> dict[str, Any]:
        """{'temperature', and 'class_bias' where it has biases}: as classifier.json and results.json write them."""
        return {"temperature": self.temperature, **({"class_bias": list(self.bias)} if self.bias else {})}

    def description(self) -> dict[str, Any]:
        """The entries of classifier.json."""
        return {**self.calibration(), **({"ood": self.rule.description()} if self.rule else {})}

    def identity(self) -> dict[str, Any]:
        """What predict's fingerprint records of it (empty for a classifier saved without them)."""
        if self.temperature == 1.0 and self.rule is None and not self.bias:
            return {}
        return {**self.calibration(), "ood_sha256": self.rule.digest() if self.rule else None}

    def bias_vector(self, num_classes: int) -> jax.Array:
        """The class biases as float32 [num_classes] (zeros without them)."""
        return jnp.asarray(self.bias if self.bias else np.zeros(num_classes), jnp.float32)

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
    return Trust(float(description.get("temperature", 1.0)), rule, tuple(map(float, description.get("class_bias", ()))))


_BLOCK = re.compile(r"(layer(\d+)_(\d+)|blocks_(\d+))$")  # a ResNet block (stage, index) or a ViT block (index)


def _is_block(module, method: str) -> bool:
    return method == "__call__" and module.name is not None and bool(_BLOCK.match(module.name))


def _stage_tokens(backbone, blocks: Mapping[str, Any]) -> list[jax.Array]:
    """The outputs [B, positions, C] of a ResNet's stages (the last block of each), or of a ViT's blocks at a
    quarter, half, three quarters and all of its depth (its patch tokens)."""
    found = {name: _BLOCK.match(name) for name in blocks}
    found = {name: match for name, match in found.items() if match}  # not what else is sown (a ResNet's stem)
    if isinstance(backbone, ViT):
        depth = len(found)
        chosen = sorted({max(round(depth * q) - 1, 0) for q in (0.25, 0.5, 0.75, 1.0)})
        return [blocks[f"blocks_{i}"]["__call__"][0][:, backbone.num_prefix_tokens :] for i in chosen]
    last = {}
    for match in found.values():
        stage, index = int(match.group(2)), int(match.group(3))
        last[stage] = max(last.get(stage, -1), index)
    maps = [blocks[f"layer{stage}_{index}"]["__call__"][0] for stage, index in sorted(last.items())]
    return [m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps]


def logits_and_features(model, image_size: int, variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Logits [B, C] and the features of the known-frame score of uint8 images [B, H, W, C]: for each stage of the
    backbone (`_stage_tokens`), the mean and the standard deviation over positions of every channel, L2-normalised
    per stage, concatenated. `preprocess_eval`, BatchNorm running statistics (as
    `classification.class_probabilities`)."""
    logits, state = model.apply(variables, preprocess_eval(images, image_size), train=False,
                                capture_intermediates=_is_block, mutable=["intermediates"])  # fmt: skip
    stages = []
    for tokens in _stage_tokens(model.backbone, state["intermediates"]["backbone"]):
        tokens = tokens.astype(jnp.float32)
        stages.append(normalised(jnp.concatenate([jnp.mean(tokens, axis=1), jnp.std(tokens, axis=1)], axis=-1)))
    return logits, jnp.concatenate(stages, axis=-1)


def trusted_outputs(
    model, image_size: int, variables: Any, temperature: jax.Array | float, bias: jax.Array,
    reference: jax.Array | None, k: int, images: jax.Array,
) -> tuple[jax.Array, ...]:  # fmt: skip
    """(probabilities [B, C] = softmax(logits / temperature + bias [C]),) and, with a `reference` (L2-normalised
    training features of `logits_and_features`), the score [B] (`ood.knn_distance` to its `k`-th row)."""
    logits, features = logits_and_features(model, image_size, variables, images)
    probabilities = jax.nn.softmax(logits / temperature + bias, axis=-1)
    if reference is None:
        return (probabilities,)
    return probabilities, knn_distance(features, reference, k)


_trusted = jax.jit(trusted_outputs, static_argnums=(0, 1, 6))
_outputs = jax.jit(logits_and_features, static_argnums=(0, 1))


def predict_trusted(
    model, image_size: int, variables: Any, trust: Trust, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """float32 [N, C + 1] of uint8 images [N, H, W(, 1)] in fixed-size batches: the calibrated probabilities and,
    in the last column, the score (NaN without a rule)."""
    rule = trust.rule
    reference, k = (None, 0) if rule is None else (jnp.asarray(rule.reference), rule.k)
    temperature, bias = jnp.float32(trust.temperature), trust.bias_vector(model.num_classes)

    def batch(x: np.ndarray) -> np.ndarray:
        out = _trusted(model, image_size, variables, temperature, bias, reference, k, x)
        score = out[1] if len(out) > 1 else jnp.full(len(x), jnp.nan)
        return np.concatenate([np.asarray(out[0]), np.asarray(score, np.float32)[:, None]], axis=1)

    return map_batches(batch, with_channel(images), batch_size)


def _outputs_of(model, image_size, variables, images, batch_size) -> tuple[np.ndarray, np.ndarray]:
    """(logits, features) of uint8 images in fixed-size batches."""
    joined = map_batches(lambda x: np.concatenate([np.asarray(a) for a in _outputs(model, image_size, variables, x)],
                                                  axis=1), with_channel(images), batch_size)  # fmt: skip
    num_classes = model.num_classes
    return joined[:, :num_classes], joined[:, num_classes:]


def _ece_intervals(
    probabilities: Mapping[str, np.ndarray], labels: np.ndarray, patients: np.ndarray, seed: int, replicates: int = 1000
) -> dict[str, dict[str, float]]:  # fmt: skip
    """{'<name>_interval': the ECE's 95 % percentile interval over test patients resampled with replacement (a
    patient's frames together; `eval.few_label.Resamples`, the same resamples for every name)}."""
    _, patient = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    weights = Resamples.make(1, int(patient.max()) + 1, replicates, seed).patient_weights[:, patient]
    out = {}
    for name, p in probabilities.items():
        replicated = [calibration.expected_calibration_error(p, labels, weights=w) for w in weights]
        i = interval(calibration.expected_calibration_error(p, labels), np.asarray(replicated))
        out[f"{name}_interval"] = [i.low, i.high]
    return out


def _floor(probabilities: np.ndarray, seed: int) -> dict[str, Any]:
    """The ECE a perfectly calibrated classifier with these probabilities would show on this many frames
    (`calibration.ece_if_calibrated`): mean and 95 % range, the reference for reading the measured ECE."""
    replicates = calibration.ece_if_calibrated(probabilities, seed=seed)
    return {"mean": float(replicates.mean()), "range": [float(v) for v in np.percentile(replicates, [2.5, 97.5])]}


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
        after = f"after (T = {self.trust.temperature:.2f}{', class biases' if self.trust.bias else ''})"
        calibration.plot_reliability({"before (T = 1)": self.test_uncalibrated, after: self.test_probabilities},
                                     labels, path, f"{title}\nECE of a calibrated classifier on {len(labels)} frames: "
                                     f"{self.calibration['test_ece']['after_if_calibrated']['mean']:.3f}")  # fmt: skip


def _fit_calibration(logits: np.ndarray, labels: np.ndarray, method: str) -> tuple[float, tuple[float, ...], str]:
    """(temperature, class biases, the method used) of `method` (`calibration.CALIBRATIONS`) on validation logits
    and labels: the biases only where every class has `calibration.MIN_FRAMES_FOR_BIAS` validation frames (a
    warning says so otherwise; a class without frames would push its bias to minus infinity)."""
    if method == "temperature_and_bias":
        counts = np.bincount(labels, minlength=logits.shape[1])
        if counts.min() >= calibration.MIN_FRAMES_FOR_BIAS:
            temperature, bias = calibration.fit_temperature_and_bias(logits, labels)
            return temperature, tuple(float(b) for b in bias), method
        log.warning(
            "calibration: class %d has %d validation frames (class biases need %d of every class); fitting "
            "the temperature only",
            int(counts.argmin()),
            int(counts.min()),
            calibration.MIN_FRAMES_FOR_BIAS,
        )
    return calibration.fit_temperature(logits, labels), (), "temperature"


def _calibration_report(trust: Trust, valid_logits, valid, test_logits, test, seed: int, used: str, requested: str):
    """results.json's `calibration`: the method used (and requested), what was fitted, NLL, ECE (interval, floor)
    and test macro-F1 before and after; and the test split's (uncalibrated, calibrated) probabilities."""
    t, b = trust.temperature, trust.bias  # empty: none, as `calibration` reads it
    before, after = calibration.calibrated(test_logits, 1.0), calibration.calibrated(test_logits, t, b)
    ece = calibration.expected_calibration_error
    f1 = lambda p: float(f1_score(test.labels, p.argmax(1), average="macro"))  # noqa: E731
    report = {
        "method": used, "requested": requested, **trust.calibration(),
        "fitted_on": "valid", "bins": calibration.ECE_BINS,
        "valid_nll": {"before": calibration.nll(valid_logits, valid.labels),
                      "after": calibration.nll(valid_logits, valid.labels, t, b)},
        "test_nll": {"before": calibration.nll(test_logits, test.labels),
                     "after": calibration.nll(test_logits, test.labels, t, b)},
        "test_ece": {"before": ece(before, test.labels), "after": ece(after, test.labels),
                     **_ece_intervals({"before": before, "after": after}, test.labels, test.patient_ids, seed),
                     "after_if_calibrated": _floor(after, seed)},
        "test_macro_f1": {"before": f1(before), "after": f1(after)},
    }  # fmt: skip
    return report, before, after


def fit_trust(
    model, image_size: int, variables: Any, splits: Mapping[str, Any], seed: int, batch_size: int,
    method: str = "temperature",
) -> TrustFit:  # fmt: skip
    """The calibration (`method`, on the validation logits) and the known-frame rule (reference: the training
    split's features, `ood.reference_rows`; threshold: the validation scores' quantile) of a trained classifier,
    scored on the test split."""
    train, valid, test = splits["train"], splits["valid"], splits["test"]
    valid_logits, valid_features = _outputs_of(model, image_size, variables, valid.images, batch_size)
    _, train_features = _outputs_of(model, image_size, variables,
                                    train.images[reference_rows(len(train.labels), seed)], batch_size)  # fmt: skip
    rule = KnownRule.fit(train_features, lambda reference, k: knn_distance(valid_features, reference, k), seed=seed)
    temperature, bias, used = _fit_calibration(valid_logits, valid.labels, method)
    trust = Trust(temperature, rule, bias)
    test_logits, test_features = _outputs_of(model, image_size, variables, test.images, batch_size)
    cal, before, after = _calibration_report(trust, valid_logits, valid, test_logits, test, seed, used, method)
    scores = rule.scores(test_features)
    known = rule.known(scores)
    correct = after.argmax(1) == test.labels  # the predictions the classifier makes
    ood = {
        **rule.description(), "valid_known_fraction": float(np.mean(rule.known(rule.scores(valid_features)))),
        "test_known_fraction": float(np.mean(known)),
        "test_accuracy_known": float(np.mean(correct[known])) if known.any() else None,
        "test_accuracy_not_known": float(np.mean(correct[~known])) if (~known).any() else None,
    }  # fmt: skip
    return TrustFit(trust, after, scores, known, before, cal, ood)
