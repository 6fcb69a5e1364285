"""The backbone a config names (`config.model`): a ResNet or a ViT, one interface for both.

`model.arch` picks the family. A ResNet's keys are `arch`, `width`, `dtype`, `conv_impl`; a ViT's `arch`,
`patch_size`, `reg_tokens`, `layer_scale` (LayerScale's initial value, 0: off), `drop_path_rate` and `dtype`. Both
take NHWC frames and return the pooled features [N, D] (`num_features`); their variables are `{'params', ...}` with
`batch_stats` for a ResNet only. `backbone_variables` picks a backbone's part out of a whole model's variables.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from fetalssl_jax.models.conv import CONV_IMPLS
from fetalssl_jax.models.resnet import (
    RESNET_ARCHS,
    backbone_initializer,
    create_resnet,
    init_key,
    random_backbone_variables,
)
from fetalssl_jax.models.vit import VIT_ARCHS, create_vit
from fetalssl_jax.validation import MISSING, Checks, is_int

ARCHS = (*RESNET_ARCHS, *VIT_ARCHS)
DTYPES = ("float32", "bfloat16")  # compute dtypes; parameters are always float32
MIN_IMAGE_SIZE = 32  # the ResNets downsample 32x


def is_vit(arch: str) -> bool:
    return arch in VIT_ARCHS


def create_backbone(model: Mapping[str, Any], image_size: int, zero_init_residual: bool = True) -> nn.Module:
    """The backbone of a `model` config for `image_size` inputs; `zero_init_residual` (ResNet): the SSL start's
    zero-initialised last BatchNorm of each block (False: torchvision's default init)."""
    if is_vit(model["arch"]):
        scale = float(model.get("layer_scale", 0.0))
        return create_vit(model["arch"], int(model["patch_size"]), int(image_size), model.get("dtype", "float32"),
                          int(model.get("reg_tokens", 0)), scale or None, float(model.get("drop_path_rate", 0.0)),
                          bool(model.get("mask_token", False)))  # fmt: skip
    return create_resnet(model["arch"], width=int(model["width"]), dtype=model.get("dtype", "float32"),
                         zero_init_residual=zero_init_residual, conv_impl=model.get("conv_impl", "auto"))  # fmt: skip


def description(model: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies a backbone's weights: the architecture and its shape keys (width, or patch size, registers,
    LayerScale), as an exported backbone's `backbone.json` records them."""
    if is_vit(model["arch"]):
        keys = ("arch", "patch_size", "reg_tokens", "layer_scale")
        return {k: model.get(k, 0) if k != "arch" else model[k] for k in keys}
    return {"arch": model["arch"], "width": int(model["width"])}


@functools.lru_cache(maxsize=8)
def _vit_initializer(arch: str, patch_size: int, image_size: int, reg_tokens: int, layer_scale: float):
    module = create_vit(arch, patch_size, image_size, "float32", reg_tokens, layer_scale or None)
    example = np.zeros((1, image_size, image_size, 3), np.float32)
    return jax.jit(lambda key: module.init(key, example))


def _initializer(model: Mapping[str, Any], image_size: int):
    """key -> a backbone's initial variables, jitted once per architecture: a ResNet's torchvision init, a ViT's
    timm init."""
    if is_vit(model["arch"]):
        return _vit_initializer(model["arch"], int(model["patch_size"]), int(image_size),
                                int(model.get("reg_tokens", 0)), float(model.get("layer_scale", 0.0)))  # fmt: skip
    return backbone_initializer(model["arch"], int(model["width"]))


def random_variables(model: Mapping[str, Any], image_size: int, seed: int) -> dict[str, Any]:
    """The random-init baseline of a backbone, as numpy: torchvision's default init of a ResNet (no
    zero-initialised residual BatchNorm), timm's of a ViT."""
    if is_vit(model["arch"]):
        return jax.device_get(_initializer(model, image_size)(init_key(seed)))
    return random_backbone_variables(model["arch"], int(model["width"]), seed)


def variable_shapes(model: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """The shapes and dtypes (`jax.ShapeDtypeStruct`) of a backbone's variables, computing nothing: what weights
    loaded into it must fit (a ViT's position embeddings depend on `image_size`, a ResNet's do not)."""
    return jax.eval_shape(_initializer(model, image_size), init_key(0))


def backbone_variables(variables: Mapping[str, Any], name: str = "backbone") -> dict[str, Any]:
    """The part of a model's variables ({collection: tree}) that belongs to its submodule `name`: params, and the
    BatchNorm statistics where the backbone has them."""
    return {collection: tree[name] for collection, tree in variables.items() if name in tree}


def check_config(c: Checks, image_size: str = "data.image_size") -> None:
    """Adds the problems of `model.*` and of the input size the architecture takes (key `image_size`) to `c`."""
    c.one_of("model.arch", ARCHS)
    c.one_of("model.dtype", DTYPES)
    if not is_vit(c.get("model.arch")):
        c.integer("model.width")
        c.one_of("model.conv_impl", CONV_IMPLS)
        c.integer(image_size, MIN_IMAGE_SIZE, "the ResNets downsample 32x")
        return
    if c.get("model.patch_size") is MISSING:
        c.fail("model.arch", c.get("model.arch"), "a ViT needs the ViT's model keys (patch_size, reg_tokens, ...); "
               "use a config's ViT preset, e.g. configs/barlow.py:vit or configs/dino.py")  # fmt: skip
        return
    c.integer("model.patch_size")
    c.integer("model.reg_tokens", 0)
    c.non_negative_number("model.layer_scale")
    c.below_one("model.drop_path_rate")
    size, patch = c.get(image_size), c.get("model.patch_size")
    if is_int(size) and is_int(patch) and patch > 0 and (size < patch or size % patch):
        c.fail(image_size, size, f"must be a positive multiple of model.patch_size = {patch}")
