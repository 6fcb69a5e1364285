"""The plane classifier of the reference: backbone -> [non-affine BN] -> dropout 0.5 -> Linear without bias."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = Any


class Classifier(nn.Module):
    """A backbone and a linear head on its pooled features (a ResNet's pooled map, a ViT's class token).

    Attributes:
        backbone: the ResNet or ViT (its variables live under ``backbone``, as in pretraining).
        num_classes: output logits.
        dropout: dropout rate on the pooled features (the reference: 0.5).
        head_batch_norm: a BatchNorm without scale and bias before the dropout (the reference's option).
    """

    backbone: nn.Module
    num_classes: int
    dropout: float = 0.5
    head_batch_norm: bool = False

    def setup(self) -> None:
        if self.head_batch_norm:
            self.head_norm = nn.BatchNorm(momentum=0.9, epsilon=1e-5, use_scale=False, use_bias=False)
        self.head_dropout = nn.Dropout(self.dropout)
        self.head = nn.Dense(self.num_classes, use_bias=False)

    def logits_from_features(self, pooled: Array, train: bool) -> Array:
        """Logits [B, num_classes] (float32) from pooled backbone features [B, F]."""
        x = pooled.astype(jnp.float32)
        if self.head_batch_norm:
            x = self.head_norm(x, use_running_average=not train)
        x = self.head_dropout(x, deterministic=not train)
        return self.head(x)

    def __call__(self, images: Array, train: bool = True, backbone_train: bool | None = None) -> Array:
        """Logits of normalised images [B, H, W, 3].

        ``backbone_train=False`` with ``train=True`` is the linear probe: the backbone runs in eval mode (a
        ResNet's BatchNorm running statistics, no stochastic depth) and gets no gradient; only the head trains.
        """
        backbone_train = train if backbone_train is None else backbone_train
        pooled = self.backbone(images, train=backbone_train)
        if train and not backbone_train:  # linear probe: no backward pass through the frozen backbone
            pooled = jax.lax.stop_gradient(pooled)
        return self.logits_from_features(pooled, train)


def weighted_cross_entropy(logits: Array, labels: Array, weights: Array) -> Array:
    """PyTorch's ``CrossEntropyLoss(weight=w)`` with mean reduction: sum_i w[y_i] * ce_i / sum_i w[y_i]."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    w = weights[labels]
    return jnp.sum(w * nll) / jnp.sum(w)
