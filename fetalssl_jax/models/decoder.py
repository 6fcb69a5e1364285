"""A ResNet decoder that mirrors the encoder with transposed-convolution residual blocks (the paper's autoencoders).

The encoder's layer4 map (stride 32) is brought back to the input size: one decoder stage per encoder stage in
reverse order, each upsampling x2 (except the mirror of layer1, which the encoder did not downsample), then the
mirror of the stem (maxpool and the stride-2 7x7 conv: two x2 upsamplings) and a 3x3 conv to 3 channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class TransposedBlock(nn.Module):
    """BasicBlock with a 3x3 transposed conv (stride 2 to upsample) in place of the first conv."""

    features: int
    upsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        norm = lambda name, **kw: nn.BatchNorm(  # noqa: E731
            use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype, name=name, **kw
        )
        strides = (2, 2) if self.upsample else (1, 1)
        y = nn.ConvTranspose(self.features, (3, 3), strides, padding="SAME", use_bias=False, dtype=self.dtype,
                             name="deconv1")(x)  # fmt: skip
        y = nn.relu(norm("bn1")(y))
        y = nn.Conv(self.features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = norm("bn2", scale_init=nn.initializers.zeros)(y)  # zero-init residual, as the encoder
        shortcut = x
        if self.upsample or x.shape[-1] != self.features:
            shortcut = nn.ConvTranspose(self.features, (1, 1), strides, padding="SAME", use_bias=False,
                                        dtype=self.dtype, name="shortcut_deconv")(x)  # fmt: skip
            shortcut = norm("shortcut_bn")(shortcut)
        return nn.relu(y + shortcut)


class ResNetDecoder(nn.Module):
    """Mirror of a ResNet: `stage_channels` are the encoder's stage output channels (layer1..layer4)."""

    stage_channels: Sequence[int]
    stage_sizes: Sequence[int]
    stem_channels: int
    out_channels: int = 3
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = True) -> jnp.ndarray:
        # decoder stage i mirrors encoder stage (n-1-i) and outputs the channels of the stage before it
        targets = list(self.stage_channels[:-1])[::-1] + [self.stem_channels]
        n = len(self.stage_channels)
        for i, (channels, blocks) in enumerate(zip(targets, list(self.stage_sizes)[::-1], strict=True)):
            upsample = i < n - 1  # layer1 did not downsample
            for j in range(blocks):
                last = j == blocks - 1
                x = TransposedBlock(channels if last else x.shape[-1], upsample and last, self.dtype,
                                    name=f"layer{n - i}_{j}")(x, train)  # fmt: skip
        for k in range(2):  # mirror of the stem's maxpool and stride-2 conv
            x = TransposedBlock(self.stem_channels, True, self.dtype, name=f"stem_{k}")(x, train)
        x = nn.Conv(self.out_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="to_image")(x)
        return x.astype(jnp.float32)
