"""Few-label evaluation of frozen features, with intervals that can tell two initialisations apart.

A logistic regression is fitted on k labelled images per class of the training patients (k = 1, 5, 10, 25 and
all), for many random label draws, and scored on test patients never used for training. Every initialisation
sees the same draws, so differences between initialisations are paired.

Intervals are percentile bootstraps over both sources of noise at once: the label draws (resampled with
replacement) and the test patients (resampled with replacement, a patient's frames together: frames of one
patient are correlated). scipy.stats.bootstrap resamples one level only; this two-level, paired version is short
enough to keep here. Macro-F1 is computed from per-patient confusion matrices, so a bootstrap replicate is a
weighted sum, not a refit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from fetalssl_jax.errors import DataError

log = logging.getLogger("fetalssl_jax")

DEFAULT_SHOTS = (1, 5, 10, 25, 0)  # labelled images per class; 0 = every labelled training image
ALL = 0


def shot_name(shots: int) -> str:
    """'10/class' or 'all'."""
    return "all" if shots == ALL else f"{shots}/class"


def draw_label_subsets(labels: np.ndarray, shots: int, draws: int, seed: int) -> list[np.ndarray]:
    """`draws` index sets with `shots` images of every class (sorted), chosen uniformly without replacement.

    `shots` = 0 is one set of every index. A class with fewer than `shots` images is an error naming it.
    """
    labels = np.asarray(labels)
    if shots == ALL:
        return [np.arange(len(labels))]
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < shots:
        c = classes[np.argmin(counts)]
        raise DataError(f"{shots} labelled images per class requested, but class {c} has only {counts.min()}")
    out = []
    for d in range(draws):
        rng = np.random.default_rng([seed, shots, d])
        idx = [rng.choice(np.nonzero(labels == c)[0], shots, replace=False) for c in classes]
        out.append(np.sort(np.concatenate(idx)))
    return out


def patient_confusions(labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion counts [G, C, C] (true, predicted) of each test group (patient), groups in sorted order."""
    _, g = np.unique(groups, return_inverse=True)
    flat = (g * num_classes + labels) * num_classes + predictions
    counts = np.bincount(flat, minlength=(g.max() + 1) * num_classes * num_classes)
    return counts.reshape(g.max() + 1, num_classes, num_classes)


def macro_f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Macro-F1 of confusion matrices [..., C, C] (true x predicted); a class with no true and no predicted
    sample scores 0, as sklearn's f1_score(zero_division=0) over all classes."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1).astype(np.float64)
    denominator = confusion.sum(-1) + confusion.sum(-2)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return f1.mean(-1)


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean and its 95 % bootstrap interval."""

    mean: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __format__(self, spec: str) -> str:
        spec = spec or ".3f"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def probe_confusions(
    train_z: np.ndarray,
    train_y: np.ndarray,
    test_z: np.ndarray,
    test_y: np.ndarray,
    test_groups: np.ndarray,
    subsets: Sequence[np.ndarray],
    num_classes: int,
    max_iter: int = 1000,
) -> np.ndarray:
    """Per-draw, per-test-patient confusion counts [D, G, C, C] of a logistic regression fitted on each subset of
    standardised features (see `standardise`)."""
    out = []
    for subset in subsets:
        probe = LogisticRegression(max_iter=max_iter)
        probe.fit(train_z[subset], train_y[subset])
        out.append(patient_confusions(test_y, probe.predict(test_z), test_groups, num_classes))
    return np.stack(out)


def standardise(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets standardised with the statistics of every training image (labels are not needed for that),
    so a 1-image-per-class draw is not standardised by five samples."""
    scaler = StandardScaler().fit(train_x)
    return scaler.transform(train_x), scaler.transform(test_x)


@dataclasses.dataclass(frozen=True)
class Resamples:
    """Bootstrap indices shared by every initialisation (so differences are paired): for each replicate, which
    draws are used and how often each test patient counts."""

    draws: np.ndarray  # [B, D] int
    patient_weights: np.ndarray  # [B, G] int counts

    @classmethod
    def make(cls, num_draws: int, num_patients: int, replicates: int, seed: int) -> Resamples:
        rng = np.random.default_rng([seed, 7919])
        draws = rng.integers(0, num_draws, (replicates, num_draws))
        weights = rng.multinomial(num_patients, np.full(num_patients, 1.0 / num_patients), replicates)
        return cls(draws, weights)


def bootstrap_scores(confusions: np.ndarray, resamples: Resamples) -> np.ndarray:
    """Macro-F1 averaged over draws, for every bootstrap replicate: [B]. `confusions` is [D, G, C, C]."""
    # [B, D, C, C]: each draw's confusion on the resampled patients; then the resampled draws of each replicate.
    per_draw = np.einsum("bg,dgij->bdij", resamples.patient_weights, confusions, optimize=True)
    f1 = macro_f1_from_confusion(per_draw)  # [B, D]
    return np.take_along_axis(f1, resamples.draws, axis=1).mean(1)


def interval(point: float, replicates: np.ndarray) -> Interval:
    """The point estimate with the 2.5 / 97.5 percentiles of its bootstrap replicates."""
    low, high = np.percentile(replicates, [2.5, 97.5])
    return Interval(float(point), float(low), float(high))


@dataclasses.dataclass
class FewLabelResult:
    """Macro-F1 with intervals of several initialisations, by number of labelled images per class."""

    shots: tuple[int, ...]
    scores: dict[str, dict[int, Interval]]  # init -> shots -> macro-F1
    differences: dict[str, dict[str, dict[int, Interval]]]  # baseline -> init -> shots -> paired difference
    draws: int

    def to_dict(self) -> dict:
        def table(d):
            return {shot_name(k): dataclasses.asdict(v) for k, v in d.items()}

        return {
            "draws": self.draws,
            "scores": {name: table(s) for name, s in self.scores.items()},
            "differences": {
                base: {name: table(s) for name, s in rows.items()} for base, rows in self.differences.items()
            },
        }


def few_label_evaluation(
    features: Mapping[str, tuple[np.ndarray, np.ndarray]],
    train_y: np.ndarray,
    test_y: np.ndarray,
    test_groups: np.ndarray,
    num_classes: int,
    shots: Sequence[int] = DEFAULT_SHOTS,
    draws: int = 20,
    baselines: Sequence[str] = (),
    replicates: int = 1000,
    seed: int = 0,
    max_iter: int = 1000,
) -> FewLabelResult:
    """Few-label logistic-regression probes of every initialisation in `features` (name -> (train, test)
    features), with paired differences to each name in `baselines`.

    Numbers of shots that the smallest class of the training split cannot supply are left out with a warning (a
    small labelled set of one's own should still get the evaluation it can support, not a crash at the end of a
    run); `all` is always kept."""
    smallest = int(np.unique(np.asarray(train_y), return_counts=True)[1].min())
    dropped = [k for k in shots if k != ALL and k > smallest]
    if dropped:
        log.warning(
            "few-label probe: the smallest class of the labelled training split has %d images; leaving out %s "
            "labelled images per class", smallest, ", ".join(map(str, dropped)),
        )  # fmt: skip
    shots = tuple(k for k in shots if k not in dropped)
    subsets = {k: draw_label_subsets(train_y, k, draws, seed) for k in shots}
    num_patients = len(np.unique(test_groups))
    resamples = {k: Resamples.make(len(subsets[k]), num_patients, replicates, seed + k) for k in shots}
    boot: dict[str, dict[int, np.ndarray]] = {}
    scores: dict[str, dict[int, Interval]] = {}
    for name, (train_x, test_x) in features.items():
        boot[name], scores[name] = {}, {}
        train_z, test_z = standardise(train_x, test_x)
        for k in shots:
            conf = probe_confusions(train_z, train_y, test_z, test_y, test_groups, subsets[k], num_classes, max_iter)
            point = float(macro_f1_from_confusion(conf.sum(1)).mean())
            boot[name][k] = bootstrap_scores(conf, resamples[k])
            scores[name][k] = interval(point, boot[name][k])
    differences = {}
    for base in baselines:
        differences[base] = {
            name: {
                k: interval(scores[name][k].mean - scores[base][k].mean, boot[name][k] - boot[base][k]) for k in shots
            }
            for name in features
            if name != base
        }
    return FewLabelResult(tuple(shots), scores, differences, draws)


def patient_bootstrap(
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    groups: np.ndarray,
    num_classes: int,
    replicates: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[Interval, np.ndarray]]:
    """Macro-F1 with a test-patient bootstrap interval for fixed predictions (e.g. kNN on all labels); also
    returns the replicates, paired across `predictions`, for differences."""  # fmt: skip
    num_patients = len(np.unique(groups))
    resamples = Resamples.make(1, num_patients, replicates, seed)
    out = {}
    for name, pred in predictions.items():
        conf = patient_confusions(labels, pred, groups, num_classes)[None]
        reps = bootstrap_scores(conf, resamples)
        out[name] = (interval(float(macro_f1_from_confusion(conf.sum(1))[0]), reps), reps)
    return out
