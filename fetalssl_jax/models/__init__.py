"""Backbone networks."""

from fetalssl_jax.models.resnet import (
    RESNET_ARCHS,
    BasicBlock,
    Bottleneck,
    ResNet,
    create_resnet,
)

__all__ = [
    "RESNET_ARCHS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "create_resnet",
]
