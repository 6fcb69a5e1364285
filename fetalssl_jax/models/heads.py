"""Projection heads: the joint-embedding methods' MLP heads and the self-distillation head (DINO, iBOT)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
    """Linear -> BN -> ReLU for every hidden size, then a final Linear (no BN, no ReLU).

    Barlow Twins and VICReg use `use_bias=False` and sizes (8192, 8192, 8192); SimCLR (512, 128); BYOL (1024, 256).
    BatchNorm momentum 0.9 and epsilon 1e-5 as PyTorch's defaults.
    """

    sizes: Sequence[int]
    use_bias: bool = False
    use_bn: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        for i, size in enumerate(self.sizes[:-1]):
            x = nn.Dense(size, use_bias=self.use_bias, dtype=self.dtype, name=f"linear{i}")(x)
            if self.use_bn:
                x = nn.BatchNorm(
                    use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=f"bn{i}"
                )(x)
            x = nn.relu(x)
        x = nn.Dense(self.sizes[-1], use_bias=self.use_bias, dtype=self.dtype, name=f"linear{len(self.sizes) - 1}")(x)
        return x.astype(jnp.float32)


class TwoViewEmbedder(nn.Module):
    """Shared backbone and head applied to each view separately: per-view BatchNorm statistics, as the references
    (Barlow Twins, VICReg, SimCLR) do."""

    backbone: nn.Module
    head_sizes: Sequence[int]
    head_bias: bool = False
    dtype: Any = jnp.float32

    def setup(self):
        self.projector = MLPHead(self.head_sizes, use_bias=self.head_bias, dtype=self.dtype)

    def embed(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        return self.projector(self.backbone(x, train=train), train=train)

    def __call__(self, views: tuple[jnp.ndarray, jnp.ndarray], train: bool = True) -> tuple[jnp.ndarray, jnp.ndarray]:
        x1, x2 = views
        return self.embed(x1, train), self.embed(x2, train)


class WeightNormDense(nn.Module):
    """Linear without bias whose weight is weight-normalised per output unit (torch `weight_norm(Linear)`, dim 0):
    each output's weight vector is `kernel[:, j] / ||kernel[:, j]||`, times a learned length `scale` [1, out]
    (initialised to 1) unless `fixed_norm`. The direction is initialised as PyTorch's Linear (uniform in
    +-1/sqrt(in)). float32 inside."""

    features: int
    fixed_norm: bool = True

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        fan_in = x.shape[-1]
        bound = 1.0 / fan_in**0.5
        uniform = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)  # noqa: E731
        kernel = self.param("kernel", uniform, (fan_in, self.features))
        kernel = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
        if not self.fixed_norm:
            kernel = kernel * self.param("scale", nn.initializers.ones, (1, self.features))
        return jnp.asarray(x, jnp.float32) @ kernel


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021; DINOv2 and iBOT use the same): `layers - 1` times Linear -> exact
    GELU to `hidden` units, a Linear to `bottleneck`, the bottleneck L2-normalised, then a weight-normalised Linear
    without bias to `out_dim` prototypes (`last_layer`; its norm fixed to 1 with `norm_last_layer`, the reference's
    default). MLP weights normal(0.02) and zero biases (the reference's trunc_normal(std=.02), cut at +-2: a plain
    normal in practice); with `use_bn` a BatchNorm after each hidden Linear (the reference's use_bn_in_head, PyTorch's
    momentum and epsilon). Returns float32 logits [..., out_dim]."""

    out_dim: int
    hidden: int = 2048
    bottleneck: int = 256
    layers: int = 3
    norm_last_layer: bool = True
    use_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        sizes = [self.hidden] * (self.layers - 1) + [self.bottleneck]
        x = x.astype(self.dtype)
        for i, size in enumerate(sizes):
            x = nn.Dense(size, dtype=self.dtype, kernel_init=nn.initializers.normal(0.02), name=f"linear{i}")(x)
            if i < len(sizes) - 1:
                if self.use_bn:
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                     name=f"bn{i}")(x)  # fmt: skip
                x = nn.gelu(x, approximate=False)
        x = x.astype(jnp.float32)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)  # torch F.normalize
        return WeightNormDense(self.out_dim, self.norm_last_layer, name="last_layer")(x)
