"""A backbone or classifier from every form a user has, the architecture read from the files, and a directory of
the wrong kind refused with a message that names it, what it holds and what is allowed."""

import json

import jax
import numpy as np
import pytest
from apply_fixtures import ARCH, SIZE, WIDTH, save_classifier_run

from fetalssl_jax.apply import load_backbone, load_classifier
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.models import torch_io
from fetalssl_jax.train.checkpoint import export_backbone

CLASSES = ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")


@pytest.fixture(scope="module")
def variables():
    return resolve_backbone("random", {"arch": ARCH, "width": WIDTH}, SIZE, seed=3).variables


def _same(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_every_form_loads_the_same_weights_with_the_architecture_read_from_the_files(tmp_path, variables):
    run = tmp_path / "pretrain"  # a pretraining workdir: backbone/ and config.json (no image size in backbone.json)
    export_backbone(run / "backbone", variables, {"identity": {"arch": ARCH, "width": WIDTH, "method": "byol"}})
    (run / "config.json").write_text(json.dumps({"data": {"image_size": 48}}))
    weights = torch_io.save_state_dict_file(tmp_path / "r.safetensors", torch_io.to_torch_state_dict(variables))
    head = np.zeros((8 * WIDTH, 5), np.float32)
    classifier_run = save_classifier_run(tmp_path / "classify", variables, head, CLASSES)
    loaded = {
        "pretraining workdir": load_backbone(run),
        "exported backbone": load_backbone(run / "backbone"),
        "weights file": load_backbone(weights, image_size=64),
        "classification run": load_backbone(classifier_run),
        "classifier/ directory": load_backbone(classifier_run / "classifier"),
    }
    for form, backbone in loaded.items():
        assert (backbone.arch, backbone.width) == (ARCH, WIDTH), form
        assert _same(backbone.variables, variables), form
    assert [b.image_size for b in loaded.values()] == [48, 48, 64, SIZE, SIZE]
    assert [b.kind for b in loaded.values()] == ["pretrained", "pretrained", "weights_file", "classifier", "classifier"]
    classifier = load_classifier(classifier_run)
    assert classifier.class_names == CLASSES and classifier.image_size == SIZE
    assert _same(classifier.backbone.variables, variables)


def test_wrong_forms_are_errors_that_name_the_path_and_what_is_allowed(tmp_path, variables):
    weights = torch_io.save_state_dict_file(tmp_path / "r.npz", torch_io.to_torch_state_dict(variables))
    with pytest.raises(ValueError, match=r"r\.npz: a weights file does not say its input size; set image_size"):
        load_backbone(weights)
    with pytest.raises(ValueError, match=r"holds a resnet10 of width 8; asked for a resnet18 of width 8 \(leave"):
        load_backbone(weights, arch="resnet18", image_size=32)
    with pytest.raises(ValueError, match=r"'.*nowhere': no such file or directory; use a pretraining workdir"):
        load_backbone(tmp_path / "nowhere")
    unfinished = tmp_path / "unfinished"
    (unfinished / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"unfinished holds a pretraining or classification run that has not finished"):
        load_backbone(unfinished)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(ValueError) as error:
        load_backbone(other)
    message = str(error.value)
    assert str(other) in message and "notes.txt" in message and "an exported backbone directory" in message
    export_backbone(tmp_path / "bb", variables, {"identity": {"arch": ARCH, "width": WIDTH}, "image_size": SIZE})
    with pytest.raises(ValueError, match=r"bb holds a backbone \(backbone.json\), not a classifier; a classifier is "
                                         r"a classification run's workdir.*--config.init=.*bb"):  # fmt: skip
        load_classifier(tmp_path / "bb")
    with pytest.raises(ValueError, match=r"other holds no model files"):
        load_classifier(other)
