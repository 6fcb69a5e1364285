"""Everything downstream with a ViT: the classifier's layer-wise learning-rate decay against hand-computed rates,
fine-tuning and linear probing a ViT, `config.init` from every form (a timm file against timm's own features),
t-SNE, the grid with ViT inits, export to timm (strict load, timm's features) and to ONNX (onnxruntime's outputs),
and the last block's attention map against a numpy recomputation from timm's tensors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from conftest import REPO
from ml_collections import ConfigDict
from vit_fixtures import (
    MICRO,
    SIZE,
    VisionTransformer,
    frames,
    normalised,
    state_dict_of,
    timm_features,
    timm_vit,
    vit_backbone_dir,
    vit_classifier_run,
)

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.downstream import classification
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.downstream.classification import StepSpec, load_classifier, run_classification
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.models import torch_io
from fetalssl_jax.models.backbone import create_backbone

CLASSES = ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")
LR = 1e-3


def _flat(tree):
    return {"/".join(str(k.key) for k in path): np.asarray(v) for path, v in jax.tree_util.tree_leaves_with_path(tree)}


def _spec(**overrides):
    base = dict(arch="vit_micro", width=0, dtype="float32", num_classes=5, dropout=0.0, head_batch_norm=False,
                mode="finetune", image_size=SIZE, num_ops=0, magnitude=0.0, hflip_prob=0.0, vflip_prob=0.0,
                learning_rate=LR, weight_decay=0.0, patch_size=8, reg_tokens=1, layer_scale=0.1)  # fmt: skip
    return StepSpec(**{**base, **overrides})


def _params(spec):
    model = spec.model()
    return jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False))()["params"]


# By hand, for vit_micro (4 blocks) and a decay of 0.5: the head and the final norm learn at lr, block 3 at lr / 2,
# block 0 at lr / 16, the patch embedding, class / register tokens and position embeddings at lr / 32.
HAND_FACTORS = {
    "head": 1, "backbone/norm": 1, "backbone/blocks_3": 1 / 2, "backbone/blocks_2": 1 / 4, "backbone/blocks_1": 1 / 8,
    "backbone/blocks_0": 1 / 16, "backbone/patch_embed": 1 / 32, "backbone/cls_token": 1 / 32,
    "backbone/reg_token": 1 / 32, "backbone/pos_embed": 1 / 32,
}  # fmt: skip


def _hand_factor(path):
    (factor,) = [f for prefix, f in HAND_FACTORS.items() if path == prefix or path.startswith(prefix + "/")]
    return factor


def _effective_lr(update, gradient):
    """Adam's step for a gradient g it has seen at every step (m-hat = g, v-hat = g^2) is -lr * g / (|g| + eps)."""
    return -update / (gradient / (np.abs(gradient) + 1e-8))


# ---- layer-wise learning-rate decay ------------------------------------------------------------------------------
def test_layer_decay_gives_every_parameter_its_hand_computed_learning_rate():
    spec = _spec(layer_decay=0.5)
    params = _params(spec)
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: (rng.choice([-1.0, 1.0], p.shape) * rng.uniform(0.5, 2, p.shape)).astype("f4"),
                         params)  # fmt: skip
    tx = spec.optimizer()
    updates, _ = tx.update(grads, tx.init(params), params)
    flat_grads = _flat(grads)
    seen = set()
    for path, update in _flat(updates).items():
        np.testing.assert_allclose(_effective_lr(update, flat_grads[path]), LR * _hand_factor(path), rtol=1e-5,
                                   err_msg=path)  # fmt: skip
        seen |= {prefix for prefix in HAND_FACTORS if path == prefix or path.startswith(prefix + "/")}
    assert seen == set(HAND_FACTORS)  # every group of the table exists in the model


def test_weight_decay_spares_biases_norms_layer_scale_tokens_and_position_embeddings():
    spec = _spec(layer_decay=0.5, weight_decay=0.1)
    params = _params(spec)
    tx = spec.optimizer()
    zeros = jax.tree.map(jnp.zeros_like, params)  # Adam's part is 0: what is left is the decay, -lr_p * wd * p
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat_params = _flat(params)
    for path, update in _flat(updates).items():
        decayed = path.endswith("/kernel")  # by hand: the Linear / patch-embedding / head weights only
        expected = -LR * _hand_factor(path) * 0.1 * flat_params[path] if decayed else np.zeros_like(update)
        np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-12, err_msg=path)
    assert {p.rsplit("/", 1)[-1] for p in flat_params} >= {"gamma", "scale", "bias", "cls_token", "pos_embed"}


def test_the_linear_probe_moves_the_head_only_and_the_schedule_warms_up_then_decays():
    spec = _spec(layer_decay=0.5, mode="linear", schedule="warmup_cosine", warmup_steps=2, total_steps=10)
    params = _params(spec)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, jnp.float32), params)
    tx = spec.optimizer()
    state = tx.init(params)
    for step in range(10):
        updates, state = tx.update(grads, state, params)
        flat = _flat(updates)
        assert all(not np.any(v) for p, v in flat.items() if p.startswith("backbone/")), step
        # by hand: linear from 0 over 2 steps, then half a cosine to 0 at step 10
        lr = LR * step / 2 if step < 2 else LR * 0.5 * (1 + np.cos(np.pi * (step - 2) / 8))
        np.testing.assert_allclose(_effective_lr(flat["head/kernel"], 0.3), lr, rtol=1e-5, atol=1e-12, err_msg=step)


def test_a_resnet_classifier_keeps_plain_adamw_and_refuses_layer_decay(repo):
    spec = _spec(arch="resnet10", width=8, patch_size=0, reg_tokens=0, layer_scale=0.0, weight_decay=0.01)
    params = _params(spec)
    grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.3, jnp.float32), params)
    ours, reference = spec.optimizer(), optax.adamw(LR, weight_decay=0.01)
    got = ours.update(grads, ours.init(params), params)[0]
    expected = reference.update(grads, reference.init(params), params)[0]
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    config = load_config(f"{repo / 'configs' / 'classify.py'}:tiny")
    set_by_path(config, "optim.layer_decay", 0.75)
    assert classification.problems(config) == [
        "config.optim.layer_decay = 0.75: decays a ViT's blocks; must be 1.0 for a ResNet"
    ]


# ---- classification of a ViT -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vit_runs(tmp_path_factory):
    """A ViT backbone exported as a pretraining run exports it, fine-tuned and linear-probed by classify.py:tiny_vit
    (the vit preset at test size)."""
    root = tmp_path_factory.mktemp("vit")
    backbone, variables = vit_backbone_dir(root / "pretrain" / "backbone")
    runs = {}
    for mode in ("finetune", "linear"):
        config = load_config(f"{REPO / 'configs' / 'classify.py'}:tiny_vit,mode={mode},init={root / 'pretrain'}")
        runs[mode] = (root / mode, run_classification(config, root / mode))
    return root, variables, runs


def test_a_vit_fine_tunes_every_block_and_a_linear_probe_none(vit_runs):
    _, start, runs = vit_runs
    for mode, (workdir, results) in runs.items():
        assert results["init_kind"] == "pretrained" and 0 <= results["test"]["macro_f1"] <= 1
        _, variables, description, spec = load_classifier(workdir)
        assert (spec.arch, spec.patch_size, spec.layer_decay, spec.schedule) == ("vit_micro", 8, 0.75, "warmup_cosine")
        assert spec.total_steps == results["num_steps"] and description["mode"] == mode
        assert set(variables["params"]) == {"backbone", "head"}  # the head's BatchNorm has no scale and bias ...
        assert set(variables["batch_stats"]) == {"head_norm"}  # ... and its statistics are the only ones: no ViT's
        trained = _flat(variables["params"]["backbone"])
        moved = {path.split("/")[0] for path, value in _flat(start["params"]).items()
                 if not np.array_equal(value, trained[path])}  # fmt: skip
        blocks = {"blocks_0", "blocks_1", "blocks_2", "blocks_3", "patch_embed", "pos_embed", "cls_token", "norm"}
        assert moved == (blocks if mode == "finetune" else set()), mode


def test_config_init_takes_a_classification_run_its_fine_tuned_backbone(vit_runs):
    _, _, runs = vit_runs
    workdir, _ = runs["finetune"]
    init = resolve_backbone(str(workdir), {**MICRO, "dtype": "float32"}, SIZE)
    _, variables, _, _ = load_classifier(workdir)
    assert init.kind == "classifier"
    for path, value in _flat(variables["params"]["backbone"]).items():
        np.testing.assert_array_equal(_flat(init.variables["params"])[path], value)


def test_the_attention_map_of_a_vit_classifier_run(vit_runs, tmp_path):
    from fetalssl_jax.downstream.gradcam import gradcam_for_run
    from fetalssl_jax.errors import UserError

    _, _, runs = vit_runs
    workdir, _ = runs["finetune"]
    path = gradcam_for_run(workdir, num_images=5, out=str(tmp_path / "attention.png"))
    assert path.stat().st_size > 5000
    with pytest.raises(UserError, match="config.stage = 3: a ViT classifier's map is its last block's attention"):
        gradcam_for_run(workdir, num_images=5, stage=3, out=str(tmp_path / "x.png"))


def test_the_attention_map_is_the_class_tokens_last_block_attention_in_numpy():
    """Recomputed from timm's tensors: the input of its last block's attention (a hook on norm1), softmax(q k^T /
    sqrt(d)) of its qkv weights in numpy, the class token's row over the patches averaged over heads, upsampled by
    torch's bilinear interpolation and stretched to [0, 1]."""
    from fetalssl_jax.downstream.gradcam import attention_map
    from fetalssl_jax.models import vit_io

    timm = timm_vit(reg_tokens=1, init_values=0.1)
    spec = _spec(reg_tokens=1, layer_scale=0.1)
    model = spec.model()
    backbone = vit_io.from_timm_state_dict(state_dict_of(timm))
    head = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32)
    variables = {"params": {"backbone": backbone["params"], "head": {"kernel": head}}, "batch_stats": {}}
    x = normalised(frames(3))
    maps, logits = attention_map(model, variables, jnp.asarray(x.transpose(0, 2, 3, 1)))

    captured = {}

    def keep(module, inputs, output):  # returns None: the output stays as it is
        captured["x"] = output.numpy()

    hook = timm.blocks[-1].norm1.register_forward_hook(keep)
    with torch.no_grad():
        features = timm(torch.from_numpy(x)).numpy()
    hook.remove()
    attn = timm.blocks[-1].attn.qkv
    qkv = captured["x"].astype(np.float64) @ attn.weight.detach().numpy().T + attn.bias.detach().numpy()
    qkv = qkv.reshape(3, 1 + 1 + 16, 3, 2, 32)  # batch, tokens (class, register, 4x4 patches), q/k/v, heads, dims
    scores = np.einsum("bhe,bthe->bht", qkv[:, 0, 0], qkv[:, :, 1]) / np.sqrt(32)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    grid = weights[:, :, 2:].mean(1).reshape(3, 1, 4, 4)
    expected = torch.nn.functional.interpolate(torch.from_numpy(grid), size=(SIZE, SIZE), mode="bilinear",
                                               align_corners=False)[:, 0].numpy()  # fmt: skip
    expected -= expected.min(axis=(1, 2), keepdims=True)
    expected /= expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(maps), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(logits), features @ head, atol=1e-4)
    assert np.all(np.std(expected, axis=(1, 2)) > 0.1)  # a map, not a constant


# ---- config.init from a timm / DINO-named file ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("reg_tokens", "init_values", "prefix", "size"),
    [(0, None, "", SIZE), (1, 0.1, "teacher.backbone.", 48)],  # a DINO checkpoint's names; another input size
)
def test_config_init_takes_a_timm_vit_file_and_gives_timms_features(tmp_path, reg_tokens, init_values, prefix, size):
    timm = timm_vit(reg_tokens=reg_tokens, init_values=init_values)
    state_dict = state_dict_of(timm, prefix)
    if prefix:
        state_dict["teacher.head.last_layer.weight"] = np.zeros((8, 64), np.float32)  # DINO's head: not the trunk
    path = torch_io.save_state_dict_file(tmp_path / "vit.safetensors", state_dict)
    model = {**MICRO, "reg_tokens": reg_tokens, "layer_scale": 1e-5 if init_values else 0.0, "dtype": "float32"}
    init = resolve_backbone(str(path), model, size)  # what classification, t-SNE and the grid do with config.init
    assert init.kind == "weights_file" and set(init.variables) == {"params"}
    x = frames(3, size)
    ours = extract_features(create_backbone(model, size), init.variables, x, size, batch_size=4)
    np.testing.assert_allclose(ours, timm_features(timm, x), atol=1e-4)  # position embeddings resampled as timm's


def test_a_vit_file_that_is_not_the_configured_vit_is_named_with_the_overrides_that_fit(tmp_path):
    path = torch_io.save_state_dict_file(tmp_path / "vit.safetensors", state_dict_of(timm_vit()))
    with pytest.raises(DataError, match=r"vit.safetensors holds a vit_micro with 8-pixel patches; the config asks for "
                                        r"a vit_micro with 16-pixel patches and 2 registers \(set "
                                        r"--config.model.patch_size=8 --config.model.reg_tokens=0\)"):  # fmt: skip
        resolve_backbone(str(path), {**MICRO, "patch_size": 16, "reg_tokens": 2}, SIZE)
    with pytest.raises(DataError, match=r"a resnet10 of width 8 \(a ViT needs a ViT's model keys: start from a ViT "
                                        r"preset \(e.g. configs/classify.py:vit\), then set --config.model.arch="
                                        r"vit_micro --config.model.patch_size=8"):  # fmt: skip
        resolve_backbone(str(path), {"arch": "resnet10", "width": 8}, SIZE)
    state_dict = state_dict_of(timm_vit())
    state_dict["blocks.0.mlp.fc1.weight"] = np.zeros((128, 64), np.float32)  # an MLP ratio of 2: none of VIT_ARCHS
    path = torch_io.save_state_dict_file(tmp_path / "odd.safetensors", state_dict)
    with pytest.raises(DataError, match=r"odd.safetensors: a ViT of width 64, depth 4, 2 heads and MLP ratio 2 "):
        resolve_backbone(str(path), {**MICRO}, SIZE)


# ---- t-SNE and the grid ------------------------------------------------------------------------------------------
def test_tsne_of_a_vit(vit_runs, tmp_path):
    from fetalssl_jax.downstream.embedding import run as run_tsne

    root, _, _ = vit_runs
    config = load_config(f"{REPO / 'configs' / 'tsne.py'}:tiny,split=valid,init={root / 'pretrain'}")
    with config.unlocked():
        config.model = ConfigDict({**MICRO, "drop_path_rate": 0.0, "dtype": "float32"})
    assert run_tsne(config, tmp_path) == f"wrote {tmp_path / 'tsne_valid.png'}"
    assert np.load(tmp_path / "tsne_valid.npz")["points"].shape[1] == 2


def test_the_grid_pretrains_and_classifies_the_classification_configs_vit(tmp_path):
    from fetalssl_jax.downstream.grid import problems, run_grid

    config = load_config(f"{REPO / 'configs' / 'paper_grid.py'}:tiny_vit")
    for key, value in {"modes": ("linear",), "seeds": (0,), "labels_per_class": (5,), "label_fractions": ()}.items():
        set_by_path(config, key, value)
    rows = run_grid(config, tmp_path)
    identity = json.loads((tmp_path / "pretrain" / "barlow_twins" / "backbone" / "backbone.json").read_text())
    assert (identity["identity"]["arch"], identity["identity"]["patch_size"]) == ("vit_micro", 8)
    assert [(r["init"], r["mode"], r["budget"]) for r in rows] == [("barlow_twins", "linear", "5/class"),
                                                                  ("random", "linear", "5/class")]  # fmt: skip
    _, _, _, spec = load_classifier(tmp_path / "cells" / "barlow_twins" / "linear" / "5perclass" / "seed0")
    assert spec.arch == "vit_micro"
    set_by_path(config, "inits", (f"ae={REPO / 'configs' / 'autoencoder.py'}:tiny", "random"))
    assert any("inits[0] (ae): config.model.arch = 'vit_micro': autoencoder decodes a ResNet" in p
               for p in problems(config))  # fmt: skip


# ---- export: timm and ONNX ---------------------------------------------------------------------------------------
def _export(workdir, **overrides):
    from fetalssl_jax.downstream.export import run as run_export

    config = load_config(str(REPO / "configs" / "export.py"))
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return run_export(config, workdir)


def test_export_writes_a_timm_state_dict_that_loads_strictly_and_gives_our_features(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    model = {**MICRO, "reg_tokens": 1, "layer_scale": 0.1}
    directory, variables = vit_backbone_dir(tmp_path / "run" / "backbone", model)
    line = _export(tmp_path / "out", backbone=str(tmp_path / "run"))
    path = tmp_path / "out" / "backbone.safetensors"
    with safe_open(str(path), "np") as f:
        kwargs = json.loads(f.metadata()["timm_kwargs"])
    assert kwargs == {"img_size": 32, "patch_size": 8, "in_chans": 3, "num_classes": 0, "embed_dim": 64, "depth": 4,
                      "num_heads": 2, "mlp_ratio": 4.0, "reg_tokens": 1, "init_values": 1e-5}  # fmt: skip
    assert line == (f"wrote {path}; load it with timm.models.vision_transformer.VisionTransformer(img_size=32, "
                    "patch_size=8, in_chans=3, num_classes=0, embed_dim=64, depth=4, num_heads=2, mlp_ratio=4.0, "
                    f"reg_tokens=1, init_values=1e-05).load_state_dict(safetensors.torch.load_file('{path}'), "
                    "strict=True)")  # fmt: skip
    timm = VisionTransformer(**kwargs).eval()
    timm.load_state_dict(load_file(str(path)), strict=True)
    x = frames(4)
    ours = extract_features(create_backbone(model, SIZE), variables, x, SIZE, batch_size=4)
    np.testing.assert_allclose(timm_features(timm, x), ours, atol=1e-4)


def test_onnx_exports_of_a_vit_backbone_and_classifier_give_the_jax_outputs(tmp_path):
    import onnxruntime as ort

    from fetalssl_jax.downstream.classification import predict_probabilities

    model = {**MICRO, "reg_tokens": 1, "layer_scale": 0.1}
    directory, variables = vit_backbone_dir(tmp_path / "backbone", model)
    head = (0.1 * np.random.default_rng(1).standard_normal((64, 5))).astype(np.float32)
    run = vit_classifier_run(tmp_path / "classify", variables, head, CLASSES, model)
    assert _export(tmp_path / "b", backbone=str(directory), format="onnx") == f"wrote {tmp_path / 'b/backbone.onnx'}"
    _export(tmp_path / "c", classifier=str(run), format="onnx")
    backbone = ort.InferenceSession(str(tmp_path / "b" / "backbone.onnx"), providers=["CPUExecutionProvider"])
    classifier = ort.InferenceSession(str(tmp_path / "c" / "classifier.onnx"), providers=["CPUExecutionProvider"])
    _, saved, _, spec = load_classifier(run)
    for n, seed in ((1, 0), (7, 1)):
        x = frames(n, seed=seed)[..., None]
        expected = extract_features(create_backbone(model, SIZE), variables, x, SIZE, batch_size=8)
        np.testing.assert_allclose(backbone.run(None, {"frames": x})[0], expected, atol=1e-4)
        probabilities = predict_probabilities(spec, saved["params"], saved["batch_stats"], x, 8)
        assert probabilities.max() < 0.99 and probabilities.min() > 1e-3  # not saturated: a difference would show
        np.testing.assert_allclose(classifier.run(None, {"frames": x})[0], probabilities, atol=1e-4)
    meta = classifier.get_modelmeta().custom_metadata_map
    assert json.loads(meta["fetalssl_jax.backbone"]) == model and "fetalssl_jax.width" not in meta
    assert backbone.get_modelmeta().custom_metadata_map["fetalssl_jax.output"].endswith("after the final norm")


def test_export_turns_a_dinov2_layout_file_into_timms(tmp_path):
    """DINOv2's hub layout (registers named register_tokens without position rows, a mask token) in, timm's out:
    the export loads strictly into timm and gives the features of the timm model it was made from."""
    from safetensors.torch import load_file

    timm = timm_vit(reg_tokens=1, init_values=0.1)
    with torch.no_grad():
        timm.pos_embed[:, 1] = 0.0  # DINOv2 gives registers no position embedding
    state_dict = state_dict_of(timm)
    state_dict["pos_embed"] = np.delete(state_dict["pos_embed"], 1, axis=1)
    state_dict["register_tokens"] = state_dict.pop("reg_token")
    state_dict["mask_token"] = np.zeros((1, 64), np.float32)
    path = torch_io.save_state_dict_file(tmp_path / "dinov2.safetensors", state_dict)
    line = _export(tmp_path / "out", backbone=str(path))
    assert "reg_tokens=1, init_values=1e-05).load_state_dict(" in line
    exported = VisionTransformer(img_size=32, patch_size=8, num_classes=0, embed_dim=64, depth=4, num_heads=2,
                                 reg_tokens=1, init_values=1e-5).eval()  # fmt: skip
    exported.load_state_dict(load_file(str(tmp_path / "out" / "backbone.safetensors")), strict=True)
    x = frames(3)
    np.testing.assert_allclose(timm_features(exported, x), timm_features(timm, x), atol=1e-5)
    from fetalssl_jax.errors import UserError

    with pytest.raises(UserError, match="is the file the export would write"):
        _export(tmp_path / "out", backbone=str(tmp_path / "out" / "backbone.safetensors"))
