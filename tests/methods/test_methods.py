"""Every pretraining method: registered, trains end to end from its config's tiny preset, and its loss is finite."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.methods import get_method, registered_methods
from fetalssl_jax.methods.autoencoder import EncoderDecoder, normalize_patches, reconstruction_loss, winner_take_all
from fetalssl_jax.methods.inpainting import outside_box_mask, patch_mask
from fetalssl_jax.models.resnet import BasicBlock
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics

CONFIGS = {
    "autoencoder": "autoencoder.py",
    "barlow_twins": "barlow.py",
    "byol": "byol.py",
    "inpainting": "inpainting.py",
    "moco": "moco.py",
    "reorder": "reorder.py",
    "simclr": "simclr.py",
    "vicreg": "vicreg.py",
}


def test_registry_has_the_eight_methods_and_names_unknown_ones():
    assert registered_methods() == sorted(CONFIGS)
    with pytest.raises(ValueError, match=r"unknown method .swav.*barlow_twins"):
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


class _FixedPoolBackbone(nn.Module):
    """A stand-in backbone whose pooled features are the same for every input while its map is the input's."""

    width: int = 4
    stage_sizes: tuple = (1, 1, 1, 1)
    block_cls: type = BasicBlock

    @nn.compact
    def __call__(self, x, train=True, return_map=False):
        feature_map = jax.image.resize(x[..., :1], (x.shape[0], 1, 1, 1), "linear") * jnp.ones((1, 1, 1, 32))
        pooled = jnp.ones((x.shape[0], 32))
        return (pooled, feature_map) if return_map else pooled


@pytest.mark.parametrize("bottleneck, same", [("pooled", True), ("map", False)])
def test_autoencoder_bottleneck_decodes_only_what_it_names(bottleneck, same):
    # "pooled" decodes the pooled vector alone: inputs that differ only in what the map carries reconstruct
    # the same image; "map" (the reference) decodes the map, so they differ
    model = EncoderDecoder(_FixedPoolBackbone(), bottleneck=bottleneck)
    a = jnp.zeros((2, 32, 32, 3))
    b = jnp.full((2, 32, 32, 3), 3.0)
    variables = model.init(jax.random.PRNGKey(0), a, train=False)
    out_a, out_b = (model.apply(variables, x, train=False) for x in (a, b))
    assert out_a.shape == (2, 32, 32, 3)
    assert ("unpool" in variables["params"]) == (bottleneck == "pooled")
    assert bool(jnp.allclose(out_a, out_b)) == same


@pytest.mark.parametrize("size, patch, ratio", [(32, 8, 0.6), (30, 8, 0.5), (16, 4, 1.0)])
def test_patch_mask_erases_exactly_the_asked_share_of_whole_squares(size, patch, ratio):
    mask = np.asarray(patch_mask(jax.random.PRNGKey(1), 64, size, patch, ratio))
    assert mask.shape == (64, size, size, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    grid = -(-size // patch)
    for m in mask[..., 0]:
        cells = [m[r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] for r in range(grid) for c in range(grid)]
        assert all(cell.min() == cell.max() for cell in cells)  # every square is erased whole or kept whole
        assert sum(cell[0, 0] for cell in cells) == round(ratio * grid * grid)
    # every square is erased in some sample (uniform choice, not a fixed pattern)
    assert mask.max(axis=0).min() == 1.0


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


@pytest.mark.parametrize("size, patch", [(16, 4), (10, 4)])
def test_patch_normalised_target_is_each_square_standardised(size, patch):
    # independent: a loop over the squares (cut short at the edge) with numpy's mean and population variance
    target = np.random.default_rng(3).normal(2.0, 3.0, (2, size, size, 3)).astype(np.float32)
    expected = np.empty_like(target)
    for r in range(0, size, patch):
        for c in range(0, size, patch):
            cell = target[:, r : r + patch, c : c + patch]
            mean = cell.mean(axis=(1, 2, 3), keepdims=True)
            var = cell.var(axis=(1, 2, 3), keepdims=True)
            expected[:, r : r + patch, c : c + patch] = (cell - mean) / np.sqrt(var + 1e-6)
    np.testing.assert_allclose(normalize_patches(jnp.asarray(target), patch), expected, atol=1e-4)


def test_unknown_autoencoder_options_are_named():
    config = load_config(f"{REPO / 'configs' / 'inpainting.py'}:tiny")
    set_by_path(config, "method_kwargs.erase", "blocks")
    with pytest.raises(ValueError, match=r"method_kwargs.erase = 'blocks': must be one of rectangle, patches, outside"):
        get_method("inpainting")(config)
    set_by_path(config, "method_kwargs.bottleneck", "vector")
    with pytest.raises(ValueError, match=r"method_kwargs.bottleneck = 'vector': must be one of map, pooled, wta"):
        get_method("inpainting")(config)
    set_by_path(config, "method_kwargs.bottleneck", "map")
    set_by_path(config, "method_kwargs.lifetime_fraction", 1.5)
    with pytest.raises(ValueError, match=r"config.method_kwargs.lifetime_fraction = 1.5: must be in \(0, 1\]"):
        get_method("inpainting")(config)
    set_by_path(config, "method_kwargs.lifetime_fraction", 0.2)
    set_by_path(config, "method_kwargs.target", "edges")
    with pytest.raises(ValueError, match=r"config.method_kwargs.target = 'edges': must be one of pixels, patch_norm"):
        get_method("inpainting")(config)


def test_denoising_autoencoder_target_is_the_same_view_without_the_nuisance():
    # input and target come from the same crop / rotation / flip draws: with gain as the only nuisance, the two are
    # pixel-aligned (black where the other is black, the same intensity order) but not equal; a misaligned crop or
    # rotation would break both
    from scipy.stats import spearmanr

    from fetalssl_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD

    config = load_config(f"{REPO / 'configs' / 'autoencoder.py'}:tiny")
    set_by_path(config, "method_kwargs.inputs", "denoise")
    with config.augment.unlocked():
        config.augment.view1.update(dict(
            crop_scale=(0.3, 1.0), rotation_prob=1.0, rotation_deg=180.0, flip_prob=0.5, ultrasound_prob=1.0,
            gain_db=6.0, tgc_db=0.0, speckle=0.0, color_jitter_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
        ))  # fmt: skip
    method = get_method("autoencoder")(config)
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, size=(8, 1, 48, 48, 1), dtype=np.uint8)
    frames[:, :, :, :16] = 0  # a black band, as outside the fan
    noisy, clean = jax.jit(method.augment)(jax.random.PRNGKey(3), frames)
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    noisy, clean = (np.asarray(x)[..., 0] * std[0] + mean[0] for x in (noisy, clean))
    assert not np.allclose(noisy, clean, atol=1e-3)
    for a, b in zip(noisy, clean, strict=True):
        assert np.mean((a < 1e-3) == (b < 1e-3)) > 0.99  # up to resampling's near-zero values at the band's edge
        assert spearmanr(a.ravel(), b.ravel()).statistic > 0.99


def test_view_autoencoder_target_is_the_whole_frame_whatever_the_crop():
    # inputs "view": the target is the frame as acquired, so (flips off) it is the same for any draw of crop,
    # rotation and nuisance, and at the frame's own size it is the frame itself, normalised by hand
    from fetalssl_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD

    config = load_config(f"{REPO / 'configs' / 'autoencoder.py'}:tiny")
    set_by_path(config, "method_kwargs.inputs", "view")
    with config.augment.unlocked():
        config.augment.view1.update(dict(
            crop_scale=(0.25, 0.5), rotation_prob=1.0, rotation_deg=180.0, flip_prob=0.0, vflip_prob=0.0,
            ultrasound_prob=1.0, gain_db=6.0,
        ))  # fmt: skip
    method = get_method("autoencoder")(config)
    size = config.data.image_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(4, 1, size, size, 1), dtype=np.uint8)
    augment = jax.jit(method.augment)
    view_a, target_a = (np.asarray(x) for x in augment(jax.random.PRNGKey(1), frames))
    view_b, target_b = (np.asarray(x) for x in augment(jax.random.PRNGKey(2), frames))
    expected = (frames[:, 0].astype(np.float32) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(target_a, expected, atol=1e-4)
    np.testing.assert_allclose(target_b, expected, atol=1e-4)
    assert not np.allclose(view_a, view_b, atol=1e-2)  # the inputs are different crops
    assert not np.allclose(view_a, target_a, atol=1e-2)


def test_winner_take_all_keeps_each_channels_spatial_winner_among_the_batchs_largest():
    rng = np.random.default_rng(0)
    x = rng.random((5, 3, 2, 4)).astype(np.float32)
    out = np.asarray(winner_take_all(jnp.asarray(x), 0.4))  # ceil(0.4 * 5) = 2 samples per channel
    expected = np.zeros_like(x)
    for c in range(4):
        peaks = x[..., c].reshape(5, -1).max(axis=1)
        for b in np.argsort(-peaks)[:2]:
            i, j = np.unravel_index(np.argmax(x[b, :, :, c]), (3, 2))
            expected[b, i, j, c] = x[b, i, j, c]
    np.testing.assert_array_equal(out, expected)
    assert np.count_nonzero(out) == 2 * 4
    # the gradient reaches the kept activations only
    grad = np.asarray(jax.grad(lambda f: jnp.sum(winner_take_all(f, 0.4)))(jnp.asarray(x)))
    np.testing.assert_array_equal(grad, (expected != 0).astype(np.float32))
    with pytest.raises(ValueError, match="lifetime_fraction must be in"):
        winner_take_all(jnp.asarray(x), 0.0)
