"""MAE: the masking against a numpy re-implementation of the reference's shuffle, the decoder's unshuffle and
sin-cos position embedding against formulas written out here, the loss on hidden patches only, the encoder blind
to hidden pixels, tiny pretraining end to end, and the config's one-line errors."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.main import validate
from fetalssl_jax.methods.mae import MAE, random_masking
from fetalssl_jax.models.mae_decoder import MAEDecoder, sincos_pos_embed_2d
from fetalssl_jax.train.checkpoint import load_backbone
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.validation import ConfigError

CONFIG = REPO / "configs" / "mae.py"


def numpy_masking(noise: np.ndarray, mask_ratio: float):
    """The reference's `random_masking` (models_mae.py) in numpy, from the same noise."""
    n, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = np.argsort(noise, axis=1, kind="stable")
    ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
    ids_keep = ids_shuffle[:, :len_keep]
    mask = np.ones((n, length), np.float32)
    mask[:, :len_keep] = 0
    mask = np.take_along_axis(mask, ids_restore, axis=1)
    return ids_keep, mask, ids_restore


@pytest.mark.parametrize(("num_patches", "ratio"), [(64, 0.75), (49, 0.6), (16, 0.9)])
def test_masking_matches_the_reference_shuffle(num_patches, ratio):
    key = jax.random.PRNGKey(3)
    got = jax.jit(random_masking, static_argnums=(1, 2, 3))(key, 6, num_patches, ratio)
    noise = np.asarray(jax.random.uniform(key, (6, num_patches), jnp.float32))  # the draw random_masking makes
    keep, mask, ids_restore = numpy_masking(noise, ratio)
    np.testing.assert_array_equal(np.asarray(got["keep"]), keep)  # the same patches, in the same order
    np.testing.assert_array_equal(np.asarray(got["ids_restore"]), ids_restore)
    np.testing.assert_array_equal(np.asarray(got["mask"]), mask)
    k = int(num_patches * (1 - ratio))
    assert got["keep"].shape == (6, k) and got["keep"].dtype == jnp.int32
    np.testing.assert_array_equal(mask.sum(axis=1), num_patches - k)  # the hidden fraction, exactly, per sample
    for row in range(6):  # the kept patches are the visible ones, those of the k smallest noise values
        assert set(keep[row]) == set(np.flatnonzero(mask[row] == 0))
        assert set(keep[row]) == set(np.argsort(noise[row])[:k])
    assert len({tuple(sorted(r)) for r in keep}) > 1  # per-sample masks


def test_sincos_position_embedding_formula():
    dim, grid = 16, (3, 5)
    got = sincos_pos_embed_2d(dim, grid)
    assert got.shape == (15, 16) and got.dtype == np.float32
    for row in range(grid[0]):
        for col in range(grid[1]):
            vec = got[row * grid[1] + col]
            for axis, pos in enumerate((col, row)):  # first half: the column; second half: the row
                for k in range(dim // 4):
                    w = 10000.0 ** (-k / (dim / 4))
                    assert vec[axis * dim // 2 + k] == pytest.approx(math.sin(pos * w), abs=1e-6)
                    assert vec[axis * dim // 2 + dim // 4 + k] == pytest.approx(math.cos(pos * w), abs=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(10, grid)


def test_decoder_puts_each_token_at_its_grid_place():
    """Without blocks the decoder is per token: pred = Linear(LN(token)), token = embed(visible) + pos at a kept
    patch's place and mask token + pos elsewhere; computed here in numpy from the decoder's parameters."""
    rng = np.random.default_rng(0)
    b, n, d, width, values = 2, 6, 8, 12, 5
    masking = random_masking(jax.random.PRNGKey(1), b, n, 0.5)
    prefix, visible = rng.normal(size=(b, 1, d)), rng.normal(size=(b, 3, d))
    decoder = MAEDecoder(width, 0, 2, values, (2, 3))
    variables = decoder.init(jax.random.PRNGKey(0), prefix, visible, masking["ids_restore"])
    got = np.asarray(decoder.apply(variables, prefix, visible, masking["ids_restore"]))
    p = jax.tree.map(np.asarray, variables["params"])
    pos = sincos_pos_embed_2d(width, (2, 3))

    def head(x):
        x = (x - x.mean()) / np.sqrt(x.var() + 1e-6) * p["decoder_norm"]["scale"] + p["decoder_norm"]["bias"]
        return x @ p["decoder_pred"]["kernel"] + p["decoder_pred"]["bias"]

    embed = lambda x: x @ p["decoder_embed"]["kernel"] + p["decoder_embed"]["bias"]  # noqa: E731
    keep, hidden = np.asarray(masking["keep"]), np.asarray(masking["mask"])
    for s in range(b):
        for place in range(n):
            token = p["mask_token"][0, 0] if hidden[s, place] else embed(visible[s, list(keep[s]).index(place)])
            np.testing.assert_allclose(got[s, place], head(token + pos[place]), rtol=1e-4, atol=1e-5)


def _tiny_method_and_inputs():
    config = load_config(f"{CONFIG}:tiny")
    method = MAE(config)
    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 1, 32, 32, 1), np.uint8))
    inputs = method.make_inputs(jax.random.PRNGKey(5), frames)
    variables = method.init_variables(jax.random.PRNGKey(0), inputs)
    return method, inputs, variables


def test_loss_counts_hidden_patches_only():
    method, inputs, variables = _tiny_method_and_inputs()

    def loss(inp):
        return float(method.loss_fn(variables["params"], {}, {}, inp, jax.random.PRNGKey(2), 0)[0])

    base = loss(inputs)
    mask = np.asarray(inputs["mask"])
    visible, hidden = np.argwhere(mask == 0)[0], np.argwhere(mask == 1)[0]
    for (s, patch), changes in ((visible, False), (hidden, True)):
        target = np.asarray(inputs["target"]).copy()
        target[s, patch] = np.random.default_rng(1).normal(size=target.shape[-1])
        assert (loss({**inputs, "target": jnp.asarray(target)}) != base) == changes


def test_the_encoder_never_sees_hidden_pixels():
    method, inputs, variables = _tiny_method_and_inputs()
    model = method.build_model()
    predict = lambda images: np.asarray(model.apply(variables, images, inputs["keep"], inputs["ids_restore"]))  # noqa: E731
    images = np.asarray(inputs["images"]).copy()
    before = predict(jnp.asarray(images))
    p = method.config.model.patch_size
    s, patch = np.argwhere(np.asarray(inputs["mask"]) == 1)[0]
    row, col = divmod(int(patch), 32 // p)
    images[s, row * p : (row + 1) * p, col * p : (col + 1) * p] = 9.0
    np.testing.assert_array_equal(predict(jnp.asarray(images)), before)  # a hidden patch changes nothing
    s, patch = np.argwhere(np.asarray(inputs["mask"]) == 0)[0]
    row, col = divmod(int(patch), 32 // p)
    images[s, row * p : (row + 1) * p, col * p : (col + 1) * p] = 9.0
    assert not np.array_equal(predict(jnp.asarray(images)), before)  # a visible one does


def test_tiny_pretraining_trains_the_encoder_and_exports_it_alone(tmp_path):
    config = load_config(f"{CONFIG}:tiny")
    set_by_path(config, "num_steps", 3)
    validate(config)
    result = train(config, tmp_path)
    assert result.status == "finished" and result.step == 3
    records = read_metrics(tmp_path)
    assert all(np.isfinite(r["loss"]) for r in records)
    assert records[-1]["weight_change/blocks"] > 0 and records[-1]["weight_change/embed"] > 0
    variables, description = load_backbone(tmp_path / "backbone")
    assert description["identity"]["method"] == "mae" and description["identity"]["arch"] == "vit_micro"
    assert "decoder" not in variables["params"] and "blocks_3" in variables["params"]  # the encoder only
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert "mae (step 3)" in evaluation["knn_macro_f1"]


CONFIG_CASES = [
    ({"model.arch": "resnet18"}, "config.model.arch = 'resnet18': mae hides a ViT's patches from its encoder; use a "
     "ViT (vit_micro, vit_tiny, vit_small, vit_base; configs/mae.py's presets); for a ResNet: "
     "configs/autoencoder.py or configs/inpainting.py"),
    ({"method_kwargs.mask_ratio": 1.0}, "config.method_kwargs.mask_ratio = 1.0: must be a fraction in (0, 1) of the "
     "patches to hide"),
    ({"method_kwargs.mask_ratio": 0.95}, "config.method_kwargs.mask_ratio = 0.95: leaves 0 of the 16 patches of a 32 "
     "px input in 8 px patches visible; at least one must be visible and one hidden"),
    ({"method_kwargs.decoder_width": 30}, "config.method_kwargs.decoder_width = 30: must be a multiple of 4 (its 2D "
     "sin-cos position embedding)"),
    ({"method_kwargs.decoder_heads": 3}, "config.method_kwargs.decoder_heads = 3: must divide "
     "method_kwargs.decoder_width = 32"),
    ({"method_kwargs.decoder_depth": 0}, "config.method_kwargs.decoder_depth = 0: must be a positive integer"),
    ({"method_kwargs.norm_pix": None}, "config.method_kwargs.norm_pix = None: must be True or False"),
    ({"optim.adam_b2": 1.0}, "config.optim.adam_b2 = 1.0: must be a number in [0, 1)"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "expected"), CONFIG_CASES, ids=lambda v: str(v)[:40])
def test_config_error_names_key_value_and_rule(overrides, expected):
    config = load_config(f"{CONFIG}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert list(info.value.problems) == [expected]


@pytest.mark.parametrize("preset", ["tiny", "default", "paper"])
def test_presets_are_valid_vits(preset):
    config = load_config(f"{CONFIG}:{preset}")
    validate(config)
    assert config.model.arch.startswith("vit_") and config.method_kwargs.mask_ratio == 0.75
    assert config.method_kwargs.norm_pix and "view2" not in config.augment
