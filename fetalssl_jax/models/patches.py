"""Images <-> sequences of non-overlapping square patches (MAE's targets, a ViT's token grid)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["patchify", "unpatchify"]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """NHWC images [B, H, W, C] -> patches [B, (H/p) * (W/p), p * p * C], row-major over the patch grid, each patch
    flattened (row, column, channel): MAE's order, and that of a ViT patch-embedding kernel [p, p, C, D] reshaped
    to [p * p * C, D]."""
    b, h, w, c = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"images of {h}x{w} pixels are not a multiple of the patch size {p}")
    x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: jax.Array, patch_size: int, grid: tuple[int, int] | None = None) -> jax.Array:
    """The inverse of `patchify`: [B, N, p * p * C] -> [B, gh * p, gw * p, C]; ``grid`` (gh, gw) defaults to square."""
    b, n, d = patches.shape
    p = patch_size
    gh, gw = grid if grid is not None else (math.isqrt(n), math.isqrt(n))
    if gh * gw != n or d % (p * p):
        raise ValueError(f"{n} patches of {d} values do not form a {gh}x{gw} grid of {p}x{p} patches")
    c = d // (p * p)
    x = jnp.reshape(patches, (b, gh, gw, p, p, c)).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * p, gw * p, c)
