"""Configs: presets, overrides, locked keys, the paper's setting."""

import pytest
from conftest import REPO

from fetalssl_jax.config_lib import ConfigFileError, load_config, set_by_path, unknown_override_keys

BARLOW = str(REPO / "configs" / "barlow.py")


def test_paper_preset_is_the_papers_setting():
    c = load_config(f"{BARLOW}:paper")
    assert (c.model.arch, c.data.image_size, tuple(c.method_kwargs.projector)) == ("resnet50", 256, (8192,) * 3)
    assert (c.batch_size, c.num_epochs, c.optim.name) == (2048, 1000, "lars")
    assert (c.optim.lr_weights, c.optim.lr_biases, c.optim.weight_decay) == (0.2, 0.0048, 1e-6)
    assert (c.optim.warmup_epochs, c.optim.end_lr_factor, c.method_kwargs.lambd) == (10, 0.001, 0.0051)
    assert (c.augment.view1.blur_prob, c.augment.view2.blur_prob) == (1.0, 0.1)
    assert (c.augment.view1.solarize_prob, c.augment.view2.solarize_prob) == (0.0, 0.2)


def test_preset_with_inline_overrides():
    c = load_config(f"{BARLOW}:tiny,batch_size=8,model.arch=resnet34")
    assert c.batch_size == 8 and c.model.arch == "resnet34" and c.preset == "tiny"


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'.*\['default', 'paper', 'tiny', 'vit'\]"):
        load_config(f"{BARLOW}:huge")


def test_config_is_locked_and_unknown_keys_are_named():
    c = load_config(BARLOW)
    with pytest.raises(AttributeError):
        c.optim.lrr = 1.0
    with pytest.raises(ConfigFileError, match=r"unknown config key 'optim.lrr': optim has no key 'lrr'.*lr_weights"):
        set_by_path(c, "optim.lrr", 1.0)
    assert unknown_override_keys(c, ["--config.batch_size=4", "--config.model.archh=x"]) == [
        "unknown config key 'model.archh': model has no key 'archh'; "
        "valid keys there: ['arch', 'conv_impl', 'dtype', 'width']"
    ]


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigFileError, match="nope.py"):
        load_config(str(tmp_path / "nope.py"))


def test_a_method_is_found_by_its_configs_method_key_one_file_each(tmp_path):
    from fetalssl_jax.config_lib import method_config_files
    from fetalssl_jax.methods import registered_methods

    found = method_config_files(REPO / "configs")
    assert sorted(found) == registered_methods()  # every method has its one config; tools, classify, grid are not
    assert found["barlow_twins"].name == "barlow.py"  # the design card's name, not the method's
    for name in ("a.py", "b.py"):
        (tmp_path / name).write_text(f"from importlib import util\nexec(open({BARLOW!r}).read())\n")
    with pytest.raises(ValueError, match=r"a\.py and .*b\.py both configure method 'barlow_twins'"):
        method_config_files(tmp_path)


@pytest.mark.parametrize("tool", ["classify.py:vit", "tsne.py:vit"])
@pytest.mark.parametrize("pretraining", ["dino.py", "mae.py", "barlow.py:vit"])
def test_the_vit_tools_take_the_vit_the_cpu_demos_pretrain(tool, pretraining):
    """`classify.py:vit --config.init=workdirs/dino` (the README's line; workdirs/mae likewise) needs no architecture
    override."""
    from fetalssl_jax.models.backbone import description

    tool, pretrained = load_config(str(REPO / "configs" / tool)), load_config(str(REPO / "configs" / pretraining))
    assert description(tool.model) == description(pretrained.model) == {
        "arch": "vit_micro", "patch_size": 8, "reg_tokens": 0, "layer_scale": 0.0}  # fmt: skip
    assert tool.data.image_size == pretrained.data.image_size == 64
