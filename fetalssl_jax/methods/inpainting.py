"""Inpainting autoencoder (the paper's reference): the autoencoder's model; the input has one random rectangle
erased and filled with random values (RandomErasing, p = 1); the target is the clean image.

Input transform: resize, RandAugment(1 op, magnitude 1), flips, then erasing.
"""

from __future__ import annotations

import jax

from fetalssl_jax.data.randaugment import random_erasing_batch
from fetalssl_jax.methods.autoencoder import AutoEncoder
from fetalssl_jax.methods.base import register


@register
class Inpainting(AutoEncoder):
    """`method_kwargs`: as the autoencoder, plus erase_scale and erase_ratio (torchvision RandomErasing)."""

    name = "inpainting"

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        augment_rng, erase_rng = jax.random.split(rng)
        clean = self.augment(augment_rng, frames)
        k = self.kwargs
        erased = random_erasing_batch(erase_rng, clean, scale=tuple(k.erase_scale), ratio=tuple(k.erase_ratio))
        return erased.astype(self.dtype), clean
