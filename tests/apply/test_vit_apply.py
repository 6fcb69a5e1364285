"""embed, predict and select with a ViT: a backbone from every form with its architecture and input size read from
the files (a timm file against timm's own features), a ViT classifier's probabilities, and the outputs' identity."""

import json

import numpy as np
import pytest
from conftest import REPO
from vit_fixtures import (
    MICRO,
    SIZE,
    frames,
    state_dict_of,
    timm_features,
    timm_vit,
    vit_backbone_dir,
    vit_classifier_run,
)

from fetalssl_jax.apply import embed, load_backbone, load_classifier, predict
from fetalssl_jax.apply.outputs import model_identity
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.models import torch_io, vit_io

CLASSES = ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")
IDENTITY = {**MICRO, "reg_tokens": 1, "layer_scale": 0.1}


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    """One ViT's weights in every form: a pretraining workdir (backbone/ + config.json), an exported backbone, a
    classification run, its classifier/ directory, and a timm-named weights file (as the export task writes it)."""
    root = tmp_path_factory.mktemp("forms")
    _, variables = vit_backbone_dir(root / "pretrain" / "backbone", IDENTITY)
    (root / "pretrain" / "config.json").write_text(json.dumps({"data": {"image_size": SIZE}}))
    head = (0.1 * np.random.default_rng(1).standard_normal((64, 5))).astype(np.float32)
    run = vit_classifier_run(root / "classify", variables, head, CLASSES, IDENTITY)
    weights = torch_io.save_state_dict_file(root / "vit.npz", vit_io.to_timm_state_dict(variables))
    paths = {"pretraining workdir": root / "pretrain", "exported backbone": root / "pretrain" / "backbone",
             "classification run": run, "classifier/ directory": run / "classifier",
             "weights file": weights}  # fmt: skip
    return root, variables, head, paths


def test_every_form_of_a_vit_loads_with_what_the_files_say(forms):
    _, variables, _, paths = forms
    x = frames(5)
    expected = extract_features(load_backbone(paths["exported backbone"]).module, variables, x, SIZE, batch_size=8)
    for form, path in paths.items():
        backbone = load_backbone(path)
        identity = {**IDENTITY, "layer_scale": 1e-5} if form == "weights file" else IDENTITY  # a file: LayerScale on
        assert backbone.identity == identity and (backbone.arch, backbone.width) == ("vit_micro", None), form
        assert backbone.image_size == SIZE and set(backbone.variables) == {"params"}, form
        np.testing.assert_allclose(embed(backbone, x, batch_size=8), expected, atol=1e-5, err_msg=form)
    assert model_identity(load_backbone(paths["exported backbone"])) == {
        "kind": "pretrained", "arch": "vit_micro", "patch_size": 8, "reg_tokens": 1, "layer_scale": 0.1,
        "image_size": SIZE, "weights_sha256": model_identity(load_backbone(paths["pretraining workdir"]))[
            "weights_sha256"],
    }  # fmt: skip


def test_a_timm_file_embeds_as_timm_at_its_own_size_or_another(tmp_path):
    timm = timm_vit(reg_tokens=1, init_values=0.1)
    path = torch_io.save_state_dict_file(tmp_path / "dinov2.safetensors", state_dict_of(timm, "module.backbone."))
    for size in (SIZE, 48):  # the file's own 32 px (read from its position embeddings), and 48 px resampled
        backbone = load_backbone(path, image_size=None if size == SIZE else size)
        assert backbone.image_size == size and backbone.kind == "weights_file"
        x = frames(3, size)
        np.testing.assert_allclose(embed(backbone, x, batch_size=4), timm_features(timm, x), atol=1e-4)


def test_a_tool_names_the_vit_it_asked_for_and_the_keys_a_random_vit_needs(forms):
    _, _, _, paths = forms
    with pytest.raises(DataError, match=r"holds a vit_micro with 8-pixel patches and 1 register and LayerScale; "
                                        r"asked for a vit_micro with 16-pixel patches"):  # fmt: skip
        load_backbone(paths["exported backbone"], patch_size=16)
    with pytest.raises(DataError, match=r"image_size = 36: not a multiple of .*ViT patch size 8"):
        load_backbone(paths["classification run"], image_size=36)
    with pytest.raises(DataError, match="a 'random' backbone needs model.arch, model.patch_size and image_size"):
        load_backbone("random", arch="vit_micro", image_size=SIZE)
    random = load_backbone("random", arch="vit_micro", patch_size=8, image_size=SIZE)
    assert random.identity == {"arch": "vit_micro", "patch_size": 8, "reg_tokens": 0, "layer_scale": 0}
    assert embed(random, frames(2)).shape == (2, 64)


def test_predict_with_a_vit_classifier_is_its_head_on_its_features(forms):
    _, variables, head, paths = forms
    classifier = load_classifier(paths["classification run"])
    x = frames(6, seed=3)
    features = embed(classifier, x, batch_size=8)  # a classifier embeds with its own backbone
    logits = features.astype(np.float64) @ head
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(predict(classifier, x, batch_size=8), expected / expected.sum(1, keepdims=True),
                               atol=1e-5)  # fmt: skip
    identity = model_identity(classifier)
    assert (identity["kind"], identity["arch"], identity["patch_size"], identity["classes"]) == (
        "classifier", "vit_micro", 8, list(CLASSES))  # fmt: skip


def test_the_embed_select_and_predict_commands_with_a_vit(forms, tmp_path, monkeypatch):
    from fetalssl_jax.apply.embedding import Embeddings
    from fetalssl_jax.apply.tasks import run

    monkeypatch.setenv("FETALSSL_ID_SALT", "pepper")
    root, variables, _, paths = forms
    rng = np.random.default_rng(4)
    np.savez(tmp_path / "scans.npz", a=rng.integers(0, 256, (12, SIZE, SIZE), dtype=np.uint8),
             b=rng.integers(0, 256, (10, SIZE, SIZE), dtype=np.uint8))  # fmt: skip
    configs = {task: load_config(f"{REPO / 'configs' / f'{task}.py'}:tiny") for task in ("embed", "select", "predict")}
    for task, config in configs.items():
        set_by_path(config, "input", str(tmp_path / "scans.npz"))
        set_by_path(config, "frame_skip", 2)
        model = ("classifier", paths["classification run"]) if task == "predict" else ("backbone", root / "pretrain")
        set_by_path(config, model[0], str(model[1]))
    set_by_path(configs["select"], "budget", 3)
    set_by_path(configs["select"], "min_gap", 0)
    set_by_path(configs["embed"], "model.patch_size", 8)  # given: must match the files
    assert "11 frames x 64 features" in run(configs["embed"], tmp_path / "embed")
    embeddings = Embeddings.load(tmp_path / "embed")
    backbone = load_backbone(root / "pretrain")
    kept = np.load(tmp_path / "scans.npz")
    expected = extract_features(backbone.module, variables, np.concatenate([kept["a"][::2], kept["b"][::2]]), SIZE)
    np.testing.assert_allclose(embeddings.features, expected, atol=1e-5)
    recorded = json.loads((tmp_path / "embed" / "config.json").read_text())["identity"]["model"]
    assert (recorded["arch"], recorded["patch_size"], recorded["reg_tokens"]) == ("vit_micro", 8, 1)
    assert run(configs["select"], tmp_path / "select").startswith("chose 3 of 11 frames")
    assert "2 video(s)" in run(configs["predict"], tmp_path / "predict")
    assert (tmp_path / "predict" / "summary.json").is_file()
