"""Vision Transformer backbones (Flax linen) with timm's ``VisionTransformer`` topology.

Pre-norm blocks ``x + DropPath(LayerScale(Attn(LN(x))))``, ``x + DropPath(LayerScale(MLP(LN(x))))`` with a fused
``qkv`` projection, exact GELU, LayerNorm eps 1e-6, a class token, optional register tokens (timm ``reg_tokens``)
and learned absolute position embeddings over class token, registers and patches (timm's default layout,
``no_embed_class=False``). The output is the class token after the final norm (timm ``global_pool='token'``).
Inputs are NHWC; their channel count (1 gray or 3) fixes the patch embedding's, as the ResNet's first conv.

Parameter naming maps one-to-one onto timm state-dict keys (``fetalssl_jax.models.vit_io`` converts):

    params/cls_token, reg_token, pos_embed     <-> cls_token, reg_token, pos_embed
    params/patch_embed/{kernel,bias}           <-> patch_embed.proj.{weight,bias}
    params/blocks_{i}/norm1/{scale,bias}       <-> blocks.{i}.norm1.{weight,bias}
    params/blocks_{i}/attn/{qkv,proj}/...      <-> blocks.{i}.attn.{qkv,proj}.*
    params/blocks_{i}/ls1/gamma                <-> blocks.{i}.ls1.gamma
    params/blocks_{i}/mlp/{fc1,fc2}/...        <-> blocks.{i}.mlp.{fc1,fc2}.*
    params/norm/{scale,bias}                   <-> norm.{weight,bias}
    params/mask_token [1, D]                   (DINOv2's name; no timm counterpart)

Random init as timm's default (``weight_init=''``): Linear weights normal with std 0.02 (timm's
``trunc_normal_(std=.02)`` cuts at +-2 in absolute value, 100 std, so it is a plain normal in practice), zero
biases; ``pos_embed`` normal std 0.02 likewise; ``cls_token`` and ``reg_token`` normal std 1e-6; the patch
embedding as PyTorch's Conv2d default (weight and bias uniform in +-1/sqrt(fan_in)); LayerNorm ones/zeros;
LayerScale ``gamma`` the constant ``layer_scale_init``; ``mask_token`` zeros (DINOv2, iBOT).

Stochastic depth (``drop_path_rate``, linear over depth from 0 as timm) acts when training with a ``'dropout'`` rng.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "VIT_ARCHS",
    "ViT",
    "ViTTokens",
    "create_vit",
    "resample_pos_embed",
]

Array = Any
Dtype = Any

_PARAM_DTYPE = jnp.float32  # master weights always float32; only the computation dtype varies
LAYER_NORM_EPS = 1e-6  # timm's ViT (and DINO/DINOv2): partial(nn.LayerNorm, eps=1e-6)

# (embed_dim, depth, num_heads) as timm's vit_tiny / vit_small / vit_base; MLP ratio 4 for all.
ARCH_SPECS: dict[str, tuple[int, int, int]] = {
    "vit_micro": (64, 4, 2),  # not a published size: the CPU demos (dino.py, mae.py, barlow.py:vit) and tests
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}
VIT_ARCHS: tuple[str, ...] = tuple(ARCH_SPECS)

_linear_init = nn.initializers.normal(0.02)


def _uniform(bound: float) -> nn.initializers.Initializer:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = _PARAM_DTYPE) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features: int, dtype: Dtype, name: str) -> nn.Dense:
    return nn.Dense(
        features, dtype=dtype, param_dtype=_PARAM_DTYPE, kernel_init=_linear_init, bias_init=nn.zeros, name=name
    )


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=dtype, param_dtype=_PARAM_DTYPE, name=name)


def resample_pos_embed(pos_embed: Array, new_grid: tuple[int, int], num_prefix_tokens: int) -> Array:
    """Position embeddings [1, P + g*g, D] for a square grid g resized to ``new_grid`` (h, w); the P prefix rows
    (class token, registers) unchanged. Bicubic (Keys a=-0.5, antialiased when shrinking, half-pixel centres), in
    float32: the numbers of timm's ``resample_abs_pos_embed`` (``F.interpolate(mode='bicubic', antialias=True)``)."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"position embedding of {grid.shape[1]} patches is not a square grid")
    if tuple(new_grid) == (old, old):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(old, old, dim).astype(jnp.float32)
    grid = jax.image.resize(grid, (*new_grid, dim), method="cubic", antialias=True)
    grid = grid.reshape(1, new_grid[0] * new_grid[1], dim).astype(pos_embed.dtype)
    return jnp.concatenate([prefix, grid], axis=1)


class ViTTokens(NamedTuple):
    """Final-normed tokens (float32): ``cls`` [B, D], ``registers`` [B, R, D], ``patches`` [B, N, D] (row-major
    over the patch grid; with ``keep``, the kept patches in ``keep``'s order [B, K, D])."""

    cls: Array
    registers: Array
    patches: Array


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm ``Attention``, ``qkv_bias=True``)."""

    num_heads: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, t, d = x.shape
        qkv = _dense(3 * d, self.dtype, "qkv")(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        # scale 1/sqrt(head_dim); logits and softmax in float32 (jax.nn.dot_product_attention's XLA path)
        y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return _dense(d, self.dtype, "proj")(y.reshape(b, t, d))


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma`` (CaiT, DINOv2), initialised to ``init_value``."""

    init_value: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (x.shape[-1],), _PARAM_DTYPE)
        return x * gamma.astype(self.dtype)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear (timm ``Mlp``)."""

    hidden: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.gelu(_dense(self.hidden, self.dtype, "fc1")(x), approximate=False)
        return _dense(x.shape[-1], self.dtype, "fc2")(y)


class Block(nn.Module):
    """Pre-norm transformer block (timm ``Block``); ``drop_path`` drops the residual branch per sample."""

    num_heads: int
    mlp_hidden: int
    layer_scale_init: float | None = None
    drop_path: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        # Dropout broadcast over tokens and channels == timm's DropPath (one Bernoulli per sample, scaled by 1/keep)
        # without a 'dropout' rng (an EMA teacher or target, as DINO's) the blocks are kept whole
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2), deterministic=not train or not self.has_rng("dropout"))
        y = Attention(self.num_heads, self.dtype, name="attn")(_layer_norm(self.dtype, "norm1")(x))
        x = x + drop(self._scale(y, "ls1"))
        y = Mlp(self.mlp_hidden, self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
        return x + drop(self._scale(y, "ls2"))

    def _scale(self, y: Array, name: str) -> Array:
        if self.layer_scale_init is None:
            return y
        return LayerScale(self.layer_scale_init, self.dtype, name=name)(y)


class ViT(nn.Module):
    """timm-style Vision Transformer trunk without the classifier head.

    Attributes:
        embed_dim, depth, num_heads: width, number of blocks and attention heads.
        patch_size: side of the square patches (input sides must be multiples of it).
        image_size: the input side the position embeddings are made for; other (multiple-of-patch) sizes are
            served by resampling them bicubically (`resample_pos_embed`), as timm's ``dynamic_img_size=True``.
        mlp_ratio: MLP hidden width over ``embed_dim`` (4 for every timm ViT here).
        reg_tokens: register tokens after the class token (Darcet et al. 2024; timm ``reg_tokens``).
        layer_scale_init: LayerScale init value (DINOv2: 1e-5); None = no LayerScale.
        drop_path_rate: stochastic depth of the last block; block i uses ``rate * i / (depth - 1)``.
        use_mask_token: create the learned ``mask_token`` that ``mask=`` puts in place of masked patches.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    image_size: int
    mlp_ratio: float = 4.0
    reg_tokens: int = 0
    layer_scale_init: float | None = None
    drop_path_rate: float = 0.0
    use_mask_token: bool = False
    dtype: Dtype = jnp.float32

    @property
    def num_features(self) -> int:
        """Dimension of the pooled feature vector."""
        return self.embed_dim

    @property
    def num_prefix_tokens(self) -> int:
        """Class token plus registers: the tokens before the patches."""
        return 1 + self.reg_tokens

    @nn.compact
    def __call__(
        self,
        x: Array,
        train: bool = True,
        mask: Array | None = None,
        keep: Array | None = None,
        return_tokens: bool = False,
    ) -> Array | ViTTokens:
        """Embed NHWC images ``x`` [B, H, W, C] (C = 1 or 3; H, W multiples of ``patch_size``).

        ``mask`` (bool [B, N], N = H*W / patch_size**2, row-major over the patch grid): True patches are replaced
        by ``mask_token`` before the position embedding (iBOT, DINOv2; needs ``use_mask_token``). ``keep`` (int
        [B, K]): only these patches enter the blocks, after the position embedding (MAE's visible set).
        Returns the float32 class token after the final norm [B, embed_dim], or all final-normed tokens as
        `ViTTokens` with ``return_tokens``. ``train`` turns stochastic depth on (rng ``'dropout'``).
        """
        x = self._embed(x, mask, keep)
        rates = np.linspace(0.0, self.drop_path_rate, self.depth)
        hidden = int(self.embed_dim * self.mlp_ratio)
        for i in range(self.depth):
            block = Block(
                self.num_heads, hidden, self.layer_scale_init, float(rates[i]), self.dtype, name=f"blocks_{i}"
            )
            x = block(x, train=train)
        x = _layer_norm(self.dtype, "norm")(x).astype(jnp.float32)
        if return_tokens:
            p = self.num_prefix_tokens
            return ViTTokens(x[:, 0], x[:, 1:p], x[:, p:])
        return x[:, 0]

    def _embed(self, x: Array, mask: Array | None, keep: Array | None) -> Array:
        """Patch embedding, mask token, class/register tokens and position embedding; then the kept patches."""
        b, h, w, c = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"ViT input of {h}x{w} pixels is not a multiple of the patch size {p}")
        if mask is not None and keep is not None:
            raise ValueError("give the ViT a mask (iBOT / DINOv2) or a keep index set (MAE), not both")
        if mask is not None and not self.use_mask_token:
            raise ValueError("this ViT has no mask token: build it with use_mask_token=True to pass a mask")
        fan_in = c * p * p
        x = nn.Conv(
            self.embed_dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=self.dtype,
            param_dtype=_PARAM_DTYPE,
            kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),  # +-1/sqrt(fan_in), as torch
            bias_init=_uniform(1 / math.sqrt(fan_in)),
            name="patch_embed",
        )(x.astype(self.dtype))
        grid = (h // p, w // p)
        x = x.reshape(b, grid[0] * grid[1], self.embed_dim)
        if self.use_mask_token:
            mask_token = self.param("mask_token", nn.zeros, (1, self.embed_dim), _PARAM_DTYPE)
        if mask is not None:
            x = jnp.where(mask[..., None], mask_token.astype(self.dtype), x)
        tiny_normal = nn.initializers.normal(1e-6)
        prefix = [self.param("cls_token", tiny_normal, (1, 1, self.embed_dim), _PARAM_DTYPE)]
        if self.reg_tokens:
            prefix.append(self.param("reg_token", tiny_normal, (1, self.reg_tokens, self.embed_dim), _PARAM_DTYPE))
        prefix = jnp.broadcast_to(jnp.concatenate(prefix, axis=1), (b, self.num_prefix_tokens, self.embed_dim))
        own_grid = self.image_size // p
        pos_shape = (1, self.num_prefix_tokens + own_grid * own_grid, self.embed_dim)
        pos_embed = self.param("pos_embed", _linear_init, pos_shape, _PARAM_DTYPE)
        pos_embed = resample_pos_embed(pos_embed, grid, self.num_prefix_tokens)
        x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1) + pos_embed.astype(self.dtype)
        if keep is not None:
            patches = jnp.take_along_axis(x[:, self.num_prefix_tokens :], keep[..., None], axis=1)
            x = jnp.concatenate([x[:, : self.num_prefix_tokens], patches], axis=1)
        return x


def create_vit(
    arch: str,
    patch_size: int = 16,
    image_size: int = 224,
    dtype: str | jnp.dtype = "float32",
    reg_tokens: int = 0,
    layer_scale_init: float | None = None,
    drop_path_rate: float = 0.0,
    use_mask_token: bool = False,
) -> ViT:
    """Build one of ``VIT_ARCHS`` (timm's widths, depths and heads) for ``image_size`` inputs in ``patch_size``
    patches (e.g. 8 at 64 px, 16 at 224 px).

    Raises:
        ValueError: unknown ``arch``, or an ``image_size`` that is not a positive multiple of ``patch_size``.
    """
    if arch not in ARCH_SPECS:
        raise ValueError(f"Unknown ViT arch {arch!r}; valid choices: {', '.join(VIT_ARCHS)}")
    if patch_size < 1 or image_size < patch_size or image_size % patch_size:
        raise ValueError(f"ViT image_size {image_size} must be a positive multiple of patch_size {patch_size}")
    if reg_tokens < 0 or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"ViT reg_tokens {reg_tokens} must be >= 0 and drop_path_rate {drop_path_rate} in [0, 1)")
    embed_dim, depth, num_heads = ARCH_SPECS[arch]
    return ViT(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        patch_size=patch_size,
        image_size=image_size,
        reg_tokens=reg_tokens,
        layer_scale_init=layer_scale_init,
        drop_path_rate=drop_path_rate,
        use_mask_token=use_mask_token,
        dtype=jnp.dtype(dtype),
    )
