"""Exponential moving averages for the momentum-target methods (MoCo, BYOL).

`cosine_momentum` is BYOL's schedule: tau(k) = 1 - (1 - base) * (cos(pi * k / K) + 1) / 2, from `base` at step 0
to 1 at step K. `ema_update` moves a target pytree towards the online one: target * m + online * (1 - m).
This module registers no method (it has no `Method` subclass); the registry's import of it is harmless.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def cosine_momentum(step: jax.Array | int, total_steps: int, base: float = 0.996) -> jax.Array:
    """EMA momentum at `step` of `total_steps`: `base` at 0, rising along a half cosine to 1 at `total_steps`."""
    progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
    return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema_update(target: PyTree, online: PyTree, momentum: jax.Array | float) -> PyTree:
    """Leaf-wise target * m + online * (1 - m), in each target leaf's dtype."""
    m = jnp.asarray(momentum, jnp.float32)

    def update(t, o):
        return (t * m + o.astype(t.dtype) * (1.0 - m)).astype(t.dtype)

    return jax.tree.map(update, target, online)
