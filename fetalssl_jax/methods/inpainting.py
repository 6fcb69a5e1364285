"""Inpainting autoencoder: the autoencoder's model; part of the input is erased and filled with random values and the
target is the clean image. The paper's reference erases one random rectangle (RandomErasing, p = 1); `erase` also
offers a masked-autoencoder grid and "outside" (all but one box erased; the CPU presets, configs/inpainting.py).

Input transform: resize, RandAugment(1 op, magnitude 1), flips, then erasing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fetalssl_jax.data.randaugment import random_erasing_batch, sample_erase_box
from fetalssl_jax.methods.autoencoder import AutoEncoder
from fetalssl_jax.methods.base import register

ERASE_MODES = ("rectangle", "patches", "outside")


def patch_mask(key: jax.Array, batch: int, size: int, patch: int, ratio: float) -> jax.Array:
    """float32 [batch, size, size, 1]: 1 on erased pixels. The image is cut into a grid of `patch` x `patch`
    squares (the last row/column may be cut short) and exactly round(ratio * cells) of them, drawn uniformly
    per sample, are erased."""
    grid = -(-size // patch)
    cells = grid * grid
    count = min(cells, max(1, round(ratio * cells)))
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, cells)), axis=1), axis=1)
    erased = (ranks < count).astype(jnp.float32).reshape(batch, grid, grid)
    pixels = jnp.repeat(jnp.repeat(erased, patch, axis=1), patch, axis=2)[:, :size, :size]
    return pixels[..., None]


def outside_box_mask(
    key: jax.Array, batch: int, size: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> jax.Array:
    """float32 [batch, size, size, 1]: 1 outside one random box per sample (area a fraction `scale` of the image,
    aspect `ratio`, drawn as RandomErasing draws its box), 0 inside it."""
    rows, cols = jnp.arange(size)[:, None], jnp.arange(size)[None, :]

    def one(k: jax.Array) -> jax.Array:
        top, left, h, w, found = sample_erase_box(k, size, size, scale, ratio)
        inside = found & (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
        return 1.0 - inside.astype(jnp.float32)

    return jax.vmap(one)(jax.random.split(key, batch))[..., None]


@register
class Inpainting(AutoEncoder):
    """`method_kwargs`: as the autoencoder, plus `erase`: "rectangle" (the reference: one RandomErasing rectangle,
    `erase_scale`, `erase_ratio`; loss on every pixel) or "patches" (a fraction `mask_ratio` of a grid of squares
    of side `patch_fraction` x image size, filled with N(0, 1) as RandomErasing fills; loss on the erased pixels
    only, as masked autoencoders) or "outside" (everything but one box of `keep_scale` of the image, aspect
    `erase_ratio`, is erased: the network sees one part of the scan and draws the rest; loss on the erased
    pixels only)."""

    name = "inpainting"

    def __init__(self, config, total_steps: int = 1):
        super().__init__(config, total_steps)
        self.erase = self.kwargs.get("erase", "rectangle")
        if self.erase not in ERASE_MODES:
            raise ValueError(f"config.method_kwargs.erase = {self.erase!r}: must be one of {', '.join(ERASE_MODES)}")

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array | None]:
        augment_rng, erase_rng = jax.random.split(rng)
        corrupted, clean = self.augment(augment_rng, frames)
        k = self.kwargs
        if self.erase == "rectangle":
            erased = random_erasing_batch(erase_rng, corrupted, scale=tuple(k.erase_scale), ratio=tuple(k.erase_ratio))
            return erased.astype(self.dtype), clean, None
        mask_rng, fill_rng = jax.random.split(erase_rng)
        b, size = clean.shape[0], clean.shape[1]
        if self.erase == "outside":
            mask = outside_box_mask(mask_rng, b, size, tuple(k.keep_scale), tuple(k.erase_ratio))
        else:
            mask = patch_mask(mask_rng, b, size, max(1, round(k.patch_fraction * size)), k.mask_ratio)
        fill = jax.random.normal(fill_rng, clean.shape, clean.dtype)
        erased = mask * fill + (1.0 - mask) * corrupted
        return erased.astype(self.dtype), clean, mask
