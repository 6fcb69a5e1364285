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
from fetalssl_jax.models.backbone import is_vit
from fetalssl_jax.models.decoder import ResNetDecoder


def reconstruction_loss(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean squared error over every pixel and channel (float32); with `weight` [B, H, W, 1] (e.g. 1 on the erased
    pixels, 0 elsewhere) the weighted mean over pixels and channels."""
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if weight is None:
        return jnp.mean(sq)
    weight = jnp.broadcast_to(weight.astype(jnp.float32), sq.shape)
    return jnp.sum(weight * sq) / jnp.maximum(jnp.sum(weight), 1.0)


class EncoderDecoder(nn.Module):
    """backbone -> its layer4 map -> decoder -> image of the input's size."""

    backbone: nn.Module
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
        b = self.backbone
        expansion = b.block_cls.expansion
        decoder = ResNetDecoder(
            stage_channels=[b.width * 2**i * expansion for i in range(len(b.stage_sizes))],
            stage_sizes=tuple(b.stage_sizes),
            stem_channels=b.width,
            dtype=self.dtype,
            name="decoder",
        )
        _, feature_map = b(x, train=train, return_map=True)
        out = decoder(feature_map, train=train)
        if out.shape[1:3] != x.shape[1:3]:  # sizes that are not multiples of 32
            out = jax.image.resize(out, (out.shape[0], *x.shape[1:3], out.shape[-1]), "bilinear")
        return out


@register
class AutoEncoder(Method):
    """`method_kwargs`: randaugment_ops, randaugment_magnitude, hflip_prob, vflip_prob."""

    name = "autoencoder"

    @classmethod
    def check_config(cls, c):
        if is_vit(c.get("model.arch")):
            c.fail("model.arch", c.get("model.arch"), f"{cls.name} decodes a ResNet's feature map with a mirrored "
                   "convolutional decoder; use a ResNet (for a ViT: configs/mae.py)")  # fmt: skip
        c.integer("method_kwargs.randaugment_ops", 0)
        c.non_negative_number("method_kwargs.randaugment_magnitude")
        for key in ("hflip_prob", "vflip_prob"):
            c.probability(f"method_kwargs.{key}")

    def build_model(self) -> nn.Module:
        return EncoderDecoder(self.build_backbone(), self.dtype)

    def augment(self, rng: jax.Array, frames: jax.Array) -> jax.Array:
        """The RandAugmented frames, normalised float [B, S, S, 3]: the network's input and its target."""
        k = self.kwargs
        return rand_augment_batch(
            rng, frames[:, 0], k.randaugment_ops, k.randaugment_magnitude, self.config.data.image_size,
            hflip_prob=k.hflip_prob, vflip_prob=k.vflip_prob,
        )  # fmt: skip

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(network input, reconstruction target, per-pixel loss weight or None for all pixels alike)."""
        clean = self.augment(rng, frames)
        return clean.astype(self.dtype), clean, None

    def init_variables(self, rng, inputs):
        return dict(self.build_model().init(rng, inputs[0], train=True))

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del rng, step
        corrupted, target, weight = inputs
        pred, model_state = apply_model(self.build_model(), params, model_state, corrupted, train=True)
        return reconstruction_loss(pred, target, weight), (model_state, extra, {})
