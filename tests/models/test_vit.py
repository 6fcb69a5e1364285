"""The ViT backbone and its timm-named weights, against timm's VisionTransformer as the oracle (eval mode)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm as timm_lib
import torch
from timm.models.vision_transformer import VisionTransformer

from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io, vit_io
from fetalssl_jax.models.vit import VIT_ARCHS, ViT, create_vit

TOL = 1e-4
TINY = dict(embed_dim=48, depth=2, num_heads=3, patch_size=8)  # ours; timm's names below are written out by hand


def timm_vit(**kwargs):
    """A timm ViT of the tiny test sizes, eval mode; random weights perturbed so that every entry matters."""
    torch.manual_seed(0)
    model = VisionTransformer(patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def our_variables(model, channels=3, seed=1):
    """Random variables of `model` (shapes from its init, values N(0, 0.1) and LayerNorm scales around 1)."""
    example = np.zeros((1, model.image_size, model.image_size, channels), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), example)
    rng = np.random.default_rng(seed)
    paths, tree = jax.tree_util.tree_flatten_with_path(shapes)

    def value(path, leaf):
        noise = 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
        return noise + 1.0 if path[-1].key == "scale" else noise

    return jax.tree.unflatten(tree, [value(path, leaf) for path, leaf in paths])


def images(n, size, channels=3, seed=2):
    return np.random.default_rng(seed).standard_normal((n, size, size, channels)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("model", "train", "return_tokens"))
def run(model, variables, x, train=False, return_tokens=False, rngs=None, **arrays):
    """`model.apply` compiled once per call signature (faster than op-by-op dispatch)."""
    return model.apply(variables, x, train=train, return_tokens=return_tokens, rngs=rngs, **arrays)


def features(model, variables, x):
    """Our pooled eval-mode features, numpy."""
    return np.asarray(run(model, variables, x))


def timm_features(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def to_torch(state_dict):
    return {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}


def roundtrip_file(tmp_path, state_dict, name="vit.safetensors"):
    return torch_io.load_state_dict_file(torch_io.save_state_dict_file(tmp_path / name, state_dict))


# ---- export: ours -> timm ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("reg_tokens, init_values", [(0, None), (2, 0.1)])
def test_export_loads_strictly_into_timm_and_gives_our_features(tmp_path, reg_tokens, init_values):
    ours = ViT(**TINY, image_size=32, reg_tokens=reg_tokens, layer_scale_init=init_values, use_mask_token=True)
    variables = our_variables(ours)
    state_dict = roundtrip_file(tmp_path, vit_io.to_timm_state_dict(variables))
    assert "mask_token" not in state_dict  # training-only: timm's VisionTransformer has none
    kwargs = dict(
        img_size=32,
        patch_size=8,
        in_chans=3,
        num_classes=0,
        embed_dim=48,
        depth=2,
        num_heads=3,
        reg_tokens=reg_tokens,
        init_values=init_values,
    )
    timm = VisionTransformer(**kwargs).eval()
    timm.load_state_dict(to_torch(state_dict), strict=True)
    x = images(3, 32)
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)
    # the constructor arguments a user is told to use are these
    told = vit_io.infer_vit(state_dict, num_heads=3).timm_kwargs()
    assert {k: told[k] for k in kwargs if k != "init_values"} == {k: v for k, v in kwargs.items() if k != "init_values"}
    assert (told["init_values"] is None) == (init_values is None)


@pytest.mark.parametrize("size", [48, 16, 40])  # larger grid, smaller grid (antialiased), non-integer ratio
def test_other_input_sizes_resample_position_embeddings_as_timm(size):
    ours = ViT(**TINY, image_size=32, reg_tokens=1)
    variables = our_variables(ours)
    timm = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=3,
        num_classes=0,
        reg_tokens=1,
        dynamic_img_size=True,
    ).eval()
    timm.load_state_dict(to_torch(vit_io.to_timm_state_dict(variables)), strict=True)
    x = images(2, size)
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


def test_gray_input():
    """The pipeline feeds gray frames replicated to 3 channels (`augment.to_rgb`), as for the ResNet: a 3-channel
    patch embedding then equals a 1-channel one whose kernel is summed over the input channels. A ViT built on
    1-channel input has a 1-channel patch embedding and exports for timm's in_chans=1."""
    ours = ViT(**TINY, image_size=32)
    variables = our_variables(ours)
    state_dict = vit_io.to_timm_state_dict(variables)
    state_dict["patch_embed.proj.weight"] = state_dict["patch_embed.proj.weight"].sum(axis=1, keepdims=True)
    timm_gray = VisionTransformer(
        img_size=32, patch_size=8, in_chans=1, embed_dim=48, depth=2, num_heads=3, num_classes=0
    ).eval()
    timm_gray.load_state_dict(to_torch(state_dict), strict=True)
    gray = images(2, 32, channels=1)
    ours_rgb = features(ours, variables, np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(np.asarray(ours_rgb), timm_features(timm_gray, gray), atol=TOL)

    gray_variables = our_variables(ours, channels=1)
    assert gray_variables["params"]["patch_embed"]["kernel"].shape == (8, 8, 1, 48)
    exported = vit_io.to_timm_state_dict(gray_variables)
    assert vit_io.infer_vit(exported, num_heads=3).in_chans == 1
    timm_gray.load_state_dict(to_torch(exported), strict=True)
    np.testing.assert_allclose(features(ours, gray_variables, gray), timm_features(timm_gray, gray), atol=TOL)


# ---- import: timm / DINOv2 -> ours ---------------------------------------------------------------------------------
def load_ours(state_dict, image_size=None, **kwargs):
    layout = vit_io.infer_vit(state_dict, "test", num_heads=3)
    model = layout.build(image_size, **kwargs)
    example = np.zeros((1, model.image_size, model.image_size, layout.in_chans), np.float32)
    expected = jax.eval_shape(model.init, jax.random.key(0), example)
    return layout, model, vit_io.from_timm_state_dict(state_dict, expected, "test", num_heads=3)


@pytest.mark.parametrize("reg_tokens, init_values", [(0, None), (3, 1e-5)])
def test_timm_file_with_a_prefix_loads_into_ours(tmp_path, reg_tokens, init_values):
    timm = timm_vit(img_size=32, reg_tokens=reg_tokens, init_values=init_values)
    state_dict = {f"module.backbone.{k}": v.numpy() for k, v in timm.state_dict().items()}
    state_dict["module.head.last_layer.weight"] = np.ones((5, 48), np.float32)  # a DINO head: ignored
    state_dict["module.backbone.mask_token"] = np.ones((1, 1, 32), np.float32)  # MAE's decoder-width token: ignored
    state_dict["module.backbone.decoder_embed.weight"] = np.ones((32, 48), np.float32)
    layout, ours, variables = load_ours(roundtrip_file(tmp_path, state_dict))
    assert (layout.embed_dim, layout.depth, layout.patch_size, layout.grid_size, layout.reg_tokens) == (
        48,
        2,
        8,
        4,
        reg_tokens,
    )
    assert layout.layer_scale == (init_values is not None) and layout.arch is None
    x = images(3, 32)
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


def test_import_resamples_position_embeddings_to_the_configured_size():
    timm = timm_vit(img_size=32, reg_tokens=1, dynamic_img_size=True)
    _, ours, variables = load_ours({k: v.numpy() for k, v in timm.state_dict().items()}, image_size=48)
    assert variables["params"]["pos_embed"].shape == (1, 2 + 36, 48)
    x = images(2, 48)
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


def test_dinov2_hub_layout():
    """DINOv2: registers named `register_tokens` without position embeddings, a [1, D] mask token, chunked blocks."""
    timm = timm_vit(img_size=32, reg_tokens=2, init_values=1e-5)
    with torch.no_grad():
        timm.pos_embed[:, 1:3] = 0.0  # the registers' rows: DINOv2 has none
    state_dict = {}
    for key, value in timm.state_dict().items():
        key = key.replace("reg_token", "register_tokens").replace("blocks.", "blocks.0.")  # one chunk
        state_dict[f"teacher.backbone.{key}"] = value.numpy()
    state_dict["teacher.backbone.pos_embed"] = np.delete(state_dict["teacher.backbone.pos_embed"], [1, 2], axis=1)
    mask_token = np.random.default_rng(3).standard_normal((1, 48)).astype(np.float32)
    state_dict["teacher.backbone.mask_token"] = mask_token
    layout, ours, variables = load_ours(state_dict, use_mask_token=True)
    assert (layout.reg_tokens, layout.pos_prefix, layout.layer_scale) == (2, 1, True)
    np.testing.assert_array_equal(variables["params"]["mask_token"], mask_token)
    ibot = {k.replace("mask_token", "masked_embed"): v for k, v in state_dict.items()}  # iBOT's name, [1, 1, D]
    ibot["teacher.backbone.masked_embed"] = mask_token[None]
    np.testing.assert_array_equal(load_ours(ibot, use_mask_token=True)[2]["params"]["mask_token"], mask_token)
    x = images(2, 32)
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


def test_timm_no_embed_class_layout():
    """timm's DINOv2-with-registers ports: no position embedding for the class token and registers."""
    timm = timm_vit(img_size=32, reg_tokens=2, no_embed_class=True, dynamic_img_size=True)
    state_dict = {k: v.numpy() for k, v in timm.state_dict().items()}
    layout, ours, variables = load_ours(state_dict)
    assert layout.pos_prefix == 0 and layout.timm_kwargs()["no_embed_class"]
    for size in (32, 48):
        x = images(2, size)
        np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


def test_import_errors_name_the_key():
    state_dict = {k: v.numpy() for k, v in timm_vit(img_size=32).state_dict().items()}
    deeper = ViT(**{**TINY, "depth": 3}, image_size=32)
    expected = jax.eval_shape(deeper.init, jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(DataError, match=r"f\.safetensors does not fit .*missing \['blocks\.2\.attn\.proj\.bias'"):
        vit_io.from_timm_state_dict(state_dict, expected, "f.safetensors", num_heads=3)
    with pytest.raises(ValueError, match="width 48 is not one of"):
        vit_io.infer_vit(state_dict, "f.safetensors")
    gray = ViT(**TINY, image_size=32)  # a 3-channel file is not summed into a 1-channel model (as torch_io)
    expected = jax.eval_shape(gray.init, jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight has shape \(8, 8, 3, 48\).* input channels"):
        vit_io.from_timm_state_dict(state_dict, expected, "f.safetensors", num_heads=3)
    swiglu = {**state_dict, "blocks.0.mlp.w12.weight": np.zeros((8, 48), np.float32)}
    with pytest.raises(KeyError, match=r"'blocks\.0\.mlp\.w12\.weight' is not part of a timm ViT"):
        vit_io.from_timm_state_dict(swiglu, None, "f.safetensors", num_heads=3)


# ---- masks, kept patches, tokens ----------------------------------------------------------------------------------
def timm_tokens(timm, x_nhwc, mask=None, mask_token=None, keep=None):
    """Final-normed tokens from timm's own modules, the mask token / kept patches put in by hand (DINOv2 / MAE)."""
    with torch.no_grad():
        t = timm.patch_embed(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2))
        if mask is not None:
            t = torch.where(torch.from_numpy(mask)[..., None], torch.from_numpy(mask_token), t)
        prefix = torch.cat([timm.cls_token, timm.reg_token], dim=1).expand(len(t), -1, -1)
        t = torch.cat([prefix, t], dim=1) + timm.pos_embed
        if keep is not None:
            kept = torch.gather(t[:, 3:], 1, torch.from_numpy(keep)[..., None].expand(-1, -1, t.shape[-1]))
            t = torch.cat([t[:, :3], kept], dim=1)
        return timm.norm(timm.blocks(t)).numpy()


def test_tokens_mask_and_keep_match_timm_modules():
    ours = ViT(**TINY, image_size=32, reg_tokens=2, use_mask_token=True)
    variables = our_variables(ours)
    timm = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, reg_tokens=2
    ).eval()
    timm.load_state_dict(to_torch(vit_io.to_timm_state_dict(variables)), strict=True)
    x = images(3, 32)
    rng = np.random.default_rng(4)
    mask = rng.random((3, 16)) < 0.4
    keep = np.stack([rng.permutation(16)[:5] for _ in range(3)])
    mask_token = np.asarray(variables["params"]["mask_token"])
    cases = [
        ({}, timm_tokens(timm, x)),
        ({"mask": mask}, timm_tokens(timm, x, mask, mask_token)),
        ({"keep": keep}, timm_tokens(timm, x, keep=keep)),
    ]
    for entry, want in cases:
        got = run(ours, variables, x, return_tokens=True, **entry)
        np.testing.assert_allclose(np.asarray(got.cls), want[:, 0], atol=TOL)
        np.testing.assert_allclose(np.asarray(got.registers), want[:, 1:3], atol=TOL)
        np.testing.assert_allclose(np.asarray(got.patches), want[:, 3:], atol=TOL)
        pooled = run(ours, variables, x, **entry)
        np.testing.assert_array_equal(np.asarray(pooled), np.asarray(got.cls))
    assert not np.allclose(cases[0][1], cases[1][1])  # the mask changed something
    with pytest.raises(ValueError, match="no mask token"):
        ViT(**TINY, image_size=32).apply({"params": {}}, x, mask=mask)


def test_drop_path_is_per_sample_linear_over_depth_and_off_in_eval():
    """depth 2, rate 0.6: block 0 never drops (rate 0), block 1 drops each branch per sample with p 0.6 and scales
    a kept one by 1/0.4 (timm DropPath). Each sample must be one of the four outcomes computed with timm's modules."""
    ours = ViT(**TINY, image_size=32, drop_path_rate=0.6)
    variables = our_variables(ours)
    timm = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0).eval()
    timm.load_state_dict(to_torch(vit_io.to_timm_state_dict(variables)), strict=True)
    x = images(16, 32)
    got = np.asarray(run(ours, variables, x, train=True, rngs={"dropout": jax.random.key(5)}))
    with torch.no_grad():
        t = timm.patch_embed(torch.from_numpy(x).permute(0, 3, 1, 2))
        t = timm.blocks[0](torch.cat([timm.cls_token.expand(16, -1, -1), t], dim=1) + timm.pos_embed)
        block = timm.blocks[1]
        outcomes = []
        for attn_scale in (0.0, 1 / 0.4):
            u = t + attn_scale * block.attn(block.norm1(t))
            for mlp_scale in (0.0, 1 / 0.4):
                outcomes.append(timm.norm(u + mlp_scale * block.mlp(block.norm2(u)))[:, 0].numpy())
    which = [[np.allclose(got[i], o[i], atol=TOL) for o in outcomes] for i in range(16)]
    assert all(sum(row) == 1 for row in which)
    assert len({row.index(True) for row in which}) > 1  # per sample, not per batch
    np.testing.assert_allclose(features(ours, variables, x), timm_features(timm, x), atol=TOL)


# ---- sizes, init, dtype ---------------------------------------------------------------------------------------------
def test_arch_sizes_are_timms():
    with torch.device("meta"):  # shapes only
        for arch in set(VIT_ARCHS) - {"vit_micro"}:  # micro: ours, for tests
            timm = timm_lib.create_model(f"{arch}_patch16_224", pretrained=False, num_classes=0)
            ours = create_vit(arch, patch_size=16, image_size=224)
            assert (ours.embed_dim, ours.depth, ours.num_heads) == (
                timm.embed_dim,
                len(timm.blocks),
                timm.blocks[0].attn.num_heads,
            )
            assert ours.num_features == timm.num_features
    shapes = jax.eval_shape(create_vit("vit_tiny", 16, 224).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    with torch.device("meta"):
        timm_shapes = {
            k: tuple(v.shape)
            for k, v in timm_lib.create_model("vit_tiny_patch16_224", num_classes=0).state_dict().items()
        }
    zeros = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)
    assert {k: v.shape for k, v in vit_io.to_timm_state_dict(zeros).items()} == timm_shapes
    with pytest.raises(ValueError, match="valid choices: vit_micro, vit_tiny, vit_small, vit_base"):
        create_vit("vit_huge")
    with pytest.raises(ValueError, match="multiple of patch_size 8"):
        create_vit("vit_tiny", patch_size=8, image_size=60)


def test_random_init_follows_timm():
    model = ViT(embed_dim=96, depth=1, num_heads=3, patch_size=8, image_size=64, reg_tokens=2, layer_scale_init=0.1)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))["params"]
    block = params["blocks_0"]
    assert np.std(block["mlp"]["fc1"]["kernel"]) == pytest.approx(0.02, rel=0.02)
    assert np.std(params["pos_embed"]) == pytest.approx(0.02, rel=0.05)
    assert not np.any(block["attn"]["qkv"]["bias"]) and not np.any(block["mlp"]["fc2"]["bias"])
    assert 0 < np.abs(params["cls_token"]).max() < 1e-5 and 0 < np.abs(params["reg_token"]).max() < 1e-5
    np.testing.assert_array_equal(block["ls2"]["gamma"], np.full(96, 0.1, np.float32))
    bound = 1 / np.sqrt(3 * 8 * 8)  # torch Conv2d default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    kernel = params["patch_embed"]["kernel"]
    assert bound * 0.98 < np.abs(kernel).max() <= bound and np.abs(params["patch_embed"]["bias"]).max() <= bound
    assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.02)
    np.testing.assert_array_equal(block["norm1"]["scale"], 1.0)


def test_bfloat16_compute_with_float32_parameters():
    ours = ViT(**TINY, image_size=32, dtype=jnp.bfloat16)
    variables = our_variables(ours)
    shapes = jax.eval_shape(ours.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
    x = images(2, 32)
    low = run(ours, variables, x)
    full = run(ViT(**TINY, image_size=32), variables, x)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(low), np.asarray(full), atol=0.1)
    assert not np.array_equal(np.asarray(low), np.asarray(full))
