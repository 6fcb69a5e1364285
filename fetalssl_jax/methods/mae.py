"""Masked autoencoder (He et al. 2022) with the project's ViT as the encoder.

One view per frame (`config.augment.view1`). Per sample, a fraction `mask_ratio` of its N patches is hidden: the
patches are shuffled by the argsort of uniform noise, the first K = int(N * (1 - mask_ratio)) are kept (the
reference's `random_masking`; K is static, so every shape is). The encoder (the `backbone`, which evaluation and
export read) sees the class token, any registers and the K visible patches only (`ViT(keep=...)`, after the position
embedding); a light decoder (`models.mae_decoder.MAEDecoder`, its own width, depth and heads) puts mask tokens in
place of the hidden patches and predicts every patch's pixels. The loss (`mae_loss`) is the mean squared error on
the hidden patches only, against each patch standardised by its own mean and variance (`norm_pix`) or the pixels.

`method_kwargs`: mask_ratio, decoder_width, decoder_depth, decoder_heads, norm_pix.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import augment_batch
from fetalssl_jax.methods.base import Method, apply_model, register
from fetalssl_jax.methods.mae_loss import mae_loss
from fetalssl_jax.models.backbone import ARCHS, is_vit
from fetalssl_jax.models.mae_decoder import MAEDecoder
from fetalssl_jax.models.patches import patchify
from fetalssl_jax.models.vit import VIT_ARCHS
from fetalssl_jax.validation import is_int, is_number


def num_visible(num_patches: int, mask_ratio: float) -> int:
    """K: the patches the encoder sees, int(N * (1 - mask_ratio)) as the reference."""
    return int(num_patches * (1 - mask_ratio))


def random_masking(key: jax.Array, batch: int, num_patches: int, mask_ratio: float) -> dict[str, jax.Array]:
    """Per-sample random masking by shuffling: noise U[0, 1) [batch, N], ids_shuffle = argsort(noise) (small noise
    is kept), ids_restore = argsort(ids_shuffle); `keep` the first K of ids_shuffle; `mask` 1 where a patch's place
    in the shuffle is K or later.

    Returns {'keep': int32 [batch, K], the grid indices of the visible patches in shuffled order; 'mask': float32
    [batch, N], 1 hidden, 0 visible; 'ids_restore': int32 [batch, N], each grid patch's place in the shuffle}."""
    k = num_visible(num_patches, mask_ratio)
    noise = jax.random.uniform(key, (batch, num_patches), jnp.float32)
    ids_shuffle = jnp.argsort(noise, axis=1).astype(jnp.int32)
    ids_restore = jnp.argsort(ids_shuffle, axis=1).astype(jnp.int32)
    mask = (ids_restore >= k).astype(jnp.float32)
    return {"keep": ids_shuffle[:, :k], "mask": mask, "ids_restore": ids_restore}


class MaskedAutoencoder(nn.Module):
    """backbone (a ViT) on the visible patches -> `MAEDecoder` -> predicted patches [B, N, p * p * C] (float32)."""

    backbone: nn.Module
    decoder_width: int
    decoder_depth: int
    decoder_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, keep: jax.Array, ids_restore: jax.Array, train: bool = True) -> jax.Array:
        p = self.backbone.patch_size
        grid = (images.shape[1] // p, images.shape[2] // p)
        tokens = self.backbone(images, train=train, keep=keep, return_tokens=True)
        prefix = jnp.concatenate([tokens.cls[:, None], tokens.registers], axis=1)
        decoder = MAEDecoder(
            self.decoder_width, self.decoder_depth, self.decoder_heads, p * p * images.shape[-1], grid,
            dtype=self.dtype, name="decoder",
        )  # fmt: skip
        return decoder(prefix, tokens.patches, ids_restore, train=train)


@register
class MAE(Method):
    """MAE; `method_kwargs`: mask_ratio (fraction of patches hidden), decoder_width / decoder_depth /
    decoder_heads (the decoder's transformer), norm_pix (targets standardised per patch)."""

    name = "mae"

    @classmethod
    def check_config(cls, c):
        arch = c.get("model.arch")
        if arch in ARCHS and not is_vit(arch):
            c.fail("model.arch", arch, f"{cls.name} hides a ViT's patches from its encoder; use a ViT ("
                   f"{', '.join(VIT_ARCHS)}; configs/mae.py's presets); for a ResNet: configs/autoencoder.py or "
                   "configs/inpainting.py")  # fmt: skip
        ratio = c.get("method_kwargs.mask_ratio")
        if not (is_number(ratio) and 0 < ratio < 1):
            c.fail("method_kwargs.mask_ratio", ratio, "must be a fraction in (0, 1) of the patches to hide")
        elif is_vit(arch):
            cls._check_visible(c, ratio)
        for key in ("decoder_width", "decoder_depth", "decoder_heads"):
            c.integer(f"method_kwargs.{key}")
        width, heads = c.get("method_kwargs.decoder_width"), c.get("method_kwargs.decoder_heads")
        if is_int(width) and width > 0 and width % 4:
            c.fail("method_kwargs.decoder_width", width, "must be a multiple of 4 (its 2D sin-cos position embedding)")
        elif is_int(width) and is_int(heads) and width > 0 and heads > 0 and width % heads:
            c.fail("method_kwargs.decoder_heads", heads, f"must divide method_kwargs.decoder_width = {width}")
        c.boolean("method_kwargs.norm_pix")

    @classmethod
    def _check_visible(cls, c, ratio: float) -> None:
        """The encoder must see at least one patch and the loss must have at least one hidden patch."""
        size, patch = c.get("data.image_size"), c.get("model.patch_size")
        if not (is_int(size) and is_int(patch) and 0 < patch <= size and size % patch == 0):
            return  # the backbone's checks report these
        n = (size // patch) ** 2
        k = num_visible(n, ratio)
        if not 0 < k < n:
            c.fail("method_kwargs.mask_ratio", ratio, f"leaves {k} of the {n} patches of a {size} px input in "
                   f"{patch} px patches visible; at least one must be visible and one hidden")  # fmt: skip

    def build_model(self) -> nn.Module:
        k = self.kwargs
        return MaskedAutoencoder(
            self.build_backbone(), int(k.decoder_width), int(k.decoder_depth), int(k.decoder_heads), self.dtype
        )

    @property
    def num_patches(self) -> int:
        return (self.config.data.image_size // self.config.model.patch_size) ** 2

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> dict[str, jax.Array]:
        """{'images': the view, float [B, S, S, 3]; 'target': its patches [B, N, p * p * 3] (`patchify`); 'keep',
        'mask', 'ids_restore': its `random_masking`}."""
        view_rng, mask_rng = jax.random.split(rng)
        size = self.config.data.image_size
        images = augment_batch(view_rng, frames[:, 0], self.config.augment.view1.to_dict(), size)
        masking = random_masking(mask_rng, images.shape[0], self.num_patches, float(self.kwargs.mask_ratio))
        target = patchify(images, self.config.model.patch_size)
        return {"images": images.astype(self.dtype), "target": target, **masking}

    def init_variables(self, rng, inputs):
        model = self.build_model()
        return dict(model.init(rng, inputs["images"], inputs["keep"], inputs["ids_restore"]))

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del step
        pred, model_state = apply_model(
            self.build_model(), params, model_state, inputs["images"], inputs["keep"], inputs["ids_restore"],
            train=True, rng=rng,
        )  # fmt: skip
        loss = mae_loss(pred, inputs["target"], inputs["mask"], bool(self.kwargs.norm_pix))
        return loss, (model_state, extra, {})


def default_kwargs(
    mask_ratio: float = 0.75,
    decoder_width: int = 512,
    decoder_depth: int = 8,
    decoder_heads: int = 16,
    norm_pix: bool = True,
) -> dict:
    """`method_kwargs` of the reference (ViT-B/16's decoder: 512 wide, 8 blocks, 16 heads; 75 % hidden; normalised
    pixel targets)."""
    return {
        "mask_ratio": mask_ratio,
        "decoder_width": decoder_width,
        "decoder_depth": decoder_depth,
        "decoder_heads": decoder_heads,
        "norm_pix": norm_pix,
    }
