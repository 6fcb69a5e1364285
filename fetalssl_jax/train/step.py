"""One compiled, data-parallel train step over all devices of all processes (the mesh and shardings:
`fetalssl_jax.runtime.sharding`), for every training task: pretraining methods and the plane classifier."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from fetalssl_jax.methods.base import Method
from fetalssl_jax.models.resnet import init_key
from fetalssl_jax.runtime.sharding import batch_sharding, replicated
from fetalssl_jax.train.optim import Optimizer
from fetalssl_jax.train.state import TrainState


class Task(Protocol):
    """What the train step needs of a training task: a pretraining `Method`, or the classifier's task
    (`downstream/classification.py`). The state's `extra` holds what the task keeps beside the parameters."""

    def step_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> Any:
        """The loss's inputs, made on the device from the sharded batch (augmentations)."""

    def loss_fn(self, params, model_state, extra, inputs, rng: jax.Array, step: jax.Array) -> tuple[jax.Array, Any]:
        """(loss, (new model_state, new extra, metrics)) on the global batch."""

    def after_update(self, extra, params, model_state, step: jax.Array) -> Any:
        """The extra state after the optimiser step (e.g. an EMA target)."""


def init_state(method: Method, optimizer: Optimizer, seed: int, example_frames: jax.Array, mesh: Mesh) -> TrainState:
    """Initial train state, compiled and placed replicated on the mesh."""

    def init(frames):
        aug_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
        variables = method.init_variables(init_key(seed), method.make_inputs(aug_rng, frames))
        params = variables.pop("params")
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            model_state=variables,
            opt_state=optimizer.tx.init(params),
            extra=method.init_extra_state({"params": params, **variables}),
            rng=state_rng,
        )

    return jax.jit(init, out_shardings=replicated(mesh))(example_frames)


def make_train_step(
    method: Task, optimizer: Optimizer, mesh: Mesh
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted step (state, batch) -> (state, metrics) of `method` (any `Task`): augment, loss, gradient,
    optimiser update, `after_update`; state replicated, batch sharded, the old state's buffers donated."""

    def train_step(state: TrainState, batch: dict[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(state.rng, state.step)
        aug_rng, loss_rng = jax.random.split(rng)
        inputs = method.step_inputs(aug_rng, batch)

        def loss_of(params):
            return method.loss_fn(params, state.model_state, state.extra, inputs, loss_rng, state.step)

        (loss, (model_state, extra, metrics)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = optimizer.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = method.after_update(extra, params, model_state, state.step)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree_utils.tree_norm(grads),
            **{name: schedule(state.step) for name, schedule in optimizer.schedules.items()},
        }
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            extra=extra,
            rng=state.rng,
        )
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=0,
    )
