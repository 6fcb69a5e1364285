"""The train state: one pytree with everything a run needs to continue exactly where it stopped."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimiser state, method extra state (EMA target, queue), step and RNG.

    `rng` is a raw uint32 key (jax.random.PRNGKey) so it checkpoints as a plain array; the key of step s is
    fold_in(rng, s), so the randomness of a step depends only on the seed and the step number.
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree  # {"batch_stats": ...}
    opt_state: optax.OptState
    extra: PyTree
    rng: jax.Array
