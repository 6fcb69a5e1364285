"""Barlow Twins (Zbontar et al. 2021) as the paper's reference code trains it.

Backbone -> projector Linear(no bias)-BN-ReLU x2 -> Linear(no bias); the embeddings of the two views are
standardised per dimension over the batch, their cross-correlation matrix C is pushed to the identity:
loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2. Unlike the reference (one GPU, its all-reduce
commented out), C and every BatchNorm statistic are over the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from fetalssl_jax.methods.base import TwoViewMethod, register


def batch_standardize(z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Per-dimension standardisation over the batch, as BatchNorm1d(affine=False) in training mode."""
    mean = jnp.mean(z, axis=0)
    var = jnp.mean(jnp.square(z - mean), axis=0)  # biased, as BatchNorm
    return (z - mean) * jax.lax.rsqrt(var + eps)


def barlow_twins_loss(z1: jax.Array, z2: jax.Array, lambd: float = 0.0051) -> jax.Array:
    """Barlow Twins loss of two batches of embeddings [N, D] (float32 inside)."""
    z1 = batch_standardize(z1.astype(jnp.float32))
    z2 = batch_standardize(z2.astype(jnp.float32))
    c = z1.T @ z2 / z1.shape[0]
    on_diag = jnp.sum(jnp.square(jnp.diagonal(c) - 1.0))
    off_diag = jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(jnp.diagonal(c)))
    return on_diag + lambd * off_diag


@register
class BarlowTwins(TwoViewMethod):
    """Barlow Twins; `method_kwargs`: projector (sizes, no biases), lambd (off-diagonal weight)."""

    name = "barlow_twins"

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        c.non_negative_number("method_kwargs.lambd")

    def embedding_loss(self, z1, z2):
        return barlow_twins_loss(z1, z2, self.kwargs.lambd), {}


def default_kwargs(projector: Sequence[int] = (8192, 8192, 8192), lambd: float = 0.0051) -> dict:
    """`method_kwargs` of the reference setting."""
    return {"projector": tuple(projector), "lambd": lambd}
