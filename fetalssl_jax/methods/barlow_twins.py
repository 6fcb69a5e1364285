"""Barlow Twins (Zbontar et al. 2021) as the paper's reference code trains it.

Backbone -> projector Linear(no bias)-BN-ReLU x2 -> Linear(no bias); the embeddings of the two views are
standardised per dimension over the batch, their cross-correlation matrix C is pushed to the identity:
loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2. Unlike the reference (one GPU, its all-reduce
commented out), C and every BatchNorm statistic are over the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import augment_batch
from fetalssl_jax.methods.base import Method, apply_model, register
from fetalssl_jax.models.heads import MLPHead


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


class TwoViewEmbedder(nn.Module):
    """Shared backbone and projector applied to each view separately (per-view BN statistics, as the reference)."""

    backbone: nn.Module
    projector_sizes: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.projector = MLPHead(self.projector_sizes, use_bias=False, dtype=self.dtype)

    def embed(self, x: jax.Array, train: bool) -> jax.Array:
        return self.projector(self.backbone(x, train=train), train=train)

    def __call__(self, views: tuple[jax.Array, jax.Array], train: bool = True) -> tuple[jax.Array, jax.Array]:
        x1, x2 = views
        return self.embed(x1, train), self.embed(x2, train)


@register
class BarlowTwins(Method):
    """Barlow Twins; `method_kwargs`: projector (sizes), lambd (off-diagonal weight)."""

    name = "barlow_twins"

    def build_model(self) -> nn.Module:
        return TwoViewEmbedder(self.build_backbone(), tuple(self.kwargs.projector), dtype=self.dtype)

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        rng1, rng2 = jax.random.split(rng)
        size = self.config.data.image_size
        x1 = augment_batch(rng1, frames[:, 0], self.config.augment.view1.to_dict(), size)
        x2 = augment_batch(rng2, frames[:, -1], self.config.augment.view2.to_dict(), size)
        return x1.astype(self.dtype), x2.astype(self.dtype)

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del rng, step
        (z1, z2), model_state = apply_model(self.build_model(), params, model_state, inputs, train=True)
        loss = barlow_twins_loss(z1, z2, self.kwargs.lambd)
        return loss, (model_state, extra, {})


def default_kwargs(projector: Sequence[int] = (8192, 8192, 8192), lambd: float = 0.0051) -> dict:
    """`method_kwargs` of the reference setting."""
    return {"projector": tuple(projector), "lambd": lambd}
