"""MAE's light decoder (He et al. 2022): the encoder's tokens of the visible patches, mask tokens in place of the
hidden ones, back in grid order, through a few transformer blocks of their own width to the pixels of every patch.

    encoder tokens [B, P + K, D] -> Linear(D, d) -> + mask tokens, unshuffled to [B, P + N, d] -> + fixed 2D
    sin-cos position embedding (zero on the P prefix tokens) -> `depth` x vit.Block -> LayerNorm -> Linear(d, p*p*C)

P prefix tokens (class token, registers) are kept through the blocks and dropped at the end, as the reference keeps
its class token. The blocks are the ViT's own (`models.vit.Block`). Linear layers are initialised as the ViT's
(normal, std 0.02, zero bias), the mask token normal with std 0.02 (the reference).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from fetalssl_jax.models.vit import LAYER_NORM_EPS, Block

__all__ = ["MAEDecoder", "sincos_pos_embed_2d"]

Array = Any
_PARAM_DTYPE = jnp.float32
_linear_init = nn.initializers.normal(0.02)


def sincos_pos_embed_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
    """Fixed position embedding [gh * gw, dim] (float32) of a patch grid, row-major: the first dim/2 channels encode
    the patch's column, the last dim/2 its row, each as [sin(pos * w_k), cos(pos * w_k)] with
    w_k = 10000^(-k / (dim/4)), k < dim/4 (the MAE reference's `get_2d_sincos_pos_embed`). `dim` must be a multiple
    of 4."""
    if dim % 4:
        raise ValueError(f"a 2D sin-cos position embedding needs a width that is a multiple of 4, got {dim}")
    omega = 1.0 / 10000.0 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")

    def one_axis(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1, 1).astype(np.float64) * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(cols), one_axis(rows)], axis=1).astype(np.float32)


class MAEDecoder(nn.Module):
    """The decoder of a masked autoencoder.

    Attributes:
        width, depth, num_heads: the decoder's own transformer (e.g. 512, 8, 16 for the reference's ViT-B).
        patch_values: values predicted per patch, p * p * C.
        grid: the patch grid (rows, columns) of the input; N = rows * columns.
        mlp_ratio: the blocks' MLP width over `width`.
        dtype: computation dtype; parameters are float32 and the prediction is float32.
    """

    width: int
    depth: int
    num_heads: int
    patch_values: int
    grid: tuple[int, int]
    mlp_ratio: float = 4.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, prefix: Array, visible: Array, ids_restore: Array, train: bool = True) -> Array:
        """Predicted patches [B, N, patch_values] from the encoder's `prefix` tokens [B, P, D] and `visible` patch
        tokens [B, K, D] (in the order of `ids_restore`'s shuffle: visible first), where `ids_restore` [B, N] gives,
        for each patch of the grid, its position in that shuffled sequence (the argsort of the shuffle)."""
        b, num_prefix = prefix.shape[0], prefix.shape[1]
        n = self.grid[0] * self.grid[1]
        x = self._dense(self.width, "decoder_embed")(jnp.concatenate([prefix, visible], axis=1).astype(self.dtype))
        mask_token = self.param("mask_token", _linear_init, (1, 1, self.width), _PARAM_DTYPE)
        hidden = jnp.broadcast_to(mask_token.astype(self.dtype), (b, n - visible.shape[1], self.width))
        patches = jnp.concatenate([x[:, num_prefix:], hidden], axis=1)
        patches = jnp.take_along_axis(patches, ids_restore[..., None], axis=1)  # back to grid order
        patches = patches + jnp.asarray(sincos_pos_embed_2d(self.width, self.grid), self.dtype)[None]
        x = jnp.concatenate([x[:, :num_prefix], patches], axis=1)
        hidden_width = int(self.width * self.mlp_ratio)
        for i in range(self.depth):
            x = Block(self.num_heads, hidden_width, dtype=self.dtype, name=f"decoder_blocks_{i}")(x, train=train)
        x = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, param_dtype=_PARAM_DTYPE, name="decoder_norm")(x)
        pred = self._dense(self.patch_values, "decoder_pred")(x[:, num_prefix:])
        return pred.astype(jnp.float32)

    def _dense(self, features: int, name: str) -> nn.Dense:
        return nn.Dense(features, dtype=self.dtype, param_dtype=_PARAM_DTYPE, kernel_init=_linear_init,
                        bias_init=nn.zeros, name=name)  # fmt: skip
