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


# ---- the ViT recipes' AdamW: cosine weight decay, no decay of ndim <= 1 parameters, frozen parameters --------------
def vit_adamw_config(**keys):
    cfg = optim_config()
    cfg.update(dict(name="adamw", lr_weights=1e-2, warmup_epochs=0.0, lr_batch_scaling=False, weight_decay=0.04))
    cfg.update(keys)
    return cfg


def reference_cosine(start, end, step, total):
    """DINO's cosine_scheduler value at `step` (numpy)."""
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * min(step, total) / total))


def test_weight_decay_follows_dino_cosine():
    opt = make_optimizer(vit_adamw_config(weight_decay_end=0.4), batch_size=64, steps_per_epoch=5, total_steps=40)
    for step in [0, 1, 10, 20, 39, 40, 60]:
        want = reference_cosine(0.04, 0.4, step, 40)
        assert float(opt.schedules["weight_decay"](step)) == pytest.approx(want, rel=1e-6)
    assert float(opt.schedules["weight_decay"](20)) == pytest.approx(0.22, rel=1e-6)  # half way: the mean


def reference_adamw(p, grads, lrs, wds, decay, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.AdamW for one tensor over the steps (numpy): p -= lr * wd * p, then the Adam step."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, (g, lr, wd) in enumerate(zip(grads, lrs, wds, strict=True), start=1):
        if decay:
            p = p - lr * wd * p
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return p


def test_adamw_with_scheduled_decay_matches_torch_adamw_and_spares_biases():
    """Three steps against torch's AdamW formula with DINO's per-step weight decay: the kernel decays, the bias and
    the LayerNorm scale do not (decay_biases False)."""
    cfg = vit_adamw_config(weight_decay_end=0.4, decay_biases=False, end_lr_factor=0.5)
    total = 3
    opt = make_optimizer(cfg, batch_size=64, steps_per_epoch=1, total_steps=total)
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": rng.normal(size=(3, 4)), "bias": rng.normal(size=4)}, "norm": {"scale": np.ones(4)}}
    grads = [jax.tree.map(lambda p: rng.normal(size=p.shape), params) for _ in range(total)]
    state, new = opt.tx.init(jax.tree.map(jnp.asarray, params)), jax.tree.map(jnp.asarray, params)
    for g in grads:
        updates, state = opt.tx.update(jax.tree.map(jnp.asarray, g), state, new)
        new = optax.apply_updates(new, updates)
    lrs = [float(opt.schedules["lr"](s)) for s in range(total)]
    wds = [reference_cosine(0.04, 0.4, s, total) for s in range(total)]
    for module, name, decay in [("dense", "kernel", True), ("dense", "bias", False), ("norm", "scale", False)]:
        want = reference_adamw(params[module][name], [g[module][name] for g in grads], lrs, wds, decay)
        np.testing.assert_allclose(np.asarray(new[module][name]), want, rtol=1e-5, err_msg=f"{module}/{name}")


def test_frozen_parameters_keep_their_values_for_the_first_epochs():
    cfg = vit_adamw_config(frozen_params=("head/last_layer",), freeze_epochs=1.0)
    opt = make_optimizer(cfg, batch_size=64, steps_per_epoch=2, total_steps=10)
    params = {"head": {"last_layer": {"kernel": jnp.ones((2, 3))}, "linear0": {"kernel": jnp.ones((2, 2))}}}
    state, grads = opt.tx.init(params), jax.tree.map(jnp.ones_like, params)
    history = []
    for _ in range(3):
        updates, state = opt.tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(jax.tree.map(np.asarray, params))
    for step in (0, 1):  # the first epoch: 2 steps
        np.testing.assert_array_equal(history[step]["head"]["last_layer"]["kernel"], 1.0)
        assert np.all(history[step]["head"]["linear0"]["kernel"] < 1.0)
    assert np.all(history[2]["head"]["last_layer"]["kernel"] < 1.0)  # thawed in the second epoch


def test_plain_adamw_is_optax_adamw():
    """Without the ViT keys the AdamW is optax's, weight decay on every parameter (the classifier's, the
    autoencoders'): the same updates to the last bit."""
    cfg = vit_adamw_config()
    opt = make_optimizer(cfg, batch_size=64, steps_per_epoch=5, total_steps=10)
    assert set(opt.schedules) == {"lr"}
    params = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
    grads = jax.tree.map(lambda p: 0.1 * p + 1.0, params)
    ours, _ = opt.tx.update(grads, opt.tx.init(params), params)
    theirs = optax.adamw(opt.schedules["lr"], weight_decay=0.04)
    want, _ = theirs.update(grads, theirs.init(params), params)
    jax.tree.map(np.testing.assert_array_equal, ours, want)


def test_vit_adamw_keys_are_checked():
    from fetalssl_jax.train.optim import check_config
    from fetalssl_jax.validation import Checks

    cfg = ml_collections.ConfigDict({"optim": vit_adamw_config(name="lars", weight_decay_end=-1.0, frozen_params="x")})
    c = Checks(cfg)
    check_config(c)
    assert "config.optim.weight_decay_end = -1.0: must be a number >= 0" in c.problems
    assert any(
        p.startswith("config.optim.frozen_params = 'x': must be a sequence of parameter names") for p in c.problems
    )
    assert any(p.startswith("config.optim.name = 'lars': must be 'adamw'") for p in c.problems)


def test_clip_grad_scales_each_parameter_to_the_norm():
    """DINO's clip_gradients: a leaf whose gradient norm exceeds clip_grad is scaled to it, the others untouched."""
    from fetalssl_jax.train.optim import clip_each

    grads = {"big": jnp.asarray([3.0, 4.0]), "small": jnp.asarray([0.3, 0.4])}
    clipped, _ = clip_each(1.0).update(grads, clip_each(1.0).init(grads))
    np.testing.assert_allclose(np.asarray(clipped["big"]), np.asarray([3.0, 4.0]) / (5.0 + 1e-6), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped["small"]), np.asarray(grads["small"]))
