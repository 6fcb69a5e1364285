"""DINO: multi-crop views and iBOT masks, the head, the teacher-temperature schedule, one train step (EMA teacher,
centre, the frozen last layer) against independent computations, the presets' published numbers and config errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data import sources
from fetalssl_jax.main import validate
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.base import apply_model
from fetalssl_jax.methods.dino import patch_masks
from fetalssl_jax.methods.momentum import cosine_momentum
from fetalssl_jax.models.heads import DINOHead
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh
from fetalssl_jax.train.loop import make_sampler, train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step
from fetalssl_jax.validation import ConfigError

NUM_STEPS = 6


def dino_config(preset="tiny", **overrides):
    """configs/dino.py:<preset> with `overrides` (dotted keys)."""
    config = load_config(f"{REPO / 'configs' / 'dino.py'}:{preset}")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


# ---- views and masks -----------------------------------------------------------------------------------------
def test_multi_crop_views_and_masks_have_static_shapes():
    config = dino_config(**{"method_kwargs.ibot_weight": 1.0, "method_kwargs.local_crops": 3})
    method = get_method("dino")(config, NUM_STEPS)
    frames = jnp.asarray(np.random.default_rng(0).integers(0, 255, (5, 1, 48, 48, 1)), jnp.uint8)
    inputs = jax.jit(method.make_inputs)(jax.random.key(0), frames)
    assert inputs["global"].shape == (10, 32, 32, 3)  # 2 global crops of 5 frames at data.image_size
    assert inputs["local"].shape == (15, 16, 16, 3)  # 3 local crops at local_crop_size
    assert inputs["mask"].shape == (10, 16) and inputs["mask"].dtype == bool  # 4 x 4 patches of 8 px
    assert inputs["patch_index"].shape == inputs["patch_selected"].shape == (10, 8)  # ceil(0.5 * 16)


@pytest.mark.parametrize("mode", ["block", "random"])
def test_patch_masks_mask_the_asked_share_and_index_it(mode):
    grid, images, ratio = 8, 400, (0.1, 0.5)
    mask, index, selected = jax.device_get(patch_masks(jax.random.key(1), images, grid, 0.5, ratio, mode))
    counts = mask.sum(1)
    masked = counts > 0
    assert 0.4 < masked.mean() < 0.6  # about mask_probability of the crops
    assert np.all(counts[masked] >= round(ratio[0] * 64)) and np.all(counts <= round(ratio[1] * 64))
    np.testing.assert_array_equal(selected.sum(1), counts)  # every masked patch is among the indexed ones
    for row in range(images):
        np.testing.assert_array_equal(np.sort(index[row][selected[row]]), np.flatnonzero(mask[row]))
    if mode == "block":  # blobs: a masked patch's 4-neighbours are mostly masked too
        m = mask.reshape(images, grid, grid)
        neighbours = (m[:, 1:, :] & m[:, :-1, :]).sum() * 2 + (m[:, :, 1:] & m[:, :, :-1]).sum() * 2
        assert neighbours / m.sum() > 2.0


# ---- head ------------------------------------------------------------------------------------------------------
def test_dino_head_against_numpy():
    head = DINOHead(out_dim=7, hidden=6, bottleneck=5, layers=3)
    x = np.random.default_rng(2).normal(size=(4, 3)).astype(np.float32)
    variables = head.init(jax.random.key(0), jnp.asarray(x))
    p = jax.tree.map(np.asarray, variables["params"])
    gelu = lambda v: 0.5 * v * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))  # noqa: E731
    h = gelu(x @ p["linear0"]["kernel"] + p["linear0"]["bias"])
    h = gelu(h @ p["linear1"]["kernel"] + p["linear1"]["bias"])
    h = h @ p["linear2"]["kernel"] + p["linear2"]["bias"]
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    v = p["last_layer"]["kernel"]
    want = h @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    np.testing.assert_allclose(np.asarray(head.apply(variables, jnp.asarray(x))), want, rtol=1e-4, atol=1e-6)
    assert set(p["last_layer"]) == {"kernel"}  # norm_last_layer: no learned length
    free = DINOHead(out_dim=7, hidden=6, bottleneck=5, norm_last_layer=False).init(jax.random.key(0), x)
    assert free["params"]["last_layer"]["scale"].shape == (1, 7)


def test_dino_head_with_batch_norm_standardises_each_hidden_unit_over_the_batch():
    head = DINOHead(out_dim=7, hidden=6, bottleneck=5, layers=2, use_bn=True)
    x = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    variables = head.init(jax.random.key(1), jnp.asarray(x))
    p = jax.tree.map(np.asarray, variables["params"])
    gelu = lambda v: 0.5 * v * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))  # noqa: E731
    h = x @ p["linear0"]["kernel"] + p["linear0"]["bias"]
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * p["bn0"]["scale"] + p["bn0"]["bias"]  # biased variance, as torch
    h = gelu(h) @ p["linear1"]["kernel"] + p["linear1"]["bias"]
    h = h / np.linalg.norm(h, axis=1, keepdims=True)
    v = p["last_layer"]["kernel"]
    want = h @ (v / np.linalg.norm(v, axis=0, keepdims=True))
    got, state = head.apply(variables, jnp.asarray(x), mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)
    mean = 0.1 * (x @ p["linear0"]["kernel"] + p["linear0"]["bias"]).mean(0)  # running mean, momentum 0.9 from 0
    np.testing.assert_allclose(np.asarray(state["batch_stats"]["bn0"]["mean"]), mean, rtol=1e-4, atol=1e-6)


def test_teacher_temperature_warms_up_linearly():
    config = dino_config(**{"num_epochs": 10, "method_kwargs.warmup_teacher_temp_epochs": 4,
                            "method_kwargs.warmup_teacher_temp": 0.04, "method_kwargs.teacher_temp": 0.07})  # fmt: skip
    method = get_method("dino")(config, total_steps=100)  # 10 steps per epoch: 40 warm-up steps
    for step in (0, 10, 20, 39, 40, 41, 99):
        assert float(method.teacher_temp(step)) == pytest.approx(0.04 + 0.03 * min(step / 40, 1.0), rel=1e-6)


# ---- one train step --------------------------------------------------------------------------------------------
def start(config):
    """(method, initial train state, train step, the first batch's frames) of `config`."""
    enable_compilation_cache(config.compilation_cache_dir)
    method = get_method(config.method)(config, NUM_STEPS)
    sampler = make_sampler(config, method, sources.pretraining_frames(config))
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, NUM_STEPS)
    mesh = make_mesh()
    frames = jax.make_array_from_process_local_data(batch_sharding(mesh), sampler.batch(0)["frames"])
    state = init_state(method, optimizer, config.seed, frames, mesh)
    return method, state, make_train_step(method, optimizer, mesh), frames


def two_steps(config):
    """(method, state after step 0, state after step 1, metrics of step 1, frames)."""
    method, state, step, frames = start(config)
    initial = jax.device_get(state)
    state, _ = step(state, {"frames": frames})
    old = jax.device_get(state)
    new, metrics = step(state, {"frames": frames})
    return method, initial, old, jax.device_get(new), jax.device_get(metrics), frames


def leaves(tree):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_step_moves_teacher_by_ema_updates_centres_and_keeps_the_last_layer():
    """After a step: teacher = m * teacher + (1 - m) * student for every leaf (heads included); the centre is
    0.9 * centre + 0.1 * the mean of the old teacher's logits of this step's global crops (computed here from the
    teacher's parameters); the heads' last layers are where they started (frozen in the first epoch), the rest moved."""
    config = dino_config(**{"num_steps": NUM_STEPS, "method_kwargs.momentum_base": 0.5, "optim.warmup_epochs": 0.0,
                            "optim.freeze_epochs": 5.0, "method_kwargs.ibot_weight": 1.0,
                            "method_kwargs.ibot_separate_head": True, "method_kwargs.koleo_weight": 0.1})  # fmt: skip
    method, initial, old, new, metrics, frames = two_steps(config)
    m = float(metrics["momentum"])
    assert m == pytest.approx(float(cosine_momentum(1, NUM_STEPS, 0.5)), rel=1e-6)
    target_old, online, target_new = map(leaves, (old.extra["target_params"], new.params, new.extra["target_params"]))
    assert set(target_new) == set(online)
    for name in target_new:
        want = m * target_old[name].astype(np.float64) + (1 - m) * online[name]
        np.testing.assert_allclose(target_new[name], want, rtol=1e-5, atol=1e-7, err_msg=name)
    assert any(not np.allclose(target_new[k], target_old[k], rtol=1e-3, atol=1e-5) for k in target_new)

    @jax.jit
    def teacher_logits(frames):
        rng = jax.random.fold_in(old.rng, old.step)
        inputs = method.make_inputs(jax.random.split(rng)[0], frames)
        out, _ = apply_model(method.build_model(), old.extra["target_params"], old.extra["target_state"], inputs,
                             train=True, student=False)  # fmt: skip
        patches = jnp.sum(out["patches"] * inputs["patch_selected"][..., None], (0, 1))
        return out["global"], patches / jnp.sum(inputs["patch_selected"])

    logits, patch_mean = jax.device_get(teacher_logits(frames))
    want = 0.9 * old.extra["center"] + 0.1 * logits.astype(np.float64).mean(0, keepdims=True)
    np.testing.assert_allclose(new.extra["center"], want, rtol=1e-4, atol=1e-6)
    want = 0.9 * old.extra["patch_center"] + 0.1 * patch_mean[None]
    np.testing.assert_allclose(new.extra["patch_center"], want, rtol=1e-4, atol=1e-6)

    for head in ("head", "patch_head"):
        np.testing.assert_array_equal(new.params[head]["last_layer"]["kernel"],
                                      initial.params[head]["last_layer"]["kernel"])  # fmt: skip
        assert not np.allclose(new.params[head]["linear0"]["kernel"], initial.params[head]["linear0"]["kernel"])
    for key in ("loss", "loss_dino", "loss_ibot", "loss_koleo"):
        assert np.isfinite(metrics[key]), key
    assert float(metrics["loss"]) == pytest.approx(
        float(metrics["loss_dino"] + metrics["loss_ibot"] + 0.1 * metrics["loss_koleo"]), rel=1e-5
    )


def test_sinkhorn_knopp_centering_is_used_and_leaves_both_centres():
    """DINOv2's centering: the centres stay as initialised (zeros) through two steps with iBOT, and the step's DINO
    loss differs from the centred softmax's on the same initial state and views (where the centre is still zero)."""
    options = {"num_steps": NUM_STEPS, "method_kwargs.ibot_weight": 1.0, "method_kwargs.ibot_separate_head": True}
    first_loss = {}
    for centering in ("sinkhorn_knopp", "centering"):
        _, state, step, frames = start(dino_config(**options, **{"method_kwargs.centering": centering}))
        initial = jax.device_get(state)
        state, metrics = step(state, {"frames": frames})
        first_loss[centering] = float(jax.device_get(metrics)["loss_dino"])
        if centering == "sinkhorn_knopp":
            state, metrics = step(state, {"frames": frames})
            new = jax.device_get(state)
            for key in ("center", "patch_center"):
                np.testing.assert_array_equal(new.extra[key], initial.extra[key])
                assert not np.any(new.extra[key])
            assert np.isfinite(float(jax.device_get(metrics)["loss_dino"]))
    assert np.isfinite(first_loss["sinkhorn_knopp"])
    assert abs(first_loss["sinkhorn_knopp"] - first_loss["centering"]) > 1e-3


# ---- end to end ------------------------------------------------------------------------------------------------
def test_tiny_dino_with_ibot_and_koleo_trains_resumes_and_evaluates(tmp_path):
    """Three steps with every option on, the same losses when stopped after one step and resumed (the teacher and
    the centres are checkpointed), and the evaluation beside timm's random init of the same ViT."""
    config = dino_config(**{"num_steps": 3, "method_kwargs.ibot_weight": 1.0, "method_kwargs.koleo_weight": 0.1})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result = train(config, straight)
    assert result.status == "finished" and result.step == 3
    assert train(config, resumed, stop_at_step=1).status == "preempted"
    assert train(config, resumed).step == 3
    losses = lambda workdir: [r["loss"] for r in read_metrics(workdir)]  # noqa: E731
    assert all(np.isfinite(losses(straight))) and len(losses(straight)) == 3
    assert losses(resumed) == losses(straight)  # deterministic to the bit
    evaluation = json.loads((straight / "eval.json").read_text())["knn_macro_f1"]
    assert list(evaluation)[:2] == ["dino (step 3)", "random init (timm)"]


# ---- presets and config errors -----------------------------------------------------------------------------------
def test_paper_preset_has_the_published_vit_s16_settings():
    c = dino_config("paper")
    assert (c.model.arch, c.model.patch_size, c.data.image_size, c.model.drop_path_rate) == ("vit_small", 16, 224, 0.1)
    k = c.method_kwargs
    assert (k.local_crops, k.local_crop_size, k.out_dim, k.student_temp) == (10, 96, 65536, 0.1)
    assert (k.warmup_teacher_temp, k.teacher_temp, k.warmup_teacher_temp_epochs, k.momentum_base) == (
        0.04,
        0.07,
        30,
        0.996,
    )
    o = c.optim
    assert (o.name, o.lr_weights, o.lr_batch_scaling, o.warmup_epochs, c.batch_size, c.num_epochs) == (
        "adamw", 5e-4, True, 10, 1024, 100)  # fmt: skip
    assert (o.weight_decay, o.weight_decay_end, o.decay_biases, o.freeze_epochs, o.clip_grad) == (
        0.04,
        0.4,
        False,
        1.0,
        3.0,
    )
    assert o.end_lr_factor * o.lr_weights * 1024 / 256 == pytest.approx(1e-6)  # main_dino.py's min_lr
    assert c.augment.view1.crop_scale == (0.32, 1.0) and c.augment.local.crop_scale == (0.05, 0.32)
    d = dino_config("dinov2").method_kwargs
    assert (d.ibot_weight, d.koleo_weight, d.mask_ratio) == (1.0, 0.1, (0.1, 0.5))
    assert (d.centering, d.ibot_separate_head) == ("sinkhorn_knopp", True)  # train/vitl14.yaml, vitg14.yaml
    validate(dino_config("paper"))
    validate(dino_config("default"))


@pytest.mark.parametrize("preset, clip", [("default", 0.0), ("tiny", 0.0), ("paper", 3.0), ("dinov2", 3.0)])
def test_every_preset_can_set_gradient_clipping_from_its_arguments(preset, clip):
    """`optim.clip_grad` is in every DINO preset (main_dino.py clips at 3.0 in `paper`), so `preset,optim.clip_grad=x`
    and `--config.optim.clip_grad=x` are accepted on any of them, not refused as an unknown key."""
    assert dino_config(preset).optim.clip_grad == clip
    config = load_config(f"{REPO / 'configs' / 'dino.py'}:{preset},optim.clip_grad=1.5")
    assert config.optim.clip_grad == 1.5
    validate(config)


def test_plain_dino_runs_on_a_resnet_but_ibot_needs_a_vit():
    from fetalssl_jax import presets

    config = dino_config(**{"method_kwargs.local_crop_size": 32})
    with config.unlocked():
        config.model = presets.model()
        config.model.update(arch="resnet10", width=8)
    validate(config)  # plain DINO on a ResNet, as the reference allows
    set_by_path(config, "method_kwargs.ibot_weight", 1.0)
    with pytest.raises(ConfigError, match=r"model.arch = 'resnet10': the iBOT loss .* masks a ViT's patches"):
        validate(config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("method_kwargs.teacher_temp", 0.0, "must be a positive number"),
        ("method_kwargs.student_temp", -0.1, "must be a positive number"),
        ("method_kwargs.local_crops", -1, "must be an integer >= 0"),
        ("method_kwargs.local_crop_size", 12, "must be a multiple of model.patch_size = 8"),
        ("method_kwargs.out_dim", 0, "must be a positive integer"),
        ("method_kwargs.mask_ratio", (0.5, 0.1), "must be \\(low, high\\) with 0 < low <= high <= 1"),
        ("method_kwargs.mask_mode", "grid", "must be one of 'block', 'random'"),
        ("method_kwargs.centering", "softmax", "must be one of 'centering', 'sinkhorn_knopp'"),
        ("method_kwargs.center_momentum", 1.0, "must be a number in \\[0, 1\\)"),
        ("augment.local.crop_scale", (0.5, 0.1), "must be \\(low, high\\) with low <= high"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    config = dino_config()
    set_by_path(config, key, value)
    with pytest.raises(ConfigError, match=rf"{key} = .*{message}"):
        validate(config)
