"""Run as a script with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_multidevice.py).

For each method named on the command line: two train steps of its tiny config on the same global batch, on an
8-device mesh and on a 1-device mesh. Prints, per method, both losses (the second depends on the first update)
and how close everything in the train state is after the first update (parameters, BN statistics, EMA
targets, queues), as `allclose_ratio`.
"""

import json
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from conftest import REPO  # noqa: E402

from fetalssl_jax.config_lib import load_config, method_config_files, set_by_path  # noqa: E402
from fetalssl_jax.data import sources  # noqa: E402
from fetalssl_jax.methods import get_method  # noqa: E402
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh  # noqa: E402
from fetalssl_jax.train.loop import make_sampler  # noqa: E402
from fetalssl_jax.train.optim import make_optimizer  # noqa: E402
from fetalssl_jax.train.step import init_state, make_train_step  # noqa: E402


def run(devices, config, steps=2):
    method = get_method(config.method)(config, 100)
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
            after_first = jax.device_get({"params": state.params, "model_state": state.model_state,
                                          "extra": state.extra})  # fmt: skip
    return losses, after_first


def allclose_ratio(a, b, rtol=1e-5, atol=1e-7):
    """max over tensors of ||a - b|| / (atol * sqrt(size) + rtol * ||b||): <= 1 means every tensor agrees to a
    relative 1e-5, or, for tensors that are ~0 after one small update from a zero init (BN offsets, zero-init
    residual scales, whose gradients are sums of cancelling terms), to 1e-7 RMS: there a relative error measures
    float32 summation order, not what is computed. A per-device instead of a global statistic changes an update
    by its own order of magnitude (>= 1e-4 here)."""
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        bound = atol * np.sqrt(y.size) + rtol * np.linalg.norm(y)
        worst = max(worst, float(np.linalg.norm(x - y) / bound))
    return worst


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    results = {}
    files = method_config_files(REPO / "configs")
    for method in sys.argv[1:]:
        config = load_config(f"{files[method]}:tiny")
        set_by_path(config, "batch_size", 16)  # two examples per device
        if config.optim.name == "adamw":
            # Adam's first update is ~lr * g / |g| per element: gradients that are zero up to float32 rounding
            # (behind a ReLU at ~0) get +-lr steps whose sign depends on summation order. Plain SGD keeps the
            # comparison about what is computed (losses, gradients, BN statistics), which is what is tested.
            set_by_path(config, "optim.name", "sgd")
        loss8, tree8 = run(jax.devices(), config)
        loss1, tree1 = run(jax.devices()[:1], config)
        # The autoencoders' transposed-conv decoder takes batch means of activations with large cancellations
        # (more so with the N(0, 1) noise of erased rectangles): float32 summation order alone moves their BN
        # statistics and the zero-init scales' first updates by up to ~1e-4 (autoencoder) and ~3e-4
        # (inpainting) relative (measured). Their losses still agree to < 1e-5, and per-device statistics (2
        # examples per device here) would move everything by orders of magnitude more. Other methods: 1e-5.
        rtol = {"autoencoder": 1e-4, "inpainting": 1e-3}.get(config.method, 1e-5)
        ratio = allclose_ratio(tree8, tree1, rtol=rtol)
        results[config.method] = {"loss8": loss8, "loss1": loss1, "allclose_ratio": ratio, "rtol": rtol}
    print(json.dumps(results))
