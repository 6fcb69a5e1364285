"""Calibrated class probabilities: temperature scaling (Guo et al. 2017) or bias-corrected temperature scaling
(Alexandari et al. 2020), the expected calibration error and the reliability diagram.

`temperature`: one scalar T > 0 divides the logits before the softmax; it is the T that minimises the negative
log-likelihood of the selected classifier's validation logits. Dividing by T keeps every prediction (the argmax) and
changes only how sure the probabilities are. The NLL is convex in 1/T, so a bounded scalar search (scipy's) finds
the one minimum. `temperature_and_bias`: softmax(logits / T + b) with a bias b per class (b[0] = 0: the softmax
ignores a common shift), T and b minimising the same NLL; it also corrects a classifier that favours some classes,
so it can change predictions, and its C parameters need a validation split with many frames of every class
(`MIN_FRAMES_FOR_BIAS`; with fewer, the classification run fits the temperature only and says so).

The expected calibration error (ECE) bins the confidence (the highest probability of a frame) into `ECE_BINS`
equal-width bins (i/B, (i+1)/B] and sums, over the bins, the share of frames in the bin times the gap between the
bin's accuracy and its mean confidence. On a finite test split even a perfectly calibrated classifier shows an ECE
above 0 (each bin's accuracy is a sample): `ece_if_calibrated` is that floor for the split's own confidences.
"""

from __future__ import annotations

import math
import pathlib

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

ECE_BINS = 15
TEMPERATURE_RANGE = (0.01, 100.0)  # the search's bounds; a T at either bound means the logits carry no signal


CALIBRATIONS = ("temperature", "temperature_and_bias")
MIN_FRAMES_FOR_BIAS = 50  # validation frames of every class below which class biases are not fitted (C - 1 more
# parameters than the temperature; a class without frames has no finite best bias)


def _scaled(logits: np.ndarray, temperature: float, bias: np.ndarray | tuple | None) -> np.ndarray:
    z = np.asarray(logits, np.float64) / temperature
    return z if bias is None or not len(bias) else z + np.asarray(bias, np.float64)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0, bias: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of `labels` [N] under softmax(logits [N, C] / temperature + bias [C])."""
    log_p = log_softmax(_scaled(logits, temperature, bias), axis=1)
    return float(-np.mean(log_p[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T in `TEMPERATURE_RANGE` that minimises `nll(logits, labels, T)` (searched over log T)."""
    if len(labels) == 0:
        raise ValueError("fitting a temperature needs at least one labelled frame")
    logits = np.asarray(logits, np.float64)
    lo, hi = (math.log(t) for t in TEMPERATURE_RANGE)
    found = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(lo, hi), method="bounded",
                            options={"xatol": 1e-7})  # fmt: skip
    return float(math.exp(found.x))


def fit_temperature_and_bias(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """(T, bias [C], bias[0] = 0) minimising `nll(logits, labels, T, bias)`: L-BFGS over (log T, bias[1:]) from
    (`fit_temperature`, 0), log T within `TEMPERATURE_RANGE`."""
    temperature = fit_temperature(logits, labels)
    logits = np.asarray(logits, np.float64)
    classes = logits.shape[1]
    bounds = [tuple(math.log(t) for t in TEMPERATURE_RANGE)] + [(None, None)] * (classes - 1)
    found = minimize(lambda x: nll(logits, labels, math.exp(x[0]), np.r_[0.0, x[1:]]),
                     np.r_[math.log(temperature), np.zeros(classes - 1)], method="L-BFGS-B", bounds=bounds,
                     options={"ftol": 1e-12, "gtol": 1e-8})  # fmt: skip
    return float(math.exp(found.x[0])), np.r_[0.0, found.x[1:]]


def calibrated(logits: np.ndarray, temperature: float, bias: np.ndarray | None = None) -> np.ndarray:
    """softmax(logits / temperature + bias) as float32 [N, C]."""
    return softmax(_scaled(logits, temperature, bias), axis=1).astype(np.float32)


def reliability_bins(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, weights: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin (i/B, (i+1)/B]: `count` (the sum of the frames' `weights`, default 1),
    `accuracy` and mean `confidence` (NaN when empty)."""
    probabilities = np.asarray(probabilities, np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    w = np.ones(len(confidence)) if weights is None else np.asarray(weights, np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    count = np.bincount(which, w, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(which, w * correct, minlength=bins) / count
        mean_confidence = np.bincount(which, w * confidence, minlength=bins) / count
    return {"count": count if weights is not None else count.astype(int), "accuracy": accuracy,
            "confidence": mean_confidence}  # fmt: skip


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS, weights: np.ndarray | None = None
) -> float:
    """sum over bins of (frames in the bin / N) * |accuracy - mean confidence| (`reliability_bins`; with `weights`,
    frame counts weighted, e.g. a bootstrap's resampling counts)."""
    b = reliability_bins(probabilities, labels, bins, weights)
    used = b["count"] > 0
    return float(np.sum(b["count"][used] / b["count"].sum() * np.abs(b["accuracy"][used] - b["confidence"][used])))


def ece_if_calibrated(
    probabilities: np.ndarray, bins: int = ECE_BINS, replicates: int = 1000, seed: int = 0
) -> np.ndarray:
    """ECEs [replicates] of a perfectly calibrated classifier with these probabilities [N, C]: each replicate draws
    every frame's label from its own probabilities and scores them with `expected_calibration_error`."""
    probabilities = np.asarray(probabilities, np.float64)
    cumulative = np.cumsum(probabilities / probabilities.sum(axis=1, keepdims=True), axis=1)
    rng = np.random.default_rng(seed)
    ece = np.empty(replicates)
    for r in range(replicates):
        labels = np.minimum((rng.random((len(cumulative), 1)) > cumulative).sum(axis=1), cumulative.shape[1] - 1)
        ece[r] = expected_calibration_error(probabilities, labels, bins)
    return ece


def plot_reliability(
    curves: dict[str, np.ndarray], labels: np.ndarray, path: pathlib.Path, title: str = "", bins: int = ECE_BINS
) -> None:
    """Reliability diagram: accuracy against mean confidence per bin for each set of probabilities in `curves`
    (name -> [N, C]), with its ECE in the legend; below, the frames per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fetalssl_jax.downstream.report import save_figure

    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="gray", label="calibrated")
    centres = (np.arange(bins) + 0.5) / bins
    for k, (name, probabilities) in enumerate(curves.items()):
        b = reliability_bins(probabilities, labels, bins)
        used = b["count"] > 0
        ece = expected_calibration_error(probabilities, labels, bins)
        ax.plot(b["confidence"][used], b["accuracy"][used], "o-", ms=4, label=f"{name}: ECE {ece:.3f}")
        width = 0.8 / bins / len(curves)
        counts.bar(centres + (k - (len(curves) - 1) / 2) * width, b["count"], width=width, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(title or f"reliability ({bins} equal-width confidence bins)", fontsize=9)
    counts.set_xlabel("confidence (highest class probability)")
    counts.set_ylabel("frames")
    fig.tight_layout()
    save_figure(fig, path)
