"""Is the run training? A non-finite loss stops it; the relative weight change from initialisation, per ResNet
stage, tells whether the backbone moves. `Tally` checks every step on the device, so that the loop reads the
device only at the steps it records.

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
from jax.sharding import Sharding

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


class Tally:
    """What the loop must know of the steps it does not record, kept on the device: whether the loss and gradient
    norm of every step since the last record were finite, the first step that was not (with its values), and the
    sum of the losses. `update` is one small compiled function per step and no transfer to the host; the tally is
    read with the recorded step's metrics."""

    def __init__(self, sharding: Sharding):
        self.update = jax.jit(self._update, out_shardings=sharding)
        # made by a compiled function, not put from the host: valid for a mesh over several processes too
        self.fresh = jax.jit(self._fresh, out_shardings=sharding)

    @staticmethod
    def _fresh() -> dict[str, jax.Array]:
        """The tally of no steps."""
        zero = jnp.zeros((), jnp.float32)
        return {"finite": jnp.array(True), "bad_step": jnp.array(-1, jnp.int32), "bad_loss": zero,
                "bad_grad_norm": zero, "loss_sum": zero, "steps": jnp.zeros((), jnp.int32)}  # fmt: skip

    @staticmethod
    def _update(tally: dict[str, jax.Array], step: jax.Array, metrics: Mapping[str, jax.Array]):
        loss, grad_norm = metrics["loss"].astype(jnp.float32), metrics["grad_norm"].astype(jnp.float32)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        first_bad = tally["finite"] & ~finite
        return {
            "finite": tally["finite"] & finite,
            "bad_step": jnp.where(first_bad, jnp.asarray(step, jnp.int32), tally["bad_step"]),
            "bad_loss": jnp.where(first_bad, loss, tally["bad_loss"]),
            "bad_grad_norm": jnp.where(first_bad, grad_norm, tally["bad_grad_norm"]),
            "loss_sum": tally["loss_sum"] + loss,
            "steps": tally["steps"] + 1,
        }


def check_tally(tally: Mapping[str, Any], last_checkpoint: int | None, checkpoints: str | pathlib.Path) -> float:
    """The mean loss of a fetched tally's steps; NonFiniteLossError (`check_finite`'s, naming the first
    non-finite step) if any of them was not finite."""
    if not tally["finite"]:
        values = {"loss": float(tally["bad_loss"]), "grad_norm": float(tally["bad_grad_norm"])}
        check_finite(int(tally["bad_step"]), values, last_checkpoint, checkpoints)
    return float(tally["loss_sum"]) / max(int(tally["steps"]), 1)


def stage_of(name: str) -> str:
    """A ResNet's 'stem' (the first conv/BN) and 'layerN' (the blocks of stage N: 'layer3_1' -> 'layer3'); a ViT's
    'embed' (patch embedding, tokens, positions) and 'blocks'."""
    match = re.match(r"(layer\d+)", name)
    if match:
        return match.group(1)
    return "blocks" if name.startswith("blocks_") else "embed" if name in _VIT_EMBEDDING else "stem"


_VIT_EMBEDDING = ("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token")


def relative_weight_change(params: PyTree, initial: PyTree) -> dict[str, jax.Array]:
    """||W - W0|| / ||W0|| over the kernels and embeddings (ndim > 1) of each stage of a backbone's params
    (`stage_of`), and 'all' over every one. Norm scales and offsets are left out: they move even when the kernels
    do not."""
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
