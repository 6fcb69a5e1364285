"""Plane detection in a video: on a generated sweep whose planes are known, with a classifier that is right on its
frames by construction, predict finds each plane's best frame (the independently computed most probable frame,
showing that plane), reports the absent plane as not found, and saves the frame itself; images give
predictions.csv; a classifier of other class names is refused."""

import csv
import json

import numpy as np
import pytest
from apply_fixtures import SIZE, random_backbone, save_classifier_run
from conftest import REPO
from PIL import Image
from sklearn.linear_model import LogisticRegression

from fetalssl_jax.apply import best_frames, load_classifier, predict, smooth
from fetalssl_jax.apply.tasks import run_predict
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data.build import readers
from fetalssl_jax.data.synthetic import PLANES, render_video
from fetalssl_jax.eval.frozen import extract_features

FRAME_SKIP = 2


def _softmax(logits):
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A generated sweep non-heart -> 4CH -> LVOT -> RVOT (no 3VV/3VT) as a .npy video at 64 px, and a classifier
    whose head is fitted on the features of exactly the frames predict will see."""
    root = tmp_path_factory.mktemp("predict")
    frames, planes = render_video(np.random.default_rng(5), 72, 64, frame_skip=1, plane_sequence=(4, 1, 2, 3))
    (root / "scans").mkdir()
    np.save(root / "scans" / "sweep.npy", frames)
    backbone = random_backbone()
    prepared, kept = readers.prepare_video(frames, "sweep.npy", SIZE, FRAME_SKIP)  # 64 px frames resized to 32
    features = extract_features(backbone.module, backbone.variables, prepared, SIZE)
    labels = planes[kept]
    assert set(labels) == {1, 2, 3, 4}
    fit = LogisticRegression(C=1e4, fit_intercept=False, max_iter=10000).fit(features, labels)
    assert fit.score(features, labels) == 1.0  # right on these frames by construction
    head = np.zeros((features.shape[1], len(PLANES)), np.float32)
    # multinomial logits sum to 0, so the best of the four is >= 0; scaled to at most 8 so that float32
    # probabilities do not saturate at 1 and the best frame is unique
    head[:, fit.classes_] = fit.coef_.T * 8.0 / np.abs(features @ fit.coef_.T).max()
    head[:, 0] = -10.0 * features.mean(0) / np.dot(features.mean(0), features.mean(0))  # features >= 0: logit < 0
    run = save_classifier_run(root / "classify", backbone.variables, head, PLANES)
    expected = _softmax(features.astype(np.float64) @ head.astype(np.float64))  # numpy, not the classifier's code
    return root, frames, planes, kept, run, expected, prepared


def _predict_config(**overrides):
    config = load_config(f"{REPO / 'configs' / 'predict.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


def test_predict_finds_the_best_frame_of_every_plane_of_a_generated_sweep(sweep):
    root, frames, planes, kept, run, expected, prepared = sweep
    np.testing.assert_allclose(predict(load_classifier(run), prepared), expected, atol=1e-4)
    for window in (1, 3):
        out = root / f"out{window}"
        config = _predict_config(classifier=str(run), input=str(root / "scans" / "sweep.npy"), frame_skip=FRAME_SKIP,
                                 smooth_window=window, threshold=0.5)  # fmt: skip
        run_predict(config, out)
        summary = json.loads((out / "summary.json").read_text())
        # the centred moving average, by hand: edge frames repeated
        padded = np.concatenate([expected[:1].repeat(window // 2, 0), expected, expected[-1:].repeat(window // 2, 0)])
        smoothed = np.stack([padded[i : i + window].mean(0) for i in range(len(expected))])
        assert sorted(summary["planes_found"]) == sorted(PLANES[c] for c in (1, 2, 3, 4))
        assert summary["planes_not_found"] == ["3VV/3VT"]
        for c in (1, 2, 3, 4):
            (best,) = summary["planes_found"][PLANES[c]]
            row = list(kept).index(best["frame"])
            assert smoothed[row, c] >= smoothed[:, c].max() - 1e-5, (window, PLANES[c])  # the most probable frame
            assert planes[best["frame"]] == c  # the frame shows that plane
            assert best["probability"] == pytest.approx(smoothed[row, c], abs=1e-4)
            png = np.asarray(Image.open(out / best["png"]))
            np.testing.assert_array_equal(png, frames[best["frame"]])  # the recorded frame, at its size
        assert (out / "timeline.png").stat().st_size > 10000
        with open(out / "frames.csv") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["frame_index"]) for r in rows] == list(kept)


def test_best_frames_threshold_top_k_and_separation_by_hand():
    p = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.3, 0.95]])
    index = np.array([0, 5, 10, 15, 20])
    found = best_frames(p, index, threshold=0.5, top_k=2, min_separation=2)
    assert [(f.frame, f.probability) for f in found[0]] == [(10, 0.7)]  # only one above 0.5
    assert [(f.frame, f.probability) for f in found[1]] == [(20, 0.95), (0, 0.9)]  # 0.8 is next to 0.9: skipped
    assert best_frames(p, index, threshold=0.99) == [[], []]
    np.testing.assert_allclose(smooth(p, 3)[0], (2 * p[0] + p[1]) / 3, rtol=1e-6)
    np.testing.assert_allclose(smooth(p, 3)[2], p[1:4].mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="window must be >= 1"):
        smooth(p, 0)


def test_images_give_predictions_and_other_class_names_are_refused(sweep, data_dir, tmp_path):
    _, frames, _, kept, run, expected, _ = sweep
    images = tmp_path / "images"
    images.mkdir()
    for i, k in enumerate(kept[:5]):
        Image.fromarray(frames[k]).save(images / f"{i}.png")
    # the images are the video's frames: read alone, a frame's sector is found without the other frames, and its dim
    # fluid edge may be blanked (sector.scan_sector); what is compared here is the prediction of the same pixels
    run_predict(_predict_config(classifier=str(run), input=str(images), deidentify_pixels=False), tmp_path / "out")
    with open(tmp_path / "out" / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["source_id", "label", "prediction", *(f"p_{n}" for n in PLANES)]
    probs = np.array([[float(r[f"p_{n}"]) for n in PLANES] for r in rows])
    np.testing.assert_allclose(probs, expected[:5], atol=1e-4)  # PNGs at 64 px: resized as the video frames were
    other = save_classifier_run(tmp_path / "other", random_backbone().variables, np.zeros((64, 5)), tuple("abcde"))
    config = _predict_config(classifier=str(other), input="tfds:fetal_cardiac_planes/tiny", data_dir=str(data_dir))
    refused = (
        r"trained on the classes \['a', 'b', 'c', 'd', 'e'\] but tfds:fetal_cardiac_planes/tiny \(train\) has \['3VV"
    )
    with pytest.raises(ValueError, match=refused):
        run_predict(config, tmp_path / "refused")


def test_a_model_of_the_wrong_kind_stops_predict_before_anything_is_written(sweep, tmp_path):
    root, *_ = sweep
    config = _predict_config(classifier=str(root / "scans"), input=str(root / "scans" / "sweep.npy"))
    with pytest.raises(ValueError, match=r"scans holds no model files \(entries: \['sweep.npy'\]\); a classifier is"):
        run_predict(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()
