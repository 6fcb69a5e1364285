"""LARS and the warm-up + cosine schedule against a numpy port of the Barlow Twins reference code."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from fetalssl_jax.train.optim import make_optimizer, param_groups


def reference_lr(step, base, batch_size, steps_per_epoch, epochs, warmup_epochs=10, end_factor=0.001):
    """adjust_learning_rate() of the Barlow Twins reference, for one parameter group."""
    max_steps = epochs * steps_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    peak = base * batch_size / 256
    if step < warmup_steps:
        return peak * step / warmup_steps
    step -= warmup_steps
    max_steps -= warmup_steps
    q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
    return peak * q + peak * end_factor * (1 - q)


def reference_lars_step(p, g, mu, lr, wd, momentum, eta, adapt):
    """One step of the reference LARS for one parameter (numpy)."""
    dp = g.copy()
    if adapt:
        dp = dp + wd * p
        pn, un = np.linalg.norm(p), np.linalg.norm(dp)
        q = eta * pn / un if (pn > 0 and un > 0) else 1.0
        dp = dp * q
    mu = momentum * mu + dp
    return p - lr * mu, mu


def optim_config():
    return ml_collections.ConfigDict(
        dict(name="lars", lr_weights=0.2, lr_biases=0.0048, weight_decay=1e-6, momentum=0.9,
             trust_coefficient=0.001, warmup_epochs=2.0, end_lr_factor=0.001, schedule="warmup_cosine",
             step_decay_epochs=50.0, step_decay_factor=0.5624, lr_batch_scaling=True)
    )  # fmt: skip


def test_schedule_matches_reference():
    opt = make_optimizer(optim_config(), batch_size=512, steps_per_epoch=5, total_steps=50)
    for step in [0, 1, 5, 9, 10, 11, 30, 49]:
        want_w = reference_lr(step, 0.2, 512, 5, 10, warmup_epochs=2)
        want_b = reference_lr(step, 0.0048, 512, 5, 10, warmup_epochs=2)
        assert float(opt.schedules["lr"](step)) == pytest.approx(want_w, rel=1e-5, abs=1e-9)
        assert float(opt.schedules["lr_biases"](step)) == pytest.approx(want_b, rel=1e-5, abs=1e-9)


def test_param_groups_by_rank():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}, "bn": {"scale": jnp.ones(4)}}
    groups = param_groups(params)
    assert groups == {"dense": {"kernel": "weights", "bias": "biases"}, "bn": {"scale": "biases"}}


def test_lars_trajectory_matches_reference():
    rng = np.random.default_rng(0)
    params = {
        "kernel": rng.normal(size=(4, 3)).astype(np.float32),
        "bias": rng.normal(size=3).astype(np.float32),
    }
    cfg = optim_config()
    opt = make_optimizer(cfg, batch_size=256, steps_per_epoch=2, total_steps=12)
    state = opt.tx.init(jax.tree.map(jnp.asarray, params))
    p_jax = jax.tree.map(jnp.asarray, params)
    p_ref = {k: v.astype(np.float64) for k, v in params.items()}
    mu = {k: np.zeros_like(v) for k, v in p_ref.items()}
    for step in range(6):
        grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        updates, state = opt.tx.update(jax.tree.map(jnp.asarray, grads), state, p_jax)
        p_jax = optax.apply_updates(p_jax, updates)
        # reference: the lr of this step is set before the update; optax's scale_by_learning_rate uses its count
        lr_w = reference_lr(step, 0.2, 256, 2, 6, warmup_epochs=2)
        lr_b = reference_lr(step, 0.0048, 256, 2, 6, warmup_epochs=2)
        p_ref["kernel"], mu["kernel"] = reference_lars_step(
            p_ref["kernel"], grads["kernel"], mu["kernel"], lr_w, 1e-6, 0.9, 0.001, adapt=True
        )
        p_ref["bias"], mu["bias"] = reference_lars_step(
            p_ref["bias"], grads["bias"], mu["bias"], lr_b, 1e-6, 0.9, 0.001, adapt=False
        )
        for k in params:
            np.testing.assert_allclose(np.asarray(p_jax[k]), p_ref[k], rtol=1e-5, atol=1e-7)


def test_unknown_optimiser():
    cfg = optim_config()
    cfg.name = "adagrad"
    with pytest.raises(ValueError, match="adagrad"):
        make_optimizer(cfg, 256, 10, 100)


def test_step_decay_schedule_and_unscaled_adamw():
    cfg = optim_config()
    cfg.update(dict(name="adamw", lr_weights=1e-3, schedule="step", step_decay_epochs=2.0, lr_batch_scaling=False))
    opt = make_optimizer(cfg, batch_size=64, steps_per_epoch=5, total_steps=100)
    for step, want in [(0, 1e-3), (9, 1e-3), (10, 1e-3 * 0.5624), (25, 1e-3 * 0.5624**2)]:
        assert float(opt.schedules["lr"](step)) == pytest.approx(want, rel=1e-6)
