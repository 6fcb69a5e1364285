"""The plane classifier's optimiser: AdamW as the reference, the linear probe's frozen backbone, and for a ViT the
fine-tuning recipe of BEiT / MAE.

A ResNet classifier trains with ``optax.adamw(lr, weight_decay)`` on every parameter. A ViT classifier's AdamW has
layer-wise learning-rate decay (BEiT, Bao et al. 2022; MAE, He et al. 2022): with decay d and depth L, the head and
the final norm learn at lr, block i (0-based) at lr * d^(L - i), the patch embedding, class / register tokens and
position embeddings at lr * d^(L + 1); and, as their `param_groups_lrd`, no weight decay on biases, norms, LayerScale,
tokens and position embeddings. d = 1 leaves the rates equal. The learning rate is constant, or a linear warm-up then
a cosine decay to zero over the run (`train.optim.warmup_cosine`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

from fetalssl_jax.models.backbone import is_vit
from fetalssl_jax.models.vit import ARCH_SPECS as VIT_SPECS
from fetalssl_jax.train.optim import warmup_cosine

SCHEDULES = ("constant", "warmup_cosine")
EMBEDDINGS = ("patch_embed", "cls_token", "reg_token", "pos_embed", "mask_token")  # BEiT / MAE's layer 0
NO_WEIGHT_DECAY = ("cls_token", "reg_token", "pos_embed", "mask_token")  # and every parameter with ndim <= 1


def _names(path: tuple) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", k)) for k in path)


def layer_id(names: tuple[str, ...], depth: int) -> int:
    """The layer of a classifier parameter (its names below `params`) as BEiT / MAE count them: 0 the ViT's
    embeddings, i + 1 its block i, depth + 1 everything after the blocks (final norm, head)."""
    if names[0] != "backbone":
        return depth + 1
    if names[1] in EMBEDDINGS:
        return 0
    if names[1].startswith("blocks_"):
        return int(names[1][len("blocks_") :]) + 1
    return depth + 1


def layer_scales(params: Any, depth: int, decay: float) -> Any:
    """The learning-rate factor of every parameter: decay ** (depth + 1 - layer)."""
    return jax.tree_util.tree_map_with_path(lambda p, _: decay ** (depth + 1 - layer_id(_names(p), depth)), params)


def decayed(params: Any) -> Any:
    """True for the parameters that get weight decay: matrices and kernels, not biases, norms, tokens or position
    embeddings."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x.ndim > 1 and not set(_names(p)) & set(NO_WEIGHT_DECAY), params
    )


def _scale_by_layer(depth: int, decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its `layer_scales` factor (optax has no per-parameter constant factor)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, layer_scales(updates, depth, decay)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def vit_adamw(
    learning_rate: float | Callable, weight_decay: float, depth: int, decay: float
) -> optax.GradientTransformation:
    """optax.adamw with layer-wise learning-rate decay and MAE's weight-decay exclusions (module docstring)."""
    return optax.chain(
        optax.scale_by_adam(),
        optax.add_decayed_weights(weight_decay, decayed),
        _scale_by_layer(depth, decay),
        optax.scale_by_learning_rate(learning_rate),
    )


def classifier_optimizer(
    arch: str, mode: str, learning_rate: float, weight_decay: float, layer_decay: float = 1.0,
    schedule: str = "constant", warmup_steps: int = 0, total_steps: int = 0,
) -> optax.GradientTransformation:  # fmt: skip
    """The classifier's optimiser (module docstring); `mode` "linear" freezes the backbone (no update, no weight
    decay) so that only the head learns."""
    lr = learning_rate
    if schedule == "warmup_cosine":
        lr = warmup_cosine(learning_rate, total_steps, warmup_steps, 0.0)
    elif schedule != "constant":
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if is_vit(arch):
        adamw = vit_adamw(lr, weight_decay, VIT_SPECS[arch][1], layer_decay)
    else:
        adamw = optax.adamw(lr, weight_decay=weight_decay)
    if mode == "finetune":
        return adamw

    def labels(params):
        return {name: jax.tree.map(lambda _, n=name: "frozen" if n == "backbone" else "train", subtree)
                for name, subtree in params.items()}  # fmt: skip

    return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
