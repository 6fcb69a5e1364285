"""AutoEncoder pretraining as the paper's reference: ResNet encoder without global pooling, a mirrored decoder of
transposed-conv residual blocks back to the input size, MSE to the input.

Input transform as the reference: resize, RandAugment(3 ops, magnitude 3), horizontal and vertical flips, all on
the device. The encoder is the `backbone` that downstream tasks reuse.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import augment_view
from fetalssl_jax.data.randaugment import rand_augment_batch
from fetalssl_jax.methods.base import Method, apply_model, register
from fetalssl_jax.models.decoder import ResNetDecoder


def reconstruction_loss(pred: jax.Array, target: jax.Array, weight: jax.Array | None = None) -> jax.Array:
    """Mean squared error over every pixel and channel (float32); with `weight` [B, H, W, 1] (e.g. 1 on the erased
    pixels, 0 elsewhere) the weighted mean over pixels and channels."""
    sq = jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32))
    if weight is None:
        return jnp.mean(sq)
    weight = jnp.broadcast_to(weight.astype(jnp.float32), sq.shape)
    return jnp.sum(weight * sq) / jnp.maximum(jnp.sum(weight), 1.0)


def normalize_patches(target: jax.Array, patch: int, eps: float = 1e-6) -> jax.Array:
    """The target with every `patch` x `patch` square (all channels together; the last row/column of squares may
    be cut short) shifted to mean 0 and scaled to variance 1: the masked autoencoder's normalised pixels (He et al.
    2022, sec. 4.1), which make the loss weigh local structure, not overall brightness. Size kept."""
    b, h, w, c = target.shape
    gh, gw = -(-h // patch), -(-w // patch)
    x = target.astype(jnp.float32)
    # Squares cut short at the edge: pad with the edge value, then weigh only real pixels.
    padded = jnp.pad(x, ((0, 0), (0, gh * patch - h), (0, gw * patch - w), (0, 0)))
    real = jnp.pad(jnp.ones((1, h, w, 1), jnp.float32), ((0, 0), (0, gh * patch - h), (0, gw * patch - w), (0, 0)))
    cells = padded.reshape(b, gh, patch, gw, patch, c)
    weights = jnp.broadcast_to(real.reshape(1, gh, patch, gw, patch, 1), cells.shape)
    count = jnp.sum(weights, axis=(2, 4, 5), keepdims=True)
    mean = jnp.sum(cells * weights, axis=(2, 4, 5), keepdims=True) / count
    var = jnp.sum(jnp.square(cells - mean) * weights, axis=(2, 4, 5), keepdims=True) / count
    normed = ((cells - mean) / jnp.sqrt(var + eps)).reshape(b, gh * patch, gw * patch, c)
    return normed[:, :h, :w].astype(target.dtype)


def winner_take_all(feature_map: jax.Array, lifetime_fraction: float) -> jax.Array:
    """The convolutional winner-take-all code (Makhzani & Frey 2015): of [B, H, W, C] features, every sample's
    channel keeps only its largest activation over the positions (spatial sparsity), and every channel keeps those
    winners that are among the `lifetime_fraction` largest of the batch (lifetime sparsity); the rest is 0. Ties
    are kept. Gradients reach the kept activations only."""
    if not 0.0 < lifetime_fraction <= 1.0:
        raise ValueError(f"lifetime_fraction must be in (0, 1], got {lifetime_fraction}")
    peak = jnp.max(feature_map, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    k = max(1, math.ceil(lifetime_fraction * feature_map.shape[0]))
    kth = jax.lax.top_k(peak[:, 0, 0, :].T, k)[0][:, -1]  # [C]: each channel's k-th largest winner in the batch
    keep = (feature_map >= peak) & (peak >= kth)
    return jnp.where(keep, feature_map, jnp.zeros_like(feature_map))


class EncoderDecoder(nn.Module):
    """backbone -> decoder -> image of the input's size.

    `bottleneck` "map" decodes the layer4 map (the reference). "pooled" decodes the globally pooled features
    (a linear layer brings them back to the map's shape): the vector that downstream tasks use is then the
    code itself, not an average of a map whose information sits in its spatial layout. "wta" decodes the map's
    winner-take-all code (`winner_take_all` with `lifetime_fraction`): a sparse autoencoder whose every channel
    must describe, alone, the few frames of a batch it fires most for; the backbone's own output stays dense.
    """

    backbone: nn.Module
    dtype: jnp.dtype = jnp.float32
    bottleneck: str = "map"
    lifetime_fraction: float = 0.2

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
        pooled, feature_map = b(x, train=train, return_map=True)
        if self.bottleneck == "pooled":
            h, w, c = feature_map.shape[1:]
            code = nn.Dense(h * w * c, dtype=self.dtype, name="unpool")(pooled)
            feature_map = nn.relu(code.reshape(code.shape[0], h, w, c))
        elif self.bottleneck == "wta":
            feature_map = winner_take_all(feature_map, self.lifetime_fraction)
        out = decoder(feature_map, train=train)
        if out.shape[1:3] != x.shape[1:3]:  # sizes that are not multiples of 32
            out = jax.image.resize(out, (out.shape[0], *x.shape[1:3], out.shape[-1]), "bilinear")
        return out


BOTTLENECKS = ("map", "pooled", "wta")
INPUTS = ("randaugment", "denoise", "view")
TARGETS = ("pixels", "patch_norm")
# What a denoising target leaves out of the input's view: the photometric nuisances. The geometry (crop, rotation,
# flips) is drawn from the same uniforms, so input and target are pixel-aligned.
_NUISANCE_OFF = {"ultrasound_prob": 0.0, "color_jitter_prob": 0.0, "blur_prob": 0.0, "solarize_prob": 0.0}


@register
class AutoEncoder(Method):
    """`method_kwargs`: randaugment_ops, randaugment_magnitude, hflip_prob, vflip_prob, bottleneck, inputs, target
    (and `lifetime_fraction` for the "wta" bottleneck).

    `target` "pixels" (the reference) or "patch_norm": every square of side `patch_fraction` x image size of the
    target normalised to mean 0, variance 1 (`normalize_patches`).

    `inputs` "randaugment" (the reference): input and target are the same RandAugmented frame. "denoise": the
    input is a view of `config.augment.view1` (crop, rotation, flips, gain / TGC / speckle, jitter, blur) and the
    target is the same view without its photometric nuisances: a denoising autoencoder (Vincent et al. 2008) whose
    corruptions are those of ultrasound acquisition, so the code must not depend on them.
    "view": the input is the same view and the target the whole frame as acquired (only the view's flips kept,
    since a scan may be mirrored either way): the code must hold the scan's anatomy outside a zoomed-in, rotated
    crop, not the crop's pixels.
    """

    name = "autoencoder"

    def __init__(self, config, total_steps: int = 1):
        super().__init__(config, total_steps)
        self.bottleneck = self.kwargs.get("bottleneck", "map")
        self.inputs = self.kwargs.get("inputs", "randaugment")
        self.target = self.kwargs.get("target", "pixels")
        for key, value, allowed in (("bottleneck", self.bottleneck, BOTTLENECKS), ("inputs", self.inputs, INPUTS),
                                    ("target", self.target, TARGETS)):  # fmt: skip
            if value not in allowed:
                raise ValueError(f"config.method_kwargs.{key} = {value!r}: must be one of {', '.join(allowed)}")
        self.lifetime_fraction = float(self.kwargs.get("lifetime_fraction", 0.2))
        if not 0.0 < self.lifetime_fraction <= 1.0:
            raise ValueError(f"config.method_kwargs.lifetime_fraction = {self.lifetime_fraction}: must be in (0, 1]")

    def build_model(self) -> nn.Module:
        return EncoderDecoder(self.build_backbone(), self.dtype, self.bottleneck, self.lifetime_fraction)

    def augment(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(network input, clean target), normalised float [B, S, S, 3] each (see `inputs`)."""
        k, size = self.kwargs, self.config.data.image_size
        if self.inputs == "randaugment":
            clean = rand_augment_batch(
                rng, frames[:, 0], k.randaugment_ops, k.randaugment_magnitude, size,
                hflip_prob=k.hflip_prob, vflip_prob=k.vflip_prob,
            )  # fmt: skip
            return clean, clean
        view = self.config.augment.view1.to_dict()
        clean_view = {**view, **_NUISANCE_OFF}
        if self.inputs == "view":
            ratio = frames.shape[3] / frames.shape[2]  # the crop box of the whole frame, whatever its aspect
            clean_view.update(crop_scale=(1.0, 1.0), crop_ratio=(ratio, ratio), rotation_prob=0.0)
        keys = jax.random.split(rng, frames.shape[0])
        noisy = jax.vmap(lambda key, im: augment_view(key, im, view, size))(keys, frames[:, 0])
        clean = jax.vmap(lambda key, im: augment_view(key, im, clean_view, size))(keys, frames[:, 0])
        return noisy, clean

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        """(network input, reconstruction target, per-pixel loss weight or None for all pixels alike)."""
        corrupted, clean = self.augment(rng, frames)
        return corrupted.astype(self.dtype), clean, None

    def init_variables(self, rng, inputs):
        return dict(self.build_model().init(rng, inputs[0], train=True))

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del rng, step
        corrupted, target, weight = inputs
        if self.target == "patch_norm":
            target = normalize_patches(target, max(1, round(self.kwargs.patch_fraction * target.shape[1])))
        pred, model_state = apply_model(self.build_model(), params, model_state, corrupted, train=True)
        return reconstruction_loss(pred, target, weight), (model_state, extra, {})
