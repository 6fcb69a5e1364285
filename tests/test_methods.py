"""Every pretraining method: registered, trains end to end from its config's tiny preset, and its loss is finite."""

import json

import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.methods import get_method, registered_methods
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics

CONFIGS = {
    "autoencoder": "autoencoder.py",
    "barlow_twins": "barlow_twins.py",
    "byol": "byol.py",
    "inpainting": "inpainting.py",
    "moco": "moco.py",
    "reorder": "reorder.py",
    "simclr": "simclr.py",
    "vicreg": "vicreg.py",
}


def test_registry_has_the_eight_methods_and_names_unknown_ones():
    assert registered_methods() == sorted(CONFIGS)
    with pytest.raises(KeyError, match=r"unknown method 'swav'.*barlow_twins"):
        get_method("swav")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_config_presets_load(method):
    for preset in ("", "tiny", "paper"):
        config = load_config(f"{REPO / 'configs' / CONFIGS[method]}:{preset}")
        assert config.method == method
    assert config.model.arch == "resnet50" and config.data.image_size == 256  # paper preset


@pytest.mark.parametrize("method", sorted(set(CONFIGS) - {"barlow_twins"}))  # barlow: test_train.py
def test_tiny_pretraining_end_to_end(method, tmp_path):
    config = load_config(f"{REPO / 'configs' / CONFIGS[method]}:tiny")
    set_by_path(config, "num_steps", 4)
    set_by_path(config, "eval.compare_random_init", False)
    result = train(config, tmp_path)
    assert result.status == "finished" and result.step == 4
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records)
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert list(evaluation["knn_macro_f1"]) == [f"{method} (step 4)"]
