"""MAE's reconstruction loss (He et al. 2022): mean squared error over the masked patches only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["mae_loss"]

NORM_PIX_EPS = 1e-6  # added to each patch's variance, as the MAE reference


def mae_loss(pred: jax.Array, target_patches: jax.Array, mask: jax.Array, norm_pix: bool = True) -> jax.Array:
    """MSE of predicted patches ``pred`` [B, N, P] against ``target_patches`` [B, N, P] (``models.patches.patchify``
    of the input), averaged over the P values of a patch, then over the patches where ``mask`` [B, N] is 1 (hidden
    from the encoder). ``norm_pix``: each target patch standardised by its own mean and unbiased variance (torch
    ``var``'s default, as the reference) plus 1e-6. An all-zero mask gives 0."""
    target = jnp.asarray(target_patches, jnp.float32)
    if norm_pix:
        mean = jnp.mean(target, axis=-1, keepdims=True)
        var = jnp.var(target, axis=-1, keepdims=True, ddof=1)
        target = (target - mean) / jnp.sqrt(var + NORM_PIX_EPS)
    per_patch = jnp.mean((jnp.asarray(pred, jnp.float32) - target) ** 2, axis=-1)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(per_patch * mask) / jnp.maximum(jnp.sum(mask), 1.0)
