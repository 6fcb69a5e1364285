"""ONNX export (configs/export.py format=onnx): one file per model, run by onnxruntime on batches of 1 and 7 frames,
gives the JAX model's features / class probabilities to 1e-4 (preprocessing inside the graph: raw uint8 frames in);
the class names, input size and architecture travel in the file's metadata; the export config takes one model."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from apply_fixtures import ARCH, SIZE, WIDTH, random_backbone, save_classifier_run
from conftest import REPO

from fetalssl_jax import __version__
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.downstream.classification import load_classifier, predict_probabilities
from fetalssl_jax.downstream.export import run as run_export
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.validation import ConfigError

CLASSES = ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")


def _export(workdir, **overrides):
    config = load_config(str(REPO / "configs" / "export.py"))
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return run_export(config, workdir)


def _frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 1), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny backbone and two tiny classifiers on it (a plain head, and one with the head's BatchNorm), exported."""
    root = tmp_path_factory.mktemp("onnx")
    backbone = random_backbone(0, root / "backbone")
    rng = np.random.default_rng(1)
    head = (0.25 * rng.standard_normal((backbone.module.num_features, len(CLASSES)))).astype(np.float32)
    norm = (rng.uniform(0, 1, backbone.module.num_features), rng.uniform(0.5, 2, backbone.module.num_features))
    runs = {
        "plain": save_classifier_run(root / "plain", backbone.variables, head, CLASSES),
        "head_norm": save_classifier_run(root / "norm", backbone.variables, head, CLASSES, head_norm=norm),
    }
    lines = {name: _export(root / f"out_{name}", classifier=str(run), format="onnx") for name, run in runs.items()}
    lines["backbone"] = _export(root / "out_backbone", backbone=str(root / "backbone"), format="onnx")
    return root, backbone, runs, lines


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_one_classifier_file_gives_the_jax_probabilities_at_any_batch_size(exported):
    root, _, runs, lines = exported
    for name, run in runs.items():
        path = root / f"out_{name}" / "classifier.onnx"
        assert lines[name] == f"wrote {path}"
        session = _session(path)
        (frames_input,) = session.get_inputs()
        assert frames_input.name == "frames" and frames_input.type == "tensor(uint8)"
        assert isinstance(frames_input.shape[0], str) and frames_input.shape[1:] == [SIZE, SIZE, 1]  # dynamic batch
        _, variables, _, spec = load_classifier(run)
        for n, seed in ((1, 0), (7, 1)):
            frames = _frames(n, seed)
            (onnx_probs,) = session.run(None, {"frames": frames})
            jax_probs = predict_probabilities(spec, variables["params"], variables["batch_stats"], frames, 8)
            assert onnx_probs.shape == (n, len(CLASSES))
            assert jax_probs.max() < 0.99 and jax_probs.min() > 1e-3  # not saturated: a difference would show
            np.testing.assert_allclose(onnx_probs, jax_probs, atol=1e-4, err_msg=f"{name}, batch {n}")
            np.testing.assert_allclose(onnx_probs.sum(1), 1.0, atol=1e-5)


def test_the_backbone_file_gives_the_jax_features(exported):
    root, backbone, _, lines = exported
    path = root / "out_backbone" / "backbone.onnx"
    assert lines["backbone"] == f"wrote {path}"
    session = _session(path)
    for n, seed in ((1, 2), (7, 3)):
        frames = _frames(n, seed)
        (features,) = session.run(None, {"frames": frames})
        expected = extract_features(backbone.module, backbone.variables, frames, SIZE, batch_size=8)
        assert features.shape == (n, backbone.module.num_features) and np.abs(expected).max() > 0.1
        np.testing.assert_allclose(features, expected, atol=1e-4, rtol=1e-4)
    # a frame of another batch row does not change this one's features (per-sample BatchNorm, as in inference)
    frames = _frames(7, 4)
    first = session.run(None, {"frames": frames[:1]})[0]
    np.testing.assert_allclose(session.run(None, {"frames": frames})[0][:1], first, atol=1e-6)


def test_the_metadata_says_what_to_feed_and_how_to_read(exported):
    root, *_ = exported
    meta = _session(root / "out_plain" / "classifier.onnx").get_modelmeta().custom_metadata_map
    assert json.loads(meta["fetalssl_jax.class_names"]) == list(CLASSES)
    assert meta["fetalssl_jax.kind"] == "classifier" and meta["fetalssl_jax.image_size"] == str(SIZE)
    assert (meta["fetalssl_jax.arch"], meta["fetalssl_jax.width"]) == (ARCH, str(WIDTH))
    assert meta["fetalssl_jax.version"] == __version__
    norm = json.loads(meta["fetalssl_jax.normalisation"])
    assert norm["mean"] == [0.485, 0.456, 0.406] and norm["std"] == [0.229, 0.224, 0.225]
    meta = _session(root / "out_backbone" / "backbone.onnx").get_modelmeta().custom_metadata_map
    assert meta["fetalssl_jax.kind"] == "backbone" and "fetalssl_jax.class_names" not in meta


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({}, "config.backbone = '': must name a model, or config.classifier a classifier (it is empty)"),
        ({"backbone": "b", "classifier": "c", "format": "onnx"},
         "config.classifier = 'c': give a backbone or a classifier, not both (config.backbone = 'b')"),
        ({"classifier": "c"}, "config.format = 'safetensors': a classifier exports as 'onnx' only (config.backbone = "
                              "<the run> exports its fine-tuned backbone as safetensors or npz)"),
        ({"classifier": "c", "format": "onnx", "image_size": 64},
         "config.image_size = 64: must be 0 with a classifier (it takes the size it was trained at)"),
    ],
)  # fmt: skip
def test_the_export_config_takes_one_model(overrides, problem, tmp_path):
    with pytest.raises(ConfigError) as error:
        _export(tmp_path / "out", **overrides)
    assert error.value.problems == (problem,)
    assert not (tmp_path / "out").exists()
