"""Temperature scaling against a brute-force search of the NLL, the ECE against a hand-worked example, its floor
against the binomial distribution, and the known-frame score against scikit-learn's nearest neighbours."""

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.neighbors import NearestNeighbors

from fetalssl_jax.downstream import calibration
from fetalssl_jax.downstream.ood import KnownRule, knn_distance, reference_rows


def _nll(logits, labels, t):
    """Mean -log softmax(logits / t)[label], written out with numpy."""
    z = logits / t
    z = z - z.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(labels)), labels]))


@pytest.mark.parametrize("true_temperature", [0.4, 3.0])
def test_temperature_is_the_minimum_of_a_brute_force_search_of_the_nll(true_temperature):
    rng = np.random.default_rng(0)
    # labels drawn from softmax(base), the logits shown are base * true_temperature: over- (3) or under- (0.4)
    # confident, so the best T is near true_temperature
    base = rng.normal(0, 2.0, (2000, 5))
    p = np.exp(base) / np.exp(base).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    logits = base * true_temperature
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 20001))
    brute = grid[np.argmin([_nll(logits, labels, t) for t in grid])]
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(brute, rel=1e-3)  # the grid's spacing is 3e-4 in log T
    assert fitted == pytest.approx(true_temperature, rel=0.1)
    assert calibration.nll(logits, labels, fitted) == pytest.approx(_nll(logits, labels, fitted), rel=1e-9)
    np.testing.assert_allclose(calibration.calibrated(logits, fitted).argmax(1), logits.argmax(1))  # argmax kept


def test_temperature_and_bias_recover_a_classifier_that_favours_some_classes():
    rng = np.random.default_rng(4)
    # labels drawn from softmax(base + true_bias); the logits shown are base * 2 (over-confident, biased): the fit
    # should find T = 2 and the biases relative to class 0, and no small step from it lowers the numpy NLL
    true_bias = np.array([0.0, 0.8, -0.5, 0.3, -1.0])
    base = rng.normal(0, 2.0, (6000, 5))
    p = np.exp(base + true_bias)
    labels = (rng.random((len(p), 1)) > np.cumsum(p / p.sum(1, keepdims=True), 1)).sum(1)
    logits = base * 2.0
    temperature, bias = calibration.fit_temperature_and_bias(logits, labels)
    assert temperature == pytest.approx(2.0, rel=0.05) and bias[0] == 0.0
    np.testing.assert_allclose(bias, true_bias, atol=0.12)

    def numpy_nll(t, b):
        return _nll(logits / t + b, labels, 1.0)

    best = numpy_nll(temperature, bias)
    assert best == pytest.approx(calibration.nll(logits, labels, temperature, bias), rel=1e-9)
    for step in (-1e-3, 1e-3):  # T and each bias but the fixed first one, both ways
        assert numpy_nll(temperature + step, bias) >= best - 1e-9
        for i in range(1, 5):
            assert numpy_nll(temperature, bias + step * (np.arange(5) == i)) >= best - 1e-9
    assert best < numpy_nll(calibration.fit_temperature(logits, labels), np.zeros(5))  # the biases help here
    np.testing.assert_allclose(calibration.calibrated(logits, temperature, bias),
                               np.exp(logits / temperature + bias) / np.exp(logits / temperature + bias).sum(1,
                               keepdims=True), atol=1e-6)  # fmt: skip


def test_ece_of_a_hand_worked_example():
    probabilities = np.array([[0.9, 0.1], [0.92, 0.08], [0.42, 0.58], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 1])
    # 15 bins of width 1/15: 0.9 and 0.92 share (13/15, 14/15]: accuracy 1/2, confidence 0.91; 0.58 alone in
    # (8/15, 9/15], right; 0.7 alone in (10/15, 11/15], wrong
    expected = 2 / 4 * abs(0.5 - 0.91) + 1 / 4 * abs(1 - 0.58) + 1 / 4 * abs(0 - 0.7)
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(expected)  # 0.485
    bins = calibration.reliability_bins(probabilities, labels)
    assert bins["count"].tolist() == [0] * 8 + [1, 0, 1, 0, 0, 2, 0]
    # calibrated within its bin: 3 of 4 right at confidence 0.75
    assert calibration.expected_calibration_error(np.tile([0.75, 0.25], (4, 1)), np.array([0, 0, 0, 1])) == 0.0
    one_bin = calibration.expected_calibration_error(probabilities, labels, bins=1)  # one bin: |mean acc - mean conf|
    assert one_bin == pytest.approx(abs(0.5 - np.mean([0.9, 0.92, 0.58, 0.7])))


def test_the_ece_of_a_calibrated_classifier_follows_the_binomial_distribution():
    # n frames at probabilities (0.7, 0.3): one bin, prediction class 0, labels class 0 with probability 0.7, so the
    # ECE is |K / n - 0.7| with K ~ Binomial(n, 0.7); its mean from the binomial pmf
    n = 40
    k = np.arange(n + 1)
    expected_mean = float(np.sum(binom.pmf(k, n, 0.7) * np.abs(k / n - 0.7)))  # 0.0582
    eces = calibration.ece_if_calibrated(np.tile([0.7, 0.3], (n, 1)), replicates=4000, seed=3)
    assert eces.mean() == pytest.approx(expected_mean, abs=0.003)  # Monte Carlo standard error 0.0007
    assert set(np.round(eces * n, 6)) <= set(np.abs(k - 0.7 * n).round(6))  # each replicate a possible |K - 28| / n
    assert np.all(calibration.ece_if_calibrated(np.tile([1.0, 0.0], (n, 1)), replicates=50) == 0.0)  # sure and right
    assert np.array_equal(calibration.ece_if_calibrated(np.tile([0.7, 0.3], (n, 1)), replicates=20, seed=3),
                          eces[:20])  # seeded  # fmt: skip


def test_the_score_is_the_distance_to_the_kth_nearest_training_image():
    rng = np.random.default_rng(1)
    train, frames = rng.normal(size=(50, 8)), rng.normal(size=(7, 8))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for k in (1, 5):
        distances, _ = NearestNeighbors(n_neighbors=k).fit(unit(train)).kneighbors(unit(frames))
        got = np.asarray(knn_distance(frames, unit(train).astype(np.float32), k))
        np.testing.assert_allclose(got, distances[:, k - 1], atol=1e-5)


def test_the_known_rule_thresholds_at_the_validation_quantile_and_round_trips(tmp_path):
    rng = np.random.default_rng(2)
    train, valid = rng.normal(size=(40, 6)), rng.normal(size=(30, 6))
    rule = KnownRule.fit(train, lambda reference, k: knn_distance(valid, reference, k))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    distances, _ = NearestNeighbors(n_neighbors=10).fit(unit(train)).kneighbors(unit(valid))
    assert rule.k == 10 and rule.threshold == pytest.approx(np.quantile(distances[:, 9], 0.95), abs=1e-5)
    assert rule.known(rule.scores(valid)).sum() == 28  # at or below the 95th percentile, between the 28th and 29th
    assert KnownRule.fit(train[:4], lambda r, k: knn_distance(valid, r, k)).k == 4  # fewer images than K: all
    rule.save(tmp_path)
    loaded = KnownRule.load(tmp_path, rule.description())
    np.testing.assert_array_equal(loaded.reference, rule.reference)
    assert (loaded.k, loaded.threshold, loaded.digest()) == (rule.k, rule.threshold, rule.digest())
    np.testing.assert_array_equal(reference_rows(100, 0), np.arange(100))
    big = reference_rows(10_000, 0)
    assert len(big) == 4096 and len(np.unique(big)) == 4096 and np.array_equal(big, reference_rows(10_000, 0))
    assert len(reference_rows(10_000, 0, dim=7680)) == (1 << 24) // 7680  # a ResNet-50's features: 64 MiB


def test_the_score_features_of_a_vit_are_its_patch_tokens_at_four_depths():
    import jax

    from fetalssl_jax.data.augment import preprocess_eval
    from fetalssl_jax.downstream.trust import logits_and_features
    from fetalssl_jax.models.classifier import Classifier
    from fetalssl_jax.models.vit import create_vit

    model = Classifier(create_vit("vit_micro", patch_size=8, image_size=32, reg_tokens=2), 5)
    images = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    x = preprocess_eval(images, 32)
    variables = model.init(jax.random.key(0), x, train=False)
    logits, features = logits_and_features(model, 32, variables, images)
    np.testing.assert_allclose(logits, model.apply(variables, x, train=False), atol=1e-5)
    _, state = model.backbone.apply({k: v["backbone"] for k, v in variables.items()}, x, train=False,
                                    capture_intermediates=True, mutable=["intermediates"])  # fmt: skip
    expected = []
    for block in range(4):  # vit_micro: 4 blocks, each a quarter; the class token and 2 registers left out
        tokens = np.asarray(state["intermediates"][f"blocks_{block}"]["__call__"][0], np.float64)[:, 3:]
        s = np.concatenate([tokens.mean(1), tokens.std(1)], axis=1)
        expected.append(s / np.linalg.norm(s, axis=1, keepdims=True))
    np.testing.assert_allclose(features, np.concatenate(expected, axis=1), atol=1e-5)
