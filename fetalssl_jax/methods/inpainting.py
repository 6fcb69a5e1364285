"""Inpainting autoencoder: the autoencoder's model; part of the input is erased and filled with N(0, 1) values and
the target is the clean image. `erase` "rectangle" is the paper's reference (torchvision's RandomErasing, p = 1);
"outside" erases all but one box (the CPU presets, configs/inpainting.py).

Input transform: resize, RandAugment(1 op, magnitude 1), flips, then erasing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import BOX_UNIFORMS, random_box
from fetalssl_jax.methods.autoencoder import AutoEncoder
from fetalssl_jax.methods.base import register
from fetalssl_jax.validation import is_number

ERASE_MODES = ("rectangle", "outside")


def erase_box_mask(
    key: jax.Array, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """bool [height, width]: True inside the box of torchvision's `RandomErasing.get_params` (area a fraction `scale`
    of the image, aspect h / w in `ratio`); all False when none of its 10 tries fits."""
    u = jax.random.uniform(key, (BOX_UNIFORMS,), jnp.float32)
    top, left, h, w, found = random_box(u, height, width, scale, ratio, erase=True)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    return found & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def random_erasing(
    key: jax.Array, images: jax.Array, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """torchvision's `RandomErasing(p=1, value="random")` on every image of [B, H, W, C] (per-sample keys from
    `jax.random.split(key, B)`): one box (`erase_box_mask`) filled with standard normal noise."""

    def one(k: jax.Array, image: jax.Array) -> jax.Array:
        k_box, k_noise = jax.random.split(k)
        mask = erase_box_mask(k_box, image.shape[0], image.shape[1], scale, ratio)
        return jnp.where(mask[..., None], jax.random.normal(k_noise, image.shape, image.dtype), image)

    return jax.vmap(one)(jax.random.split(key, images.shape[0]), images)


def outside_box_mask(
    key: jax.Array, batch: int, size: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """float32 [batch, size, size, 1]: 0 inside one `erase_box_mask` box per sample, 1 outside it."""
    inside = jax.vmap(lambda k: erase_box_mask(k, size, size, scale, ratio))(jax.random.split(key, batch))
    return (1.0 - inside.astype(jnp.float32))[..., None]


@register
class Inpainting(AutoEncoder):
    """`method_kwargs`: as the autoencoder, plus `erase`: "rectangle" (one RandomErasing rectangle, `erase_scale`,
    `erase_ratio`; loss on every pixel) or "outside" (everything but one box of `keep_scale` of the image, aspect
    `erase_ratio`, is erased: the network sees one part of the scan and draws the rest; loss on the erased pixels
    only)."""

    name = "inpainting"

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        c.one_of("method_kwargs.erase", ERASE_MODES)
        for key in ("erase_scale", "erase_ratio", "keep_scale"):
            value = c.get(f"method_kwargs.{key}")
            if not (isinstance(value, (tuple, list)) and len(value) == 2 and all(is_number(v) and v > 0 for v in value)
                    and value[0] <= value[1]):  # fmt: skip
                c.fail(f"method_kwargs.{key}", value, "must be (low, high) with 0 < low <= high")

    def __init__(self, config, total_steps: int = 1):
        super().__init__(config, total_steps)
        self.erase = self.kwargs.erase

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        augment_rng, erase_rng = jax.random.split(rng)
        clean = self.augment(augment_rng, frames)
        k = self.kwargs
        if self.erase == "rectangle":
            erased = random_erasing(erase_rng, clean, tuple(k.erase_scale), tuple(k.erase_ratio))
            return erased.astype(self.dtype), clean, None
        mask_rng, fill_rng = jax.random.split(erase_rng)
        mask = outside_box_mask(mask_rng, clean.shape[0], clean.shape[1], tuple(k.keep_scale), tuple(k.erase_ratio))
        fill = jax.random.normal(fill_rng, clean.shape, clean.dtype)
        erased = mask * fill + (1.0 - mask) * clean
        return erased.astype(self.dtype), clean, mask
