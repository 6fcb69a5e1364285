"""What the momentum-target methods (MoCo, BYOL) share: a target network that is an exponential moving average of
(part of) the online network, its parameters *and* its BatchNorm running statistics.

`cosine_momentum` is BYOL's schedule: tau(k) = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2, from `base` at step 0
to 1 at step K (optax's cosine decay of 1 - base). It reads `step` from the train state and K from the loop, so a
resumed run continues the same schedule. The EMA is one `optax.incremental_update` of every target leaf after the
optimiser step, with the updated parameters and the BatchNorm statistics of the same step:
target <- m * target + (1 - m) * online.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from fetalssl_jax.methods.base import Method

PyTree = Any


def cosine_momentum(step: jax.Array | int, total_steps: int, base: float = 0.996) -> jax.Array:
    """EMA momentum at `step` of `total_steps`: `base` at 0, rising along a half cosine to 1 at `total_steps`
    (1 - optax's cosine decay of 1 - base)."""
    return 1.0 - optax.cosine_decay_schedule(1.0 - base, max(int(total_steps), 1))(step)


class MomentumMethod(Method):
    """A method with an EMA target network; `method_kwargs.momentum_base` starts the cosine momentum schedule.

    `extra` holds {"target_params", "target_state"}: copies of the online parameters and BatchNorm statistics of
    the modules in `target_modules` (None: the whole network), moved towards the online ones after every update.
    Subclasses add their own extra state (e.g. a queue) by extending `init_extra_state`.
    """

    target_modules: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def check_config(cls, c) -> None:
        c.below_one("method_kwargs.momentum_base")

    def momentum(self, step: jax.Array) -> jax.Array:
        """The EMA momentum of `step`."""
        return cosine_momentum(step, self.total_steps, self.kwargs.momentum_base)

    def target_part(self, tree: dict) -> dict:
        """The subtrees of a params or BatchNorm-statistics tree that the target network holds."""
        if self.target_modules is None:
            return tree
        return {k: tree[k] for k in self.target_modules if k in tree}

    def init_extra_state(self, variables: dict[str, PyTree]) -> PyTree:
        copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731
        state = {k: self.target_part(v) for k, v in variables.items() if k != "params"}
        return {"target_params": copy(self.target_part(variables["params"])), "target_state": copy(state)}

    def after_update(self, extra: PyTree, params: PyTree, model_state: PyTree, step: jax.Array) -> PyTree:
        m = jnp.asarray(self.momentum(step), jnp.float32)
        online_state = {k: self.target_part(v) for k, v in model_state.items()}
        # incremental_update(a, b, w) = w * a + (1 - w) * b: with the target as `a` and w = m this is the EMA in
        # the operand order of the reference (m * target first), which keeps XLA's rounding, and so the losses,
        # the same to the last bit.
        return {
            **extra,
            "target_params": optax.incremental_update(extra["target_params"], self.target_part(params), m),
            "target_state": optax.incremental_update(extra["target_state"], online_state, m),
        }
