"""Backbone networks."""

from fetalssl_jax.models.resnet import (
    RESNET_ARCHS,
    BasicBlock,
    Bottleneck,
    ResNet,
    create_resnet,
)
from fetalssl_jax.models.vit import VIT_ARCHS, ViT, ViTTokens, create_vit

__all__ = [
    "RESNET_ARCHS",
    "VIT_ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ViT",
    "ViTTokens",
    "create_resnet",
    "create_vit",
]
