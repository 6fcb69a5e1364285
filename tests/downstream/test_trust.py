"""A classification run fits its temperature and known-frame rule on the validation split and stores them with the
classifier: the temperature is the minimum of a brute-force search of the validation NLL, the ECE of results.json
is numpy's on the test split, the rule's reference and threshold are the training features and the validation
scores' 95th percentile (scikit-learn's neighbours), predict gives the run's probabilities and scores, and predict
reports at most 5 % of a folder of black, colour-Doppler and non-ultrasound frames as a plane."""

import csv
import logging
import sys

import numpy as np
import pytest
from apply_fixtures import map_statistics
from conftest import REPO
from PIL import Image
from sklearn.neighbors import NearestNeighbors

from fetalssl_jax.apply import load_classifier, predict
from fetalssl_jax.apply.tasks import run_predict
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data import sources
from fetalssl_jax.downstream.classification import load_classifier as load_run
from fetalssl_jax.downstream.classification import predict_probabilities, run_classification
from fetalssl_jax.downstream.ood import REFERENCE_FILE

sys.path.insert(0, str(REPO / "benchmarks"))
from ood_frames import NOT_PLANES, known_shares, write_folder  # noqa: E402


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ece(probabilities, labels, bins=15):
    """Expected calibration error, one bin at a time."""
    confidence, correct, total = probabilities.max(1), probabilities.argmax(1) == labels, 0.0
    for b in range(bins):
        inside = (confidence > b / bins) & (confidence <= (b + 1) / bins)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return total


@pytest.fixture(scope="module")
def run(repo, tmp_path_factory):
    """A tiny classification run (at 64 px: the layer4 map has 2 x 2 positions, whose spread the score reads; 30
    patients), its config's labelled splits, and its uncalibrated probabilities."""
    config = load_config(f"{repo / 'configs' / 'classify.py'}:tiny,num_epochs=5")
    for key, value in {"data.image_size": 64, "data.stored_size": 64, "eval.num_patients": 30,
                       "eval.frames_per_patient": 20, "calibration": "temperature"}.items():  # fmt: skip
        set_by_path(config, key, value)
    workdir = tmp_path_factory.mktemp("trust")
    results = run_classification(config, workdir)
    splits = sources.labelled_splits(config)
    _, variables, description, spec = load_run(workdir)

    def uncalibrated(images):
        return predict_probabilities(spec, variables["params"], variables["batch_stats"], images, 64)

    return workdir, results, description, splits, uncalibrated


def test_temperature_and_bias_minimise_the_validation_nll_and_predict_applies_them(repo, tmp_path, caplog):
    tiny = f"{repo / 'configs' / 'classify.py'}:tiny,num_epochs=3,calibration=temperature_and_bias"
    with caplog.at_level(logging.WARNING, logger="fetalssl_jax"):  # 2 validation patients: too few for biases
        few = run_classification(load_config(tiny), tmp_path / "few")
    assert (few["calibration"]["method"], few["calibration"]["requested"]) == ("temperature", "temperature_and_bias")
    assert "class_bias" not in few["calibration"] and "fitting the temperature only" in caplog.text
    config = load_config(f"{tiny},eval.num_patients=60,eval.frames_per_patient=30")
    splits = sources.labelled_splits(config)
    assert np.bincount(splits["valid"].labels).min() >= 50  # enough of every class
    results = run_classification(config, tmp_path / "run")
    _, variables, description, spec = load_run(tmp_path / "run")
    t, bias = description["temperature"], np.array(description["class_bias"])
    assert results["calibration"]["method"] == "temperature_and_bias" and bias[0] == 0.0 and len(bias) == 5

    def logits(split):  # softmax's logits up to a per-frame constant, which no calibration sees
        uncalibrated = predict_probabilities(spec, variables["params"], variables["batch_stats"], split.images, 32)
        return np.log(uncalibrated.astype(np.float64))

    valid = logits(splits["valid"])
    rows = np.arange(len(splits["valid"].labels))

    def nll(temperature, b):
        z = valid / temperature + b
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[rows, splits["valid"].labels]))

    best = nll(t, bias)
    assert best == pytest.approx(results["calibration"]["valid_nll"]["after"], rel=1e-5)
    for step in (-1e-3, 1e-3):  # no small step of T or of a free bias lowers numpy's validation NLL
        assert nll(t + step, bias) >= best - 1e-7
        assert all(nll(t, bias + step * (np.arange(5) == i)) >= best - 1e-7 for i in range(1, 5))
    z = logits(splits["test"]) / t + bias
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    rows = _csv(tmp_path / "run" / "predictions.csv")
    got = np.array([[float(r[f"p_{n}"]) for n in results["test"]["class_names"]] for r in rows])
    np.testing.assert_allclose(got, expected, atol=2e-5)
    np.testing.assert_allclose(predict(load_classifier(tmp_path / "run"), splits["test"].images[:8]), expected[:8],
                               atol=1e-4)  # fmt: skip
    assert results["calibration"]["test_macro_f1"]["after"] == pytest.approx(results["test"]["macro_f1"])


def test_the_temperature_minimises_the_validation_nll_of_the_selected_classifier(run):
    _, results, description, splits, uncalibrated = run
    logits = np.log(uncalibrated(splits["valid"].images).astype(np.float64))  # softmax's logits, up to a constant
    labels = splits["valid"].labels
    grid = np.exp(np.linspace(np.log(0.05), np.log(50.0), 8001))
    rows = np.arange(len(labels))
    nll = [np.mean(-np.log(np.exp(logits / t) / np.exp(logits / t).sum(1, keepdims=True))[rows, labels]) for t in grid]
    assert description["temperature"] == pytest.approx(grid[np.argmin(nll)], rel=2e-3)  # grid spacing 8.6e-4
    assert results["calibration"]["temperature"] == description["temperature"]
    assert results["calibration"]["valid_nll"]["after"] <= results["calibration"]["valid_nll"]["before"]


def test_results_report_the_test_ece_before_and_after_and_predictions_are_calibrated(run):
    workdir, results, description, splits, uncalibrated = run
    test = splits["test"]
    rows = _csv(workdir / "predictions.csv")
    names = results["test"]["class_names"]
    calibrated = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    before = uncalibrated(test.images).astype(np.float64)
    z = np.log(before) / description["temperature"]
    np.testing.assert_allclose(calibrated, np.exp(z) / np.exp(z).sum(1, keepdims=True), atol=2e-6)
    ece = results["calibration"]["test_ece"]
    assert ece["before"] == pytest.approx(_ece(before, test.labels), abs=1e-5)
    assert ece["after"] == pytest.approx(_ece(calibrated, test.labels), abs=1e-4)  # the CSV's 6 decimals
    assert (workdir / "reliability_diagram.png").stat().st_size > 5000
    # the floor: the mean ECE when every frame's label is drawn from its own calibrated probabilities
    rng = np.random.default_rng(0)
    drawn = [_ece(calibrated, np.array([rng.choice(len(names), p=q / q.sum()) for q in calibrated]))
             for _ in range(400)]  # fmt: skip
    floor = ece["after_if_calibrated"]
    assert floor["mean"] == pytest.approx(np.mean(drawn), abs=0.006)  # Monte Carlo error about 0.002
    assert floor["range"][0] < floor["mean"] < floor["range"][1]


def test_the_rule_is_the_training_features_and_the_validation_quantile(run):
    workdir, results, description, splits, _ = run
    backbone = load_classifier(workdir).backbone
    train, valid, test = (map_statistics(backbone.module, backbone.variables, splits[s].images, backbone.image_size)
                          for s in ("train", "valid", "test"))  # fmt: skip
    reference = np.load(workdir / "classifier" / REFERENCE_FILE)
    np.testing.assert_allclose(reference, _unit(train), atol=1e-5)  # every training image (fewer than 4096)
    k = description["ood"]["k"]
    neighbours = NearestNeighbors(n_neighbors=k).fit(_unit(train))
    valid_scores = neighbours.kneighbors(_unit(valid))[0][:, -1]
    assert description["ood"]["threshold"] == pytest.approx(np.quantile(valid_scores, 0.95), abs=1e-5)
    test_scores = neighbours.kneighbors(_unit(test))[0][:, -1]
    rows = _csv(workdir / "predictions.csv")
    np.testing.assert_allclose([float(r["ood_score"]) for r in rows], test_scores, atol=1e-4)
    assert results["ood"]["test_known_fraction"] == pytest.approx(np.mean([r["known"] == "true" for r in rows]))


def test_predict_gives_the_runs_probabilities_scores_and_known(run, tmp_path):
    workdir, results, _, splits, _ = run
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(splits["test"].images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    config = load_config(f"{REPO / 'configs' / 'predict.py'}:tiny")
    config.classifier, config.input, config.deidentify_pixels = str(workdir), str(folder), False
    run_predict(config, tmp_path / "out")
    path_of = {r["source_id"]: r["path"] for r in _csv(tmp_path / "out" / "sources.csv")}
    predicted = sorted(_csv(tmp_path / "out" / "predictions.csv"), key=lambda r: path_of[r["source_id"]])
    names = results["test"]["class_names"]
    for theirs, ours in zip(_csv(workdir / "predictions.csv"), predicted, strict=True):
        np.testing.assert_allclose([float(ours[f"p_{n}"]) for n in names], [float(theirs[f"p_{n}"]) for n in names],
                                   atol=2e-6)  # fmt: skip
        assert float(ours["ood_score"]) == pytest.approx(float(theirs["ood_score"]), abs=2e-6)
        assert (ours["known"], ours["prediction"]) == (theirs["known"], theirs["prediction"])


def test_predict_reports_few_frames_that_are_no_plane_as_a_plane(run, tmp_path):
    workdir, results, *_ = run
    files = write_folder(tmp_path / "frames", 20, 64, seed=0)
    config = load_config(f"{REPO / 'configs' / 'predict.py'}:tiny")
    config.classifier, config.input, config.input_type = str(workdir), str(tmp_path / "frames"), "images"
    run_predict(config, tmp_path / "out")
    shares = known_shares(tmp_path / "out", files, load_classifier(workdir).ood_threshold)
    not_planes = np.mean([shares[k]["known"] for k in NOT_PLANES])
    assert not_planes <= 0.05, shares
    assert shares["scans"]["known"] >= 0.7, shares  # generated scans of new patients: mostly known
    assert results["ood"]["test_known_fraction"] >= 0.8
