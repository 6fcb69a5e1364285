"""MoCo and BYOL: their losses against numpy, the EMA schedule, one train step's EMA and queue, and resume."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.data import sources
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.base import apply_model
from fetalssl_jax.methods.byol import negative_cosine_loss
from fetalssl_jax.methods.moco import info_nce_loss
from fetalssl_jax.methods.momentum import cosine_momentum
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh
from fetalssl_jax.train.loop import make_sampler, train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step

NUM_STEPS = 6
# One config for the step and the resume tests, so that they share one compiled step (persistent cache).
# momentum_base 0.5 makes the EMA visible: target moves halfway to the online network.
# No warm-up: the parameters move from the first step (the LARS of BYOL moves biases and BN parameters most).
SHARED = {"num_steps": NUM_STEPS, "checkpoint_every_steps": 100, "method_kwargs.momentum_base": 0.5,
          "optim.warmup_epochs": 0, "eval.compare_random_init": False}  # fmt: skip


def method_config(name, **overrides):
    """configs/<name>.py:tiny with `overrides` (dotted keys) applied."""
    from fetalssl_jax.config_lib import load_config, set_by_path

    config = load_config(f"{REPO / 'configs' / name}.py:tiny")
    for key, value in {**SHARED, **overrides}.items():
        set_by_path(config, key, value)
    return config


# ---- losses ------------------------------------------------------------------------------------------------------
def numpy_info_nce(q, k, queue, t):
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    q, k, queue = unit(q), unit(k), unit(queue)
    logits = np.concatenate([np.sum(q * k, 1, keepdims=True), q @ queue.T], 1) / t
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax = log_softmax - np.log(np.exp(log_softmax).sum(1, keepdims=True))
    return -log_softmax[:, 0].mean()


def test_info_nce_matches_numpy():
    rng = np.random.default_rng(0)
    q, k, queue = rng.normal(size=(8, 16)), rng.normal(size=(8, 16)), rng.normal(size=(32, 16))
    for t in (0.5, 0.1):
        got = info_nce_loss(*(jnp.asarray(x, jnp.float32) for x in (q, k, queue)), t)
        np.testing.assert_allclose(float(got), numpy_info_nce(q, k, queue, t), rtol=1e-5)
    # normalised inside: rescaling any input changes nothing
    scaled = info_nce_loss(jnp.asarray(3 * q), jnp.asarray(0.2 * k), jnp.asarray(7 * queue), 0.5)
    np.testing.assert_allclose(float(scaled), numpy_info_nce(q, k, queue, 0.5), rtol=1e-5)


def test_info_nce_hand_worked():
    e = np.eye(3, dtype=np.float32)
    # positive identical (cos 1), the two negatives orthogonal (cos 0): -log(e^(1/t) / (e^(1/t) + 2))
    loss = info_nce_loss(jnp.asarray(e[:1]), jnp.asarray(2 * e[:1]), jnp.asarray(e[1:]), 0.5)
    np.testing.assert_allclose(float(loss), np.log(1 + 2 * np.exp(-2.0)), rtol=1e-6)
    # the key orthogonal and a negative identical to the query: -log(1 / (1 + e^2))
    loss = info_nce_loss(jnp.asarray(e[:1]), jnp.asarray(e[1:2]), jnp.asarray(e[:1]), 0.5)
    np.testing.assert_allclose(float(loss), np.log(1 + np.exp(2.0)), rtol=1e-6)


def test_negative_cosine_loss():
    rng = np.random.default_rng(1)
    p, z = rng.normal(size=(8, 16)), rng.normal(size=(8, 16))
    expected = -np.mean(np.sum(p * z, 1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1)))
    np.testing.assert_allclose(float(negative_cosine_loss(jnp.asarray(p), jnp.asarray(z))), expected, rtol=1e-5)
    scale_p, scale_z = rng.uniform(0.1, 10, size=(8, 1)), rng.uniform(0.1, 10, size=(8, 1))
    rescaled = negative_cosine_loss(jnp.asarray(p * scale_p), jnp.asarray(z * scale_z))
    np.testing.assert_allclose(float(rescaled), expected, rtol=1e-5)
    np.testing.assert_allclose(float(negative_cosine_loss(jnp.asarray(p), jnp.asarray(p))), -1.0, rtol=1e-6)


def test_cosine_momentum():
    assert float(cosine_momentum(0, 100, 0.996)) == pytest.approx(0.996)
    assert float(cosine_momentum(100, 100, 0.996)) == pytest.approx(1.0)
    assert float(cosine_momentum(50, 100, 0.99)) == pytest.approx(0.995)
    values = np.asarray(jax.vmap(lambda s: cosine_momentum(s, 100, 0.996))(jnp.arange(101)))
    assert np.all(np.diff(values) >= 0) and np.all(np.diff(values[:-1]) > 0)


def test_after_update_moves_the_target_modules_parameters_and_statistics():
    """target <- m * target + (1 - m) * online, for parameters and BatchNorm statistics of the target's modules
    only (BYOL: backbone and projector, not the predictor); other extra state passes through."""
    method = get_method("byol")(method_config("byol"), NUM_STEPS)
    ones, zeros = jnp.ones(3), jnp.zeros(3)
    extra = {
        "target_params": {"backbone": {"w": ones}, "projector": {"w": zeros}},
        "target_state": {"batch_stats": {"backbone": {"mean": ones}, "projector": {"mean": ones}}},
        "other": zeros,
    }
    params = {"backbone": {"w": zeros}, "projector": {"w": ones}, "predictor": {"w": ones}}
    model_state = {"batch_stats": {"backbone": {"mean": 3 * ones}, "projector": {"mean": ones}, "predictor": {}}}
    new = method.after_update(extra, params, model_state, jnp.asarray(2))
    m = 1 - 0.5 * (np.cos(np.pi * 2 / NUM_STEPS) + 1) / 2  # momentum_base 0.5
    np.testing.assert_allclose(new["target_params"]["backbone"]["w"], m, rtol=1e-6)
    np.testing.assert_allclose(new["target_params"]["projector"]["w"], 1 - m, rtol=1e-6)
    np.testing.assert_allclose(new["target_state"]["batch_stats"]["backbone"]["mean"], m + 3 * (1 - m), rtol=1e-6)
    np.testing.assert_allclose(new["target_state"]["batch_stats"]["projector"]["mean"], 1.0, rtol=1e-6)
    assert set(new["target_params"]) == {"backbone", "projector"} and new["other"] is zeros


# ---- one train step ----------------------------------------------------------------------------------------------
def two_steps(config):
    """(state before step 1, state after step 1, metrics of step 1, frames), step 0 already taken."""
    enable_compilation_cache(config.compilation_cache_dir)
    method = get_method(config.method)(config, NUM_STEPS)  # as train(): total_steps = num_steps
    sampler = make_sampler(config, method, sources.pretraining_frames(config))
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, NUM_STEPS)
    mesh = make_mesh()
    frames = jax.make_array_from_process_local_data(batch_sharding(mesh), sampler.batch(0)["frames"])
    state = init_state(method, optimizer, config.seed, frames, mesh)
    step = make_train_step(method, optimizer, mesh)
    state, _ = step(state, {"frames": frames})  # step 0: the target and the online network part ways
    old = jax.device_get(state)  # the step donates the state's buffers
    new, metrics = step(state, {"frames": frames})
    return method, old, jax.device_get(new), jax.device_get(metrics), frames


def leaves(tree):
    return {jax.tree_util.keystr(path): np.asarray(x) for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_ema(old, new, metrics, online_modules):
    """target_new == m * target_old + (1 - m) * online_new for every leaf, parameters and BatchNorm statistics."""
    m = float(metrics["momentum"])
    assert m == pytest.approx(float(cosine_momentum(1, NUM_STEPS, 0.5)), rel=1e-6)
    assert sorted(new.extra["target_params"]) == sorted(online_modules)
    pairs = [
        (old.extra["target_params"], new.params, new.extra["target_params"]),
        (old.extra["target_state"], new.model_state, new.extra["target_state"]),
    ]
    checked = 0
    for target_old, online_new, target_new in map(lambda trees: map(leaves, trees), pairs):
        assert set(target_new) <= set(online_new)
        for name in target_new:
            expected = m * target_old[name].astype(np.float64) + (1 - m) * online_new[name]
            np.testing.assert_allclose(target_new[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)
            checked += 1
        # the check has teeth: the target is neither unchanged nor the online network
        assert any(not np.allclose(target_new[k], target_old[k], rtol=1e-3, atol=1e-5) for k in target_new)
        assert any(not np.allclose(target_new[k], online_new[k], rtol=1e-3, atol=1e-5) for k in target_new)
    assert checked > 10


def test_moco_step_updates_key_encoder_by_ema_and_enqueues_the_batch_keys():
    config = method_config("moco")
    method, old, new, metrics, frames = two_steps(config)
    check_ema(old, new, metrics, ["backbone", "head"])

    # the keys of this step, computed independently: the old key encoder on the step's augmented views
    @jax.jit
    def keys_of(frames):
        rng = jax.random.fold_in(old.rng, old.step)
        aug_rng, _ = jax.random.split(rng)
        inputs = method.make_inputs(aug_rng, frames)
        (k1, k2), _ = apply_model(
            method.build_model(), old.extra["target_params"], old.extra["target_state"], inputs, train=True
        )
        return jnp.concatenate([k1, k2])

    keys = np.asarray(keys_of(frames), np.float64)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    queue_old, queue_new = old.extra["queue"], new.extra["queue"]
    n2 = 2 * config.batch_size
    assert queue_new.shape == queue_old.shape == (config.method_kwargs.queue_size, config.method_kwargs.head[-1])
    np.testing.assert_allclose(np.linalg.norm(queue_new, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(queue_new[:n2], keys, atol=2e-4)  # newest first
    np.testing.assert_array_equal(queue_new[n2:], queue_old[: len(queue_old) - n2])  # the oldest dropped
    assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0


def test_byol_step_updates_target_by_ema():
    method, old, new, metrics, _ = two_steps(method_config("byol"))
    check_ema(old, new, metrics, ["backbone", "projector"])
    assert "predictor" in new.params and "predictor" not in new.extra["target_params"]
    assert -1.0 <= metrics["loss"] <= 1.0


# ---- resume ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["moco", "byol"])
def test_interrupted_and_resumed_run_has_the_same_losses(tmp_path, name):
    config = method_config(name)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(config, straight)
    first = train(config, resumed, stop_at_step=3)
    assert first.status == "preempted" and first.step == 3
    second = train(config, resumed)
    assert second.status == "finished" and second.step == NUM_STEPS
    losses = lambda workdir: [r["loss"] for r in read_metrics(workdir)]  # noqa: E731
    assert len(losses(resumed)) == NUM_STEPS
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)
