"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_multidevice.py).

Trains two steps of tiny Barlow Twins on the same global batch on an 8-device mesh and on a 1-device mesh,
and prints both losses (the second depends on the first update) and the largest per-tensor relative difference
of the parameters and BN statistics after the first update.
"""

import json
import sys

import jax
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from conftest import tiny_config  # noqa: E402

from fetalssl_jax.data import sources  # noqa: E402
from fetalssl_jax.methods import get_method  # noqa: E402
from fetalssl_jax.train.loop import make_sampler  # noqa: E402
from fetalssl_jax.train.optim import make_optimizer  # noqa: E402
from fetalssl_jax.train.step import batch_sharding, init_state, make_mesh, make_train_step  # noqa: E402


def run(devices, config, steps=2):
    method = get_method(config.method)(config)
    sampler = make_sampler(config, method, sources.pretraining_frames(config))
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, 100)
    mesh = make_mesh(devices)
    sharding = batch_sharding(mesh)
    batches = [jax.make_array_from_process_local_data(sharding, sampler.batch(s)["frames"]) for s in range(steps)]
    state = init_state(method, optimizer, config.seed, batches[0], mesh)
    step_fn = make_train_step(method, optimizer, mesh)
    losses, after_first = [], None
    for batch in batches:
        state, metrics = step_fn(state, {"frames": batch})
        losses.append(float(metrics["loss"]))
        if after_first is None:
            after_first = jax.device_get({"params": state.params, "model_state": state.model_state})
    return losses, after_first


def max_rel(a, b):
    """Largest per-tensor relative error ||a - b|| / ||b|| (elementwise ratios of values that are ~0 after a tiny
    update from a zero init measure float32 summation order, not a difference in what is computed)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        worst = max(worst, float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-12)))
    return worst


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    config = tiny_config(**{"method_kwargs.lambd": 0.0051})
    loss8, tree8 = run(jax.devices(), config)
    loss1, tree1 = run(jax.devices()[:1], config)
    print(json.dumps({"loss8": loss8, "loss1": loss1, "max_rel_params": max_rel(tree8, tree1)}))
