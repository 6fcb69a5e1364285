"""Few-label evaluation, bootstrap intervals, effective rank and weight change, against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score

from fetalssl_jax.eval import few_label as fl
from fetalssl_jax.eval.frozen import effective_rank
from fetalssl_jax.train.health import relative_weight_change, stage_of


def _labels(n_patients=12, per_class=3, classes=5):
    labels = np.tile(np.repeat(np.arange(classes), per_class), n_patients)
    groups = np.repeat([f"L{p:03d}" for p in range(n_patients)], classes * per_class)
    return labels, groups


def test_macro_f1_from_confusion_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 5, 200)
        p = np.where(rng.random(200) < 0.5, y, rng.integers(0, 5, 200))
        p[p == 3] = 2  # a class never predicted
        conf = confusion_matrix(y, p, labels=range(5))
        assert fl.macro_f1_from_confusion(conf) == pytest.approx(
            f1_score(y, p, average="macro", labels=range(5), zero_division=0), abs=1e-12
        )


def test_patient_confusions_sum_to_the_whole_confusion():
    labels, groups = _labels()
    preds = np.random.default_rng(1).integers(0, 5, len(labels))
    per_patient = fl.patient_confusions(labels, preds, groups, 5)
    assert per_patient.shape == (12, 5, 5)
    np.testing.assert_array_equal(per_patient.sum(0), confusion_matrix(labels, preds, labels=range(5)))
    first = groups == "L000"
    np.testing.assert_array_equal(per_patient[0], confusion_matrix(labels[first], preds[first], labels=range(5)))


def test_label_draws_pick_k_of_every_class_deterministically():
    labels, _ = _labels(per_class=4)
    draws = fl.draw_label_subsets(labels, 3, 10, seed=0)
    assert len(draws) == 10
    for d in draws:
        np.testing.assert_array_equal(np.bincount(labels[d]), [3] * 5)
        assert len(np.unique(d)) == len(d)
    again = fl.draw_label_subsets(labels, 3, 10, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(draws, again, strict=True))
    assert len({tuple(d) for d in draws}) > 1
    np.testing.assert_array_equal(fl.draw_label_subsets(labels, 0, 10, seed=0)[0], np.arange(len(labels)))
    with pytest.raises(ValueError, match="class 0 has only 48"):
        fl.draw_label_subsets(labels, 49, 2, seed=0)


def test_bootstrap_replicate_equals_explicit_resampling():
    """One replicate = resample draws and patients by hand, concatenate the frames, score with sklearn."""
    labels, groups = _labels(n_patients=6)
    rng = np.random.default_rng(2)
    preds = [np.where(rng.random(len(labels)) < 0.6, labels, rng.integers(0, 5, len(labels))) for _ in range(4)]
    conf = np.stack([fl.patient_confusions(labels, p, groups, 5) for p in preds])
    resamples = fl.Resamples.make(num_draws=4, num_patients=6, replicates=5, seed=0)
    scores = fl.bootstrap_scores(conf, resamples)
    patients = np.unique(groups)
    for b in range(5):
        chosen = np.concatenate([np.nonzero(groups == patients[g])[0] for g in range(6)
                                 for _ in range(resamples.patient_weights[b, g])])  # fmt: skip
        expected = np.mean([
            f1_score(labels[chosen], preds[d][chosen], average="macro", labels=range(5), zero_division=0)
            for d in resamples.draws[b]
        ])  # fmt: skip
        assert scores[b] == pytest.approx(expected, abs=1e-12)


def _features(n, labels, separation, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(5, 16)) * separation
    return centres[labels] + rng.normal(size=(n, 16))


def test_few_label_evaluation_tells_good_from_useless_features():
    train_y, _ = _labels(n_patients=20, per_class=5)
    test_y, test_groups = _labels(n_patients=15, per_class=4)
    good = (_features(len(train_y), train_y, 3.0, 0), _features(len(test_y), test_y, 3.0, 0))
    noise = np.random.default_rng(9)
    useless = (noise.normal(size=(len(train_y), 16)), noise.normal(size=(len(test_y), 16)))
    result = fl.few_label_evaluation(
        {"good": good, "useless": useless, "useless again": useless}, train_y, test_y, test_groups, 5,
        shots=(1, 5, 0), draws=8, baselines=("useless",), replicates=300,
    )  # fmt: skip
    for k in (1, 5, 0):
        good_k, useless_k = result.scores["good"][k], result.scores["useless"][k]
        assert good_k.low <= good_k.mean <= good_k.high
        assert good_k.mean > 0.8 and useless_k.mean < 0.35
        diff = result.differences["useless"]["good"][k]
        assert diff.excludes_zero and diff.low > 0.4
        same = result.differences["useless"]["useless again"][k]  # identical features: exactly zero, paired
        assert same.mean == same.low == same.high == 0.0 and not same.excludes_zero
    assert result.scores["useless"][1].high - result.scores["useless"][1].low > 0.01  # draws and patients vary


def test_effective_rank_of_k_equal_directions_is_k():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    for k in (1, 3, 10):
        features = q[:, :k] @ np.diag(np.full(k, 5.0)) @ np.linalg.qr(rng.normal(size=(32, k)))[0].T
        assert effective_rank(features) == pytest.approx(k, rel=1e-6)
    assert effective_rank(np.outer(np.ones(50), rng.normal(size=8))) == pytest.approx(1.0, rel=1e-6)


def test_relative_weight_change_by_stage_against_numpy():
    rng = np.random.default_rng(0)
    initial = {
        "conv1": {"kernel": rng.normal(size=(3, 3, 3, 4))},
        "bn1": {"scale": np.ones(4), "bias": np.zeros(4)},
        "layer1_0": {"conv1": {"kernel": rng.normal(size=(3, 3, 4, 4))}, "bn1": {"scale": np.ones(4)}},
        "layer1_1": {"conv1": {"kernel": rng.normal(size=(3, 3, 4, 4))}},
        "layer2_0": {"conv1": {"kernel": rng.normal(size=(3, 3, 4, 8))}},
    }
    moved = {
        top: {k: {n: v + rng.normal(size=v.shape) * 0.1 for n, v in leaf.items()} if isinstance(leaf, dict) else leaf
              for k, leaf in sub.items()} if top.startswith("layer") else sub
        for top, sub in initial.items()
    }  # fmt: skip
    moved["conv1"] = {"kernel": initial["conv1"]["kernel"] * 1.5}
    moved["bn1"] = {"scale": np.full(4, 9.0), "bias": np.ones(4)}  # BN moves: not counted
    change = {k: float(v) for k, v in relative_weight_change(moved, initial).items()}
    assert change["stem"] == pytest.approx(0.5, rel=1e-5)
    k0, k1 = (initial[n]["conv1"]["kernel"] for n in ("layer1_0", "layer1_1"))
    m0, m1 = (moved[n]["conv1"]["kernel"] for n in ("layer1_0", "layer1_1"))
    expected = np.sqrt((np.sum((m0 - k0) ** 2) + np.sum((m1 - k1) ** 2)) / (np.sum(k0**2) + np.sum(k1**2)))
    assert change["layer1"] == pytest.approx(expected, rel=1e-5)
    assert set(change) == {"stem", "layer1", "layer2", "all"}
    assert stage_of("layer3_1") == "layer3" and stage_of("bn1") == "stem"


def test_evaluate_inits_without_patient_ids_resamples_images():
    """A planes CSV without patient_id: every image is its own resampling unit (one group would give no interval)."""
    from fetalssl_jax.data.types import LabelledFrames
    from fetalssl_jax.eval.frozen import evaluate_inits, format_table

    train_y, _ = _labels(n_patients=10, per_class=4)
    test_y, _ = _labels(n_patients=8, per_class=3)
    empty = lambda n: np.full(n, "")  # noqa: E731
    splits = {
        "train": LabelledFrames(np.zeros((len(train_y), 4, 4), np.uint8), train_y, empty(len(train_y))),
        "test": LabelledFrames(np.zeros((len(test_y), 4, 4), np.uint8), test_y, empty(len(test_y))),
    }
    rng = np.random.default_rng(0)
    feats = {name: (rng.normal(size=(len(train_y), 8)), rng.normal(size=(len(test_y), 8))) for name in ("a", "b")}
    result = evaluate_inits(
        None, {"a": {}, "b": {}}, splits, 4, 5, baselines=("b",), shots=(1, 0), draws=4, features=feats
    )
    assert result.num_test_patients == 0 and result.num_test == len(test_y)
    assert result.few_label.scores["a"][0].high > result.few_label.scores["a"][0].low  # an interval, not a point
    assert "no patient ids" in format_table(result)


def test_shots_a_small_labelled_set_cannot_supply_are_left_out(caplog):
    train_y, _ = _labels(n_patients=2, per_class=3)  # 6 images per class
    test_y, test_groups = _labels(n_patients=4, per_class=2)
    rng = np.random.default_rng(0)
    feats = {"a": (rng.normal(size=(len(train_y), 8)), rng.normal(size=(len(test_y), 8)))}
    with caplog.at_level("WARNING", logger="fetalssl_jax"):
        result = fl.few_label_evaluation(feats, train_y, test_y, test_groups, 5, shots=(1, 5, 10, 25, 0), draws=3)
    assert result.shots == (1, 5, 0) and set(result.scores["a"]) == {1, 5, 0}
    assert any("has 6 images; leaving out 10, 25" in r.getMessage() for r in caplog.records)
