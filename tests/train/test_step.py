"""The compiled train step: bfloat16 compute keeps float32 parameters; donation; step counter."""

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from fetalssl_jax.data import sources
from fetalssl_jax.methods import get_method
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh
from fetalssl_jax.train.loop import make_sampler
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step


def one_step(config):
    method = get_method(config.method)(config)
    sampler = make_sampler(config, method, sources.pretraining_frames(config))
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, 10)
    mesh = make_mesh()
    frames = jax.make_array_from_process_local_data(batch_sharding(mesh), sampler.batch(0)["frames"])
    state = init_state(method, optimizer, config.seed, frames, mesh)
    new_state, metrics = make_train_step(method, optimizer, mesh)(state, {"frames": frames})
    return state, new_state, metrics


def test_bfloat16_compute_keeps_float32_parameters():
    _, state32, m32 = one_step(tiny_config())
    old, state16, m16 = one_step(tiny_config(**{"model.dtype": "bfloat16"}))
    assert old.params["backbone"]["conv1"]["kernel"].is_deleted()  # the old state's buffers were donated
    assert int(state16.step) == 1
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state16.params))
    assert np.isfinite(float(m16["loss"]))
    # same data, same init: bfloat16 changes the loss by rounding only (8 mantissa bits)
    assert abs(float(m16["loss"]) - float(m32["loss"])) < 0.05 * abs(float(m32["loss"]))
