"""predict with a classifier saved with a temperature, class biases and a known-frame rule: its probabilities are
softmax(logits / T + b) and its scores the distance to the k-th nearest reference (the layer4 map's channel means
and standard deviations), as numpy and scikit-learn compute them, through JAX and through the ONNX export; frames
above the threshold and colour-Doppler frames are "not a known plane" and never a best frame; a stream scores its
frames as offline predict does; the temperature, the biases and the rule are part of predict's fingerprint."""

import csv
import json
import shutil
import sys

import numpy as np
import pytest
from apply_fixtures import SIZE, map_statistics, random_backbone, save_classifier_run, tool_config
from conftest import REPO
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from us_fixtures import write_video

from fetalssl_jax.apply import load_classifier, predict
from fetalssl_jax.apply.tasks import run_predict
from fetalssl_jax.data.synthetic import PLANES, generate_labelled_frames
from fetalssl_jax.downstream.export import run as run_export
from fetalssl_jax.downstream.ood import KnownRule
from fetalssl_jax.downstream.trust import Trust
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.train.fingerprint import WorkdirMismatchError

sys.path.insert(0, str(REPO / "benchmarks"))
from ood_frames import checkerboard, colour_doppler  # noqa: E402

TEMPERATURE, K = 2.5, 5
BIAS = (0.0, 0.6, -0.4, 0.2, -0.9)  # one per plane


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """A classifier on a random backbone: a logistic-regression head fitted on generated training scans, temperature
    2.5 and class biases `BIAS`, its rule's reference the training scans' features and its threshold the validation
    scores' 95th percentile (computed here with scikit-learn); its ONNX export; and numpy's answer for any frames."""
    root = tmp_path_factory.mktemp("known")
    splits = generate_labelled_frames(12, 10, SIZE, seed=3)
    backbone = random_backbone(0)

    def features(frames):
        return extract_features(backbone.module, backbone.variables, frames, SIZE).astype(np.float64)

    def statistics(frames):
        return map_statistics(backbone.module, backbone.variables, frames, SIZE)

    train = features(splits["train"].images)
    head = LogisticRegression(fit_intercept=False, max_iter=5000).fit(train, splits["train"].labels).coef_.T
    reference = _unit(statistics(splits["train"].images))
    neighbours = NearestNeighbors(n_neighbors=K).fit(reference)
    threshold = float(np.quantile(neighbours.kneighbors(_unit(statistics(splits["valid"].images)))[0][:, -1], 0.95))
    rule = KnownRule(reference.astype(np.float32), K, threshold)
    run = save_classifier_run(root / "run", backbone.variables, head.astype(np.float32), PLANES,
                              trust=Trust(TEMPERATURE, rule, BIAS))  # fmt: skip
    run_export(tool_config("export.py", classifier=str(run), format="onnx"), root / "export")

    def expected(frames):
        """(probabilities, scores) of uint8 frames [N, S, S] by numpy and scikit-learn."""
        z = features(frames) @ head.astype(np.float32).astype(np.float64) / TEMPERATURE + np.array(BIAS)
        p = np.exp(z - z.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True), neighbours.kneighbors(_unit(statistics(frames)))[0][:, -1]

    return root, run, root / "export" / "classifier.onnx", splits, threshold, expected


def test_images_get_calibrated_probabilities_scores_and_known_through_jax_and_onnx(trusted, tmp_path):
    root, run, onnx_file, splits, threshold, expected = trusted
    rng = np.random.default_rng(0)
    scans = splits["test"].images[:12]
    folder = tmp_path / "images"
    folder.mkdir()
    gray = {**{f"scan{i:02d}.png": f for i, f in enumerate(scans)}, "black0.png": np.zeros((SIZE, SIZE), np.uint8),
            **{f"checker{i}.png": checkerboard(SIZE, rng) for i in range(2)}}  # fmt: skip
    doppler = {f"doppler{i}.png": colour_doppler(f, rng) for i, f in enumerate(splits["test"].images[12:14])}
    for name, image in {**gray, **doppler}.items():
        Image.fromarray(image).save(folder / name)
    probabilities, scores = expected(np.stack(list(gray.values())))
    assert np.any(scores <= threshold) and np.any(scores > threshold)  # both kinds among the gray frames
    for name, model in (("jax", run), ("onnx", onnx_file)):
        line = run_predict(tool_config("predict.py:tiny", classifier=str(model), input=str(folder),
                                   deidentify_pixels=False), tmp_path / name)  # fmt: skip
        rows = _csv(tmp_path / name / "predictions.csv")
        path_of = {r["source_id"]: r["path"] for r in _csv(tmp_path / name / "sources.csv")}
        by_name = {path_of[r["source_id"]]: r for r in rows}
        assert list(rows[0])[-2:] == ["ood_score", "known"]
        got = np.array([[float(by_name[n][f"p_{c}"]) for c in PLANES] for n in gray])
        np.testing.assert_allclose(got, probabilities, atol=1e-4, err_msg=name)
        np.testing.assert_allclose([float(by_name[n]["ood_score"]) for n in gray], scores, atol=1e-4, err_msg=name)
        known = [by_name[n]["known"] == "true" for n in gray]
        decided = np.abs(scores - threshold) > 1e-4  # frames at the threshold may fall on either side in float32
        np.testing.assert_array_equal(np.array(known)[decided], (scores <= threshold)[decided])
        assert [by_name[n]["known"] for n in doppler] == ["false", "false"]  # colour: not a known plane
        assert f"{len(rows) - sum(known)} not a known plane" in line


def test_the_temperature_and_the_threshold_travel_in_the_onnx_file(trusted):
    _, run, onnx_file, splits, threshold, expected = trusted
    onnx = load_classifier(onnx_file)
    meta = onnx.session.get_modelmeta().custom_metadata_map
    assert float(meta["fetalssl_jax.temperature"]) == TEMPERATURE and onnx.ood_threshold == pytest.approx(threshold)
    assert json.loads(meta["fetalssl_jax.class_bias"]) == list(BIAS)
    assert [o.name for o in onnx.session.get_outputs()] == ["probabilities", "ood_score"]
    frames = splits["valid"].images[:6]
    np.testing.assert_allclose(predict(onnx, frames), expected(frames)[0], atol=1e-4)
    np.testing.assert_allclose(predict(load_classifier(run), frames), expected(frames)[0], atol=1e-4)


def test_a_video_reports_best_frames_among_known_frames_only(trusted, tmp_path):
    root, run, _, splits, threshold, expected = trusted
    rng = np.random.default_rng(1)
    frames = np.concatenate([splits["test"].images[:16], np.stack([checkerboard(SIZE, rng) for _ in range(3)]),
                             np.zeros((2, SIZE, SIZE), np.uint8), splits["test"].images[16:24]])  # fmt: skip
    np.save(tmp_path / "scan.npy", frames)
    config = tool_config("predict.py:tiny", classifier=str(run), input=str(tmp_path / "scan.npy"), frame_skip=1,
                     threshold=0.2, deidentify_pixels=False)  # fmt: skip
    line = run_predict(config, tmp_path / "out")
    rows = _csv(tmp_path / "out" / "frames.csv")
    _, scores = expected(frames)
    np.testing.assert_allclose([float(r["ood_score"]) for r in rows], scores, atol=1e-4)
    known = np.array([r["known"] == "true" for r in rows])
    decided = np.abs(scores - threshold) > 1e-4
    np.testing.assert_array_equal(known[decided], (scores <= threshold)[decided])
    assert (~known[16:21]).sum() >= 3 and known.sum() >= 10  # most checkerboards and black frames are not known
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames_not_known"] == int((~known).sum()) and f"({(~known).sum()} frames not a known" in line
    assert summary["planes_found"]
    for found in summary["planes_found"].values():
        assert all(known[f["row"]] for f in found)


def test_a_stream_scores_its_frames_as_offline_predict_does(trusted, tmp_path):
    _, run, onnx_file, splits, threshold, _ = trusted
    frames = np.concatenate([splits["test"].images[:20], np.full((3, SIZE, SIZE), 128, np.uint8)])
    frames = np.repeat(np.repeat(frames, 2, axis=1), 2, axis=2)  # 64 px: the codec keeps the scans closer
    write_video(tmp_path / "scan.mp4", frames)
    settings = {"input": str(tmp_path / "scan.mp4"), "frame_skip": 1, "smooth_window": 1}
    run_predict(tool_config("predict.py:tiny", classifier=str(run), **settings), tmp_path / "offline")
    offline = {int(r["frame_index"]): r for r in _csv(tmp_path / "offline" / "frames.csv")}
    for name, model in (("jax", run), ("onnx", onnx_file)):
        run_predict(tool_config("predict.py:tiny", classifier=str(model), stream=True, **settings), tmp_path / name)
        rows = _csv(tmp_path / name / "frames.csv")
        assert len(rows) >= 20
        for r in rows:
            there = offline[int(r["frame_index"])]
            assert float(r["ood_score"]) == pytest.approx(float(there["ood_score"]), abs=1e-4)
            assert r["known"] == there["known"] or abs(float(r["ood_score"]) - threshold) < 1e-4
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["frames_not_known"] == sum(r["known"] == "false" for r in rows)
        assert summary["frames_not_known"] >= 1  # the flat gray frames


def test_another_temperature_or_bias_is_another_model_for_predicts_outputs(trusted, tmp_path):
    _, run, _, splits, _, _ = trusted
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(splits["test"].images[:3]):
        Image.fromarray(image).save(folder / f"{i}.png")
    config = tool_config("predict.py:tiny", classifier=str(run), input=str(folder))
    run_predict(config, tmp_path / "out")
    assert run_predict(config, tmp_path / "out").startswith("up to date")
    other = tmp_path / "other_run"
    other.mkdir()
    shutil.copytree(run / "classifier", other / "classifier")
    description = json.loads((other / "classifier" / "classifier.json").read_text())
    (other / "classifier" / "classifier.json").write_text(json.dumps({**description, "temperature": 1.5}))
    with pytest.raises(WorkdirMismatchError, match=r"identity\.model\.temperature"):
        run_predict(tool_config("predict.py:tiny", classifier=str(other), input=str(folder)), tmp_path / "out")
    (other / "classifier" / "classifier.json").write_text(json.dumps({**description, "class_bias": [0.0] * 5}))
    with pytest.raises(WorkdirMismatchError, match=r"identity\.model\.class_bias"):
        run_predict(tool_config("predict.py:tiny", classifier=str(other), input=str(folder)), tmp_path / "out")


def test_best_frames_skip_frames_that_are_not_known_by_hand():
    from fetalssl_jax.apply import best_frames

    p = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.3, 0.95]])
    index = np.array([0, 5, 10, 15, 20])
    known = np.array([True, True, False, True, False])
    found = best_frames(p, index, threshold=0.5, top_k=2, min_separation=2, known=known)
    assert found[0] == []  # 0.7 is the only frame above 0.5, and it is not known
    assert [(f.frame, f.probability) for f in found[1]] == [(0, 0.9), (15, 0.6)]  # 0.95 not known, 0.8 too close
