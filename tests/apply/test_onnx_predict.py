"""predict with an ONNX classifier (configs/export.py format=onnx) instead of its classification run: the same
probabilities (onnxruntime against JAX, to 1e-4) and the same reports on the same frames, for a video and for
images; a file that is not an exported classifier is refused with its name."""

import csv
import json

import numpy as np
import pytest
from apply_fixtures import random_backbone, save_classifier_run, tool_config
from PIL import Image
from us_fixtures import moving_frames

from fetalssl_jax.apply import load_classifier, predict
from fetalssl_jax.apply.onnx_model import OnnxClassifier
from fetalssl_jax.apply.tasks import run_predict
from fetalssl_jax.downstream.export import run as run_export

CLASSES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny classification run, its ONNX export, its backbone's ONNX export, a video and a folder of images."""
    root = tmp_path_factory.mktemp("onnx_predict")
    backbone = random_backbone(0)
    head = 0.4 * np.random.default_rng(3).standard_normal((backbone.module.num_features, len(CLASSES)))
    run = save_classifier_run(root / "run", backbone.variables, head.astype(np.float32), CLASSES)
    run_export(tool_config("export.py", classifier=str(run), format="onnx"), root / "export")
    run_export(tool_config("export.py", backbone=str(run), format="onnx"), root / "export")
    frames = moving_frames(40, 48, 64, seed=2)
    (root / "scans").mkdir()
    np.save(root / "scans" / "scan.npy", frames)
    (root / "images").mkdir()
    for i in range(0, 40, 4):
        Image.fromarray(frames[i]).save(root / "images" / f"{i:02d}.png")
    return root, run, root / "export" / "classifier.onnx", frames


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_the_onnx_classifier_loads_with_its_class_names_and_size(models):
    _, run, onnx_file, frames = models
    classifier = load_classifier(onnx_file)
    assert isinstance(classifier, OnnxClassifier)
    assert classifier.class_names == CLASSES and classifier.image_size == load_classifier(run).image_size
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)) for f in frames[:9]])
    np.testing.assert_allclose(predict(classifier, small), predict(load_classifier(run), small), atol=1e-4)
    with pytest.raises(ValueError, match=r"takes uint8 gray frames \[N, 32, 32, 1\]; got uint8 \(2, 48, 64, 1\)"):
        predict(classifier, frames[:2])


def test_a_video_gives_the_same_reports_through_onnx_as_through_jax(models, tmp_path):
    root, run, onnx_file, _ = models
    for name, model in (("jax", run), ("onnx", onnx_file)):
        config = tool_config("predict.py:tiny", classifier=str(model), input=str(root / "scans" / "scan.npy"),
                         frame_skip=2, smooth_window=3, threshold=0.4)  # fmt: skip
        run_predict(config, tmp_path / name)
    jax_rows, onnx_rows = _csv(tmp_path / "jax" / "frames.csv"), _csv(tmp_path / "onnx" / "frames.csv")
    assert list(jax_rows[0]) == list(onnx_rows[0]) and len(jax_rows) == len(onnx_rows) == 20
    as_array = lambda rows: np.array([[float(v) for v in r.values()] for r in rows])  # noqa: E731
    np.testing.assert_allclose(as_array(onnx_rows), as_array(jax_rows), atol=2e-6 + 1e-4)
    assert np.ptp(as_array(jax_rows)[:, 1:5], axis=0).max() > 0.1  # the probabilities move over the video
    jax_summary, onnx_summary = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("jax", "onnx"))
    assert jax_summary["planes_found"] and jax_summary["planes_not_found"] == onnx_summary["planes_not_found"]
    for plane, found in jax_summary["planes_found"].items():
        (a,), (b,) = found, onnx_summary["planes_found"][plane]
        assert (a["frame"], a["png"]) == (b["frame"], b["png"])
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
        assert (tmp_path / "onnx" / b["png"]).read_bytes() == (tmp_path / "jax" / a["png"]).read_bytes()


def test_images_give_the_same_predictions_through_onnx(models, tmp_path):
    root, run, onnx_file, _ = models
    for name, model in (("jax", run), ("onnx", onnx_file)):
        run_predict(tool_config("predict.py:tiny", classifier=str(model), input=str(root / "images")), tmp_path / name)
    jax_rows, onnx_rows = _csv(tmp_path / "jax" / "predictions.csv"), _csv(tmp_path / "onnx" / "predictions.csv")
    assert [r["prediction"] for r in onnx_rows] == [r["prediction"] for r in jax_rows] and len(jax_rows) == 10
    for a, b in zip(jax_rows, onnx_rows, strict=True):
        assert a["source_id"] == b["source_id"]
        np.testing.assert_allclose([float(b[f"p_{c}"]) for c in CLASSES], [float(a[f"p_{c}"]) for c in CLASSES],
                                   atol=1e-4)  # fmt: skip


def test_an_onnx_file_that_is_not_a_classifier_is_refused(models, tmp_path):
    root, *_ = models
    backbone_file = root / "export" / "backbone.onnx"
    config = tool_config("predict.py:tiny", classifier=str(backbone_file), input=str(root / "scans" / "scan.npy"))
    with pytest.raises(ValueError, match=f"{backbone_file} holds an exported backbone; a classifier file is written"):
        run_predict(config, tmp_path / "out")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.onnx: not a readable ONNX model"):
        load_classifier(tmp_path / "junk.onnx")
    assert not (tmp_path / "out").exists()
