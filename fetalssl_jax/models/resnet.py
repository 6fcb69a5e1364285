"""ResNet-18/34/50/101/152 backbones (Flax linen) with torchvision's topology.

The networks follow ``torchvision.models.resnet`` exactly (Bottleneck "v1.5": the stride sits on the
3x3 conv), minus the classifier head: the output is the globally average-pooled layer4 feature
vector, as used by the self-supervised methods. Inputs are NHWC.

Parameter naming maps one-to-one onto torchvision state-dict keys (for a checkpoint converter):

    params/conv1/kernel                        <-> conv1.weight
    params/bn1/{scale,bias}                    <-> bn1.{weight,bias}
    batch_stats/bn1/{mean,var}                 <-> bn1.{running_mean,running_var}
    params/layer{i}_{j}/conv{k}/kernel         <-> layer{i}.{j}.conv{k}.weight
    .../layer{i}_{j}/bn{k}/...                 <-> layer{i}.{j}.bn{k}.*
    params/layer{i}_{j}/downsample_conv/kernel <-> layer{i}.{j}.downsample.0.weight
    .../layer{i}_{j}/downsample_bn/...         <-> layer{i}.{j}.downsample.1.*

(``i`` = 1..4 is the stage, ``j`` = 0.. the block within it, both as in torchvision.)

Conversion notes: Flax conv kernels are ``[kh, kw, in, out]`` while torch weights are
``[out, in, kh, kw]`` (transpose ``(2, 3, 1, 0)``); BN ``scale`` is torch ``weight``; torch's
``num_batches_tracked`` and ``fc.*`` have no counterpart.

BatchNorm matches PyTorch's defaults (``momentum=0.9`` in Flax terms == 0.1 in PyTorch,
``epsilon=1e-5``) with one small difference: Flax updates the running variance with the biased batch
variance, PyTorch with the unbiased one (factor ``n / (n - 1)``, negligible for real batch sizes).
No ``axis_name`` is used: under ``jax.jit`` over a sharded global batch the statistics are already
computed over the global batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fetalssl_jax.models.conv import CONV_IMPLS, make_conv_general_dilated
from fetalssl_jax.models.pool import max_pool

__all__ = [
    "RESNET_ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "create_resnet",
]

Array = Any
Dtype = Any

# torchvision initialises convs with kaiming_normal_(mode="fan_out", nonlinearity="relu"), i.e. a
# plain (untruncated) normal with std sqrt(2 / (out_channels * kh * kw)).
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

_PARAM_DTYPE = jnp.float32  # master weights always float32; only the computation dtype varies


def _conv(
    features: int, kernel: int, strides: int, padding: int, dtype: Dtype, name: str, conv_impl: str = "auto"
) -> nn.Conv:
    # Explicit symmetric padding (not "SAME"): "SAME" pads (0, 1) for stride 2 on even sizes,
    # which would shift every feature map relative to PyTorch.
    # `conv_impl` only swaps the function that computes the convolution (see models/conv.py): the module, its
    # `kernel` parameter and its initialisation are those of a plain nn.Conv.
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        kernel_init=conv_kernel_init,
        dtype=dtype,
        param_dtype=_PARAM_DTYPE,
        conv_general_dilated=make_conv_general_dilated(conv_impl),
        name=name,
    )


def _bn(train: bool, dtype: Dtype, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,  # == PyTorch momentum 0.1
        epsilon=1e-5,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        param_dtype=_PARAM_DTYPE,
        name=name,
    )


def _downsample(x: Array, out_features: int, strides: int, train: bool, dtype: Dtype, conv_impl: str) -> Array:
    """Projection shortcut, only where the identity would not fit (as torchvision)."""
    if strides != 1 or x.shape[-1] != out_features:
        x = _conv(out_features, 1, strides, 0, dtype, "downsample_conv", conv_impl)(x)
        x = _bn(train, dtype, "downsample_bn")(x)
    return x


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    features: int
    strides: int = 1
    zero_init_residual: bool = True
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        identity = _downsample(x, self.features * self.expansion, self.strides, train, self.dtype, self.conv_impl)
        y = _conv(self.features, 3, self.strides, 1, self.dtype, "conv1", self.conv_impl)(x)
        y = nn.relu(_bn(train, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, 1, 1, self.dtype, "conv2", self.conv_impl)(y)
        # Zero-initialised last BN makes each block start as the identity (Goyal et al. 2017).
        y = _bn(train, self.dtype, "bn2", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, "v1.5") -> 1x1 bottleneck with expansion 4 (ResNet-50/101/152)."""

    features: int
    strides: int = 1
    zero_init_residual: bool = True
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: Array, train: bool = True) -> Array:
        out_features = self.features * self.expansion
        identity = _downsample(x, out_features, self.strides, train, self.dtype, self.conv_impl)
        y = _conv(self.features, 1, 1, 0, self.dtype, "conv1", self.conv_impl)(x)
        y = nn.relu(_bn(train, self.dtype, "bn1")(y))
        y = _conv(self.features, 3, self.strides, 1, self.dtype, "conv2", self.conv_impl)(y)
        y = nn.relu(_bn(train, self.dtype, "bn2")(y))
        y = _conv(out_features, 1, 1, 0, self.dtype, "conv3", self.conv_impl)(y)
        y = _bn(train, self.dtype, "bn3", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + identity)


class ResNet(nn.Module):
    """torchvision-style ResNet trunk without the classifier head.

    Attributes:
        stage_sizes: number of blocks in layer1..layer4 (any length >= 1 works, for tiny tests).
        block_cls: ``BasicBlock`` or ``Bottleneck``.
        width: channels of the stem and layer1 (torchvision: 64); stage i uses ``width * 2**i``.
        zero_init_residual: zero-init the scale of the last BN of each block.
        dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters are always float32.
        conv_impl: how convolutions are computed: 'auto' (matrix products on the CPU backend, XLA's native
            convolution elsewhere), 'native' or 'cpu_matmul' (see ``fetalssl_jax.models.conv``). Same results and
            parameters either way.
    """

    stage_sizes: Sequence[int]
    block_cls: type[nn.Module]
    width: int = 64
    zero_init_residual: bool = True
    dtype: Dtype = jnp.float32
    conv_impl: str = "auto"

    @property
    def num_features(self) -> int:
        """Dimension of the pooled feature vector."""
        return self.width * 2 ** (len(self.stage_sizes) - 1) * self.block_cls.expansion

    @nn.compact
    def __call__(self, x: Array, train: bool = True, return_map: bool = False) -> Array | tuple[Array, Array]:
        """Embed NHWC images ``x`` [B, H, W, 3].

        Returns float32 pooled features [B, num_features], or ``(pooled, map)`` when ``return_map``
        where ``map`` is the float32 layer4 output [B, h, w, num_features] before pooling.
        ``train`` selects batch statistics (and requires ``mutable=["batch_stats"]``) vs running
        averages.
        """
        x = _conv(self.width, 7, 2, 3, self.dtype, "conv1", self.conv_impl)(x)
        x = nn.relu(_bn(train, self.dtype, "bn1")(x))
        # Padded with -inf, as PyTorch does; on CPU with a faster gradient (models/pool.py).
        x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), conv_impl=self.conv_impl)
        # No-op unless the caller makes "intermediates" mutable; lets tests/debugging see the stem.
        self.sow("intermediates", "stem", x)
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                x = self.block_cls(
                    features=self.width * 2**i,
                    strides=2 if (i > 0 and j == 0) else 1,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    conv_impl=self.conv_impl,
                    name=f"layer{i + 1}_{j}",
                )(x, train=train)
        feature_map = x.astype(jnp.float32)
        pooled = jnp.mean(feature_map, axis=(1, 2))
        if return_map:
            return pooled, feature_map
        return pooled


ARCH_SPECS: dict[str, tuple[tuple[int, ...], type[nn.Module]]] = {
    # resnet10: one BasicBlock per stage, not a torchvision model; half the compile time of resnet18 for tests
    "resnet10": ((1, 1, 1, 1), BasicBlock),
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}

RESNET_ARCHS: tuple[str, ...] = tuple(ARCH_SPECS)


def create_resnet(
    arch: str,
    width: int = 64,
    dtype: str | jnp.dtype = "float32",
    zero_init_residual: bool = True,
    conv_impl: str = "auto",
) -> ResNet:
    """Build one of ``RESNET_ARCHS`` with torchvision's block layout.

    Raises:
        ValueError: if ``arch`` is not one of ``RESNET_ARCHS`` or ``conv_impl`` not one of ``CONV_IMPLS``.
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid choices: {', '.join(CONV_IMPLS)}")
    if arch not in ARCH_SPECS:
        raise ValueError(f"Unknown ResNet arch {arch!r}; valid choices: {', '.join(RESNET_ARCHS)}")
    stage_sizes, block_cls = ARCH_SPECS[arch]
    return ResNet(
        stage_sizes=stage_sizes,
        block_cls=block_cls,
        width=width,
        zero_init_residual=zero_init_residual,
        dtype=jnp.dtype(dtype),
        conv_impl=conv_impl,
    )


def init_key(seed: int) -> jax.Array:
    """Key for parameter initialisation: XLA's RngBitGenerator ('rbg'), which compiles a ResNet's init faster than
    threefry (docs/design.md, "uint8 to the device"); the step's randomness stays threefry."""
    return jax.random.key(seed, impl="rbg")


@functools.lru_cache(maxsize=8)
def backbone_initializer(arch: str, width: int) -> Callable[[jax.Array], dict[str, Any]]:
    """key -> torchvision-default variables of `arch`/`width`, jitted once per architecture (a grid initialises
    hundreds of backbones). The parameters do not depend on the input size or the compute dtype, so a small float32
    example serves every config."""
    backbone = create_resnet(arch, width=width, zero_init_residual=False)
    example = np.zeros((1, 32, 32, 3), np.float32)
    return jax.jit(lambda key: backbone.init(key, example))


def random_backbone_variables(arch: str, width: int, seed: int) -> dict[str, Any]:
    """torchvision-default random init (zero_init_residual=False) of `arch`/`width`, as numpy."""
    return jax.device_get(backbone_initializer(arch, width)(init_key(seed)))
