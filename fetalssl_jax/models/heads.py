"""Projection heads shared by the joint-embedding methods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
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
