"""AutoEncoder pretraining as the paper's reference: ResNet encoder without global pooling, a mirrored decoder of
transposed-conv residual blocks back to the input size, MSE to the input.

Input transform as the reference: resize, RandAugment(3 ops, magnitude 3), horizontal and vertical flips, all on
the device. The encoder is the `backbone` that downstream tasks reuse.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.data.randaugment import rand_augment_batch
from fetalssl_jax.methods.base import Method, apply_model, register
from fetalssl_jax.models.decoder import ResNetDecoder


def reconstruction_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error over every pixel and channel (float32)."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


class EncoderDecoder(nn.Module):
    """backbone (its layer4 map) -> decoder -> image of the input's size."""

    backbone: nn.Module
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        b = self.backbone
        expansion = b.block_cls.expansion
        self.decoder = ResNetDecoder(
            stage_channels=[b.width * 2**i * expansion for i in range(len(b.stage_sizes))],
            stage_sizes=tuple(b.stage_sizes),
            stem_channels=b.width,
            dtype=self.dtype,
        )

    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        _, feature_map = self.backbone(x, train=train, return_map=True)
        out = self.decoder(feature_map, train=train)
        if out.shape[1:3] != x.shape[1:3]:  # sizes that are not multiples of 32
            out = jax.image.resize(out, (out.shape[0], *x.shape[1:3], out.shape[-1]), "bilinear")
        return out


@register
class AutoEncoder(Method):
    """`method_kwargs`: randaugment_ops, randaugment_magnitude, hflip_prob, vflip_prob."""

    name = "autoencoder"

    def build_model(self) -> nn.Module:
        return EncoderDecoder(self.build_backbone(), self.dtype)

    def augment(self, rng: jax.Array, frames: jax.Array) -> jax.Array:
        """The clean network input: resize, RandAugment, flips, normalised (float [B, S, S, 3])."""
        k = self.kwargs
        return rand_augment_batch(
            rng, frames[:, 0], k.randaugment_ops, k.randaugment_magnitude, self.config.data.image_size,
            hflip_prob=k.hflip_prob, vflip_prob=k.vflip_prob,
        )  # fmt: skip

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(network input, reconstruction target): the same image for the plain autoencoder."""
        clean = self.augment(rng, frames)
        return clean.astype(self.dtype), clean

    def init_variables(self, rng, inputs):
        return dict(self.build_model().init(rng, inputs[0], train=True))

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del rng, step
        corrupted, target = inputs
        pred, model_state = apply_model(self.build_model(), params, model_state, corrupted, train=True)
        return reconstruction_loss(pred, target), (model_state, extra, {})
