"""The backbone a config names (`config.model`), and the check of those keys."""

from __future__ import annotations

from fetalssl_jax.models.conv import CONV_IMPLS
from fetalssl_jax.models.resnet import RESNET_ARCHS
from fetalssl_jax.validation import Checks

DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters are always float32
MIN_IMAGE_SIZE = 32  # the ResNets downsample 32x


def check_config(c: Checks, image_size: str = "data.image_size") -> None:
    """Adds the problems of `model.*` (architecture, width, dtype, convolution) and of the input size the
    architecture takes (key `image_size`) to `c`."""
    c.one_of("model.arch", RESNET_ARCHS)
    c.integer("model.width")
    c.one_of("model.dtype", DTYPES)
    c.one_of("model.conv_impl", CONV_IMPLS)
    c.integer(image_size, MIN_IMAGE_SIZE, "the ResNets downsample 32x")
