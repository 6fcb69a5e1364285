"""Every pretraining method: registered, trains end to end from its config's tiny preset, and its loss is finite."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.main import validate
from fetalssl_jax.methods import get_method, registered_methods
from fetalssl_jax.methods.autoencoder import reconstruction_loss
from fetalssl_jax.methods.inpainting import outside_box_mask, random_erasing
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.validation import ConfigError

CONFIGS = {
    "autoencoder": "autoencoder.py",
    "barlow_twins": "barlow.py",
    "byol": "byol.py",
    "dino": "dino.py",
    "inpainting": "inpainting.py",
    "mae": "mae.py",
    "moco": "moco.py",
    "reorder": "reorder.py",
    "simclr": "simclr.py",
    "vicreg": "vicreg.py",
}


def test_registry_has_every_method_and_names_unknown_ones():
    assert registered_methods() == sorted([*CONFIGS, "distill"])  # distill needs a teacher: test_distill.py
    with pytest.raises(ValueError, match=r"unknown method .swav.*barlow_twins"):
        get_method("swav")


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_config_presets_load(method):
    for preset in ("", "tiny", "paper"):
        config = load_config(f"{REPO / 'configs' / CONFIGS[method]}:{preset}")
        assert config.method == method
    # paper preset: the paper's ResNet-50 at 256 px; DINO: its ViT-S/16, MAE: the reference's ViT-B/16 at 224 px
    expected = {"dino": ("vit_small", 224), "mae": ("vit_base", 224)}.get(method, ("resnet50", 256))
    assert (config.model.arch, config.data.image_size) == expected


@pytest.mark.parametrize("method", sorted(set(CONFIGS) - {"barlow_twins", "mae"}))  # test_train.py, test_mae.py
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


def test_outside_box_mask_keeps_one_box_of_the_asked_area():
    size, scale, ratio = 32, (0.25, 0.5), (0.3, 3.3)
    mask = np.asarray(outside_box_mask(jax.random.PRNGKey(2), 64, size, scale, ratio))
    assert mask.shape == (64, size, size, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    areas = []
    for m in mask[..., 0]:
        rows, cols = np.nonzero(m == 0)
        box = np.zeros_like(m)
        box[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] = 1
        np.testing.assert_array_equal(m == 0, box == 1)  # what is kept is exactly one axis-aligned box
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        # RandomErasing's draw: area in scale x image (sides rounded to whole pixels), aspect h / w in ratio
        assert scale[0] * size**2 * 0.8 <= h * w <= scale[1] * size**2 * 1.2
        assert ratio[0] * 0.8 <= h / w <= ratio[1] * 1.2
        areas.append(h * w)
    assert np.std(areas) > 0 and mask.max(axis=0).min() == 1.0  # boxes vary; every pixel is erased sometimes


def test_weighted_reconstruction_loss_is_the_mean_over_weighted_pixels():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 4, 4, 3))
    weight = (rng.random((2, 4, 4, 1)) < 0.5).astype(np.float32)
    expected = ((pred - target) ** 2 * weight).sum() / (weight.sum() * 3)
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    np.testing.assert_allclose(reconstruction_loss(pred, target, weight), expected, rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(pred, target), ((pred - target) ** 2).mean(), rtol=1e-5)


def test_unknown_erase_mode_is_named():
    config = load_config(f"{REPO / 'configs' / 'inpainting.py'}:tiny")
    set_by_path(config, "method_kwargs.erase", "blocks")
    set_by_path(config, "method_kwargs.keep_scale", (0.5, 0.25))
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert info.value.problems == (
        "config.method_kwargs.erase = 'blocks': must be one of 'rectangle', 'outside'",
        "config.method_kwargs.keep_scale = (0.5, 0.25): must be (low, high) with 0 < low <= high",
    )


def _changed_boxes(before, after):
    """Per sample: (top, left, h, w) of the changed pixels, asserting they form a full rectangle."""
    boxes = []
    for b, a in zip(before, after, strict=True):
        changed = np.any(b != a, axis=-1)
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = np.where(changed.any(axis=1))[0], np.where(changed.any(axis=0))[0]
        top, left, h, w = rows[0], cols[0], rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert changed.sum() == h * w  # the changed set is exactly its bounding box
        assert np.all(changed[top : top + h, left : left + w])
        boxes.append((top, left, h, w))
    return boxes


def test_random_erasing_box_statistics():
    n, size = 300, 40
    scale, ratio = (0.02, 0.33), (0.3, 3.3)
    imgs = np.random.default_rng(17).uniform(1.0, 2.0, (n, size, size, 3)).astype(np.float32)
    erase = jax.jit(functools.partial(random_erasing, scale=scale, ratio=ratio))
    out = np.asarray(erase(jax.random.key(5), jnp.asarray(imgs)))
    boxes = np.asarray(_changed_boxes(imgs, out), dtype=float)  # every sample erased (one always fits)
    top, left, h, w = boxes.T
    area = size * size
    # h and w are rounded: some real (h', w') within 0.5 of them must satisfy the scale and ratio bounds.
    assert np.all((h - 0.5) * (w - 0.5) / area <= scale[1]) and np.all((h + 0.5) * (w + 0.5) / area >= scale[0])
    assert np.all((h - 0.5) / (w + 0.5) <= ratio[1]) and np.all((h + 0.5) / (w - 0.5) >= ratio[0])
    assert np.all((h < size) & (w < size))  # torchvision requires h < H and w < W
    frac = h * w / area
    assert frac.min() < 0.06 and frac.max() > 0.25
    assert np.mean(h > w) > 0.25 and np.mean(h < w) > 0.25
    assert len(np.unique(top)) > 10 and len(np.unique(left)) > 10
    noise = out[out != imgs]  # the erased values: standard normal
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05


def test_random_erasing_leaves_the_image_when_no_box_fits():
    # scale ~ 1, ratio 1 on 32x32: h = w = round(sqrt(>= 1013.8)) = 32, never < 32 -> no erase (torchvision)
    imgs = np.random.default_rng(18).uniform(1.0, 2.0, (8, 32, 32, 3)).astype(np.float32)
    erase = jax.jit(functools.partial(random_erasing, scale=(0.99, 1.0), ratio=(1.0, 1.0)))
    np.testing.assert_array_equal(np.asarray(erase(jax.random.key(7), jnp.asarray(imgs))), imgs)


def test_a_two_view_method_pretrains_a_vit_and_evaluates_it(tmp_path):
    """`model.arch` selects a ViT for the joint-embedding methods: Barlow Twins trains its blocks and the frozen
    evaluation reads its class token; the random-init baseline is timm's init of the same ViT."""
    from fetalssl_jax import presets
    from fetalssl_jax.models.backbone import random_variables

    config = load_config(f"{REPO / 'configs' / 'barlow.py'}:tiny")
    with config.unlocked():
        presets.tiny_vit_preset(config)
        config.method_kwargs.projector = (64, 64)
    set_by_path(config, "num_steps", 3)
    validate(config)
    result = train(config, tmp_path)
    assert result.status == "finished" and result.step == 3
    last = read_metrics(tmp_path)[-1]
    assert last["weight_change/blocks"] > 0 and last["weight_change/embed"] > 0  # the ViT's weights moved
    random = random_variables(config.model, 32, config.seed)
    assert set(random) == {"params"} and random["params"]["pos_embed"].shape == (1, 1 + 16, 64)  # 4x4 patches
    assert "random init (timm)" in json.loads((tmp_path / "eval.json").read_text())["knn_macro_f1"]


def test_the_autoencoders_refuse_a_vit_by_name():
    config = load_config(f"{REPO / 'configs' / 'autoencoder.py'}:tiny")
    set_by_path(config, "model.arch", "vit_micro")
    with pytest.raises(ConfigError, match=r"autoencoder decodes a ResNet.s feature map"):
        validate(config)
