"""Is the run training? A non-finite loss stops it; the relative weight change from initialisation, per ResNet
stage, tells whether the backbone moves.

The loop logs the weight change and warns when the backbone has barely moved after the warm-up (docs/design.md,
"Training health is logged, not assumed").
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fetalssl_jax.errors import RunStopped

PyTree = Any
MIN_RELATIVE_CHANGE = 0.05  # below this after warm-up, the run warns that the backbone has barely trained


class NonFiniteLossError(RunStopped, FloatingPointError):
    """The loss or the gradient became NaN or infinite."""


def check_finite(
    step: int, values: Mapping[str, float], last_checkpoint: int | None, checkpoints: str | pathlib.Path
) -> None:
    """NonFiniteLossError, naming the step and the last good checkpoint (kept in `checkpoints`), if the loss or the
    gradient norm in `values` is NaN or infinite. Pretraining and classification check every step they record."""
    loss, grad_norm = values["loss"], values["grad_norm"]
    if np.isfinite(loss) and np.isfinite(grad_norm):
        return
    kept = f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint"
    raise NonFiniteLossError(
        f"loss {loss} / gradient norm {grad_norm} at step {step}: training stopped; {kept} in {checkpoints}. Lower "
        "the learning rate or use float32 compute."
    )


def stage_of(name: str) -> str:
    """'stem' for the first conv/BN, 'layerN' for the blocks of stage N ('layer3_1' -> 'layer3')."""
    match = re.match(r"(layer\d+)", name)
    return match.group(1) if match else "stem"


def relative_weight_change(params: PyTree, initial: PyTree) -> dict[str, jax.Array]:
    """||W - W0|| / ||W0|| over the convolution kernels (ndim > 1) of each stage of a backbone's params, and
    'all' over every kernel. BatchNorm scales and offsets are left out: they move even when the kernels do not."""
    sq_diff: dict[str, jax.Array] = {}
    sq_init: dict[str, jax.Array] = {}
    for top in params:
        leaves = [
            (p, p0)
            for p, p0 in zip(jax.tree.leaves(params[top]), jax.tree.leaves(initial[top]), strict=True)
            if p.ndim > 1
        ]
        if not leaves:
            continue
        stage = stage_of(top)
        diff = sum(jnp.sum(jnp.square(p.astype(jnp.float32) - p0.astype(jnp.float32))) for p, p0 in leaves)
        norm = sum(jnp.sum(jnp.square(p0.astype(jnp.float32))) for _, p0 in leaves)
        sq_diff[stage] = sq_diff.get(stage, 0.0) + diff
        sq_init[stage] = sq_init.get(stage, 0.0) + norm
    out = {stage: jnp.sqrt(sq_diff[stage] / jnp.maximum(sq_init[stage], 1e-30)) for stage in sq_diff}
    out["all"] = jnp.sqrt(sum(sq_diff.values()) / jnp.maximum(sum(sq_init.values()), 1e-30))
    return out
