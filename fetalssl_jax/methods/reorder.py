"""Clip order + geometric transform prediction (Jiao et al., ISBI 2020), on fetal ultrasound video.

A training example is a clip of K = `data.clip_length` frames `data.clip_stride` kept frames apart from one video
(sampler mode "clips"). On the device each clip gets one augmentation shared by all its frames
(`config.augment.view1`, the same draws for every frame, so nothing in it depends on a frame's position), has its
frames shuffled by a permutation drawn uniformly from `permutation_set` (input frame j is original frame
`perms[order][j]`) and gets one transform of `method_kwargs.transforms` drawn uniformly: "rotations" (np.rot90 by
0 / 90 / 180 / 270 degrees over (H, W), counter-clockwise) or "none" (order only).

A shared ResNet encodes every frame (the clip folded into the batch, so BatchNorm statistics are over all frames of
the global batch); two heads, Linear-BN-ReLU-Linear (`head_hidden`), classify the permutation from the frame
features minus their clip mean (`center_order_features`; docs/design.md, "Clip-order settings") and the transform
from their concatenation: loss = CE(order) + transform_weight * CE(transform).

`method_kwargs`: num_permutations (0: all K! orders; P > 0: the greedy maximal-Hamming-distance subset of size P),
transforms, transform_weight, head_hidden, center_order_features.
"""

from __future__ import annotations

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fetalssl_jax.data.augment import augment_view
from fetalssl_jax.methods.base import Method, apply_model, register
from fetalssl_jax.models.heads import MLPHead
from fetalssl_jax.validation import is_int

# Per transform set, index -> transform as (transpose H/W, then flip H, then flip W); the tests check them against
# np.rot90.
TRANSFORM_SETS: dict[str, tuple[tuple[bool, bool, bool], ...]] = {
    "rotations": ((False, False, False), (True, True, False), (False, True, True), (True, False, True)),  # rot90 k
    "none": ((False, False, False),),  # order only: one class, the transform loss is 0
}


@functools.cache
def _permutation_set(k: int, num_permutations: int) -> np.ndarray:
    perms = np.array(list(itertools.permutations(range(k))), np.int32)  # lexicographic order
    if num_permutations <= 0 or num_permutations == len(perms):
        return perms
    chosen = [0]  # the identity, the first permutation in lexicographic order
    min_dist = np.sum(perms != perms[0], axis=1)  # each candidate's minimum Hamming distance to the chosen set
    for _ in range(num_permutations - 1):
        masked = np.where(np.isin(np.arange(len(perms)), chosen), -1, min_dist)
        best = int(np.argmax(masked))  # first (lexicographically smallest) of the ties
        chosen.append(best)
        min_dist = np.minimum(min_dist, np.sum(perms != perms[best], axis=1))
    return perms[chosen]


def permutation_set(k: int, num_permutations: int = 0) -> np.ndarray:
    """The fixed set of frame orders [P, k] (int32) whose index the network predicts.

    `num_permutations` <= 0 (or k!): all k! permutations of range(k) in lexicographic order (row 0 is the
    identity). 0 < P < k!: the maximal-Hamming-distance subset of Noroozi & Favaro (2016), chosen greedily and
    deterministically: start from the identity, then repeatedly add the permutation whose minimum Hamming distance
    to those already chosen is largest, ties going to the lexicographically smallest one. Rows are in the order
    they were chosen.
    """
    k, num_permutations = int(k), int(num_permutations)
    if k < 2:
        raise ValueError(f"clips need at least 2 frames to be reordered, got clip_length {k}")
    if num_permutations > math.factorial(k):
        raise ValueError(
            f"num_permutations {num_permutations} is more than the {math.factorial(k)} orders of {k} frames"
        )
    return _permutation_set(k, num_permutations).copy()


def apply_transform(clip: jax.Array, flags: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
    """Applies (transpose, flip H, flip W), each a boolean scalar, to the (..., H, W, C) axes of square frames."""
    transpose, flip_h, flip_w = flags
    clip = jnp.where(transpose, jnp.swapaxes(clip, -3, -2), clip)
    clip = jnp.where(flip_h, jnp.flip(clip, -3), clip)
    return jnp.where(flip_w, jnp.flip(clip, -2), clip)


class ClipClassifier(nn.Module):
    """Shared backbone per frame; concatenated frame features -> order logits and transform logits."""

    backbone: nn.Module
    num_orders: int
    num_transforms: int
    head_hidden: int
    center_order_features: bool = True
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, clips: jax.Array, train: bool = True) -> tuple[jax.Array, jax.Array]:
        b, k = clips.shape[:2]
        features = self.backbone(clips.reshape(b * k, *clips.shape[2:]), train=train)
        features = features.reshape(b, k, features.shape[-1])
        order_features = features
        if self.center_order_features:
            order_features = features - jnp.mean(features, axis=1, keepdims=True)
        order = MLPHead((self.head_hidden, self.num_orders), use_bias=True, dtype=self.dtype, name="order_head")
        transform = MLPHead(
            (self.head_hidden, self.num_transforms), use_bias=True, dtype=self.dtype, name="transform_head"
        )
        return (
            order(order_features.reshape(b, -1), train=train),
            transform(features.reshape(b, -1), train=train),
        )


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))


@register
class Reorder(Method):
    """Clip order + geometric transform prediction; `method_kwargs`: num_permutations, transforms,
    transform_weight, head_hidden, center_order_features (see the module docstring)."""

    name = "reorder"

    @classmethod
    def check_config(cls, c):
        c.integer("data.clip_length", 2, "the frames of a clip are reordered")
        c.integer("data.clip_stride")
        c.one_of("method_kwargs.transforms", sorted(TRANSFORM_SETS))
        c.non_negative_number("method_kwargs.transform_weight")
        c.integer("method_kwargs.head_hidden")
        k, permutations = c.get("data.clip_length"), c.get("method_kwargs.num_permutations")
        if not is_int(permutations):
            c.fail("method_kwargs.num_permutations", permutations, "must be an integer (<= 0: all orders)")
        elif is_int(k) and k >= 2 and permutations > math.factorial(k):
            c.fail("method_kwargs.num_permutations", permutations, f"must be at most the {math.factorial(k)} orders "
                   f"of data.clip_length = {k} frames")  # fmt: skip

    def __init__(self, config, total_steps: int = 1):
        super().__init__(config, total_steps)
        self.clip_length = int(config.data.clip_length)
        self.perms = permutation_set(self.clip_length, self.kwargs.num_permutations)
        self.transforms = np.array(TRANSFORM_SETS[self.kwargs.transforms], bool)

    @classmethod
    def example_mode(cls, config) -> str:
        return "clips"

    def build_model(self) -> nn.Module:
        return ClipClassifier(
            self.build_backbone(),
            len(self.perms),
            len(self.transforms),
            int(self.kwargs.head_hidden),
            bool(self.kwargs.center_order_features),
            self.dtype,
        )

    def init_variables(self, rng, inputs):
        return dict(self.build_model().init(rng, inputs["clips"], train=True))

    def make_clip(self, key: jax.Array, clip: jax.Array, order: jax.Array, transform: jax.Array) -> jax.Array:
        """One uint8 clip [K, H, W, C] -> its augmented, shuffled, transformed float clip [K, S, S, 3]."""
        size = self.config.data.image_size
        view = self.config.augment.view1.to_dict()
        # the same key for every frame: the same crop box and jitter factors for the whole clip
        frames = jax.vmap(lambda im: augment_view(key, im, view, size))(clip)
        frames = frames[jnp.asarray(self.perms)[order]]
        flags = jnp.asarray(self.transforms)[transform]
        return apply_transform(frames, (flags[0], flags[1], flags[2]))

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> dict[str, jax.Array]:
        """{'clips': float [B, K, S, S, 3], 'order': int32 [B] (row of `self.perms`), 'transform': int32 [B]}."""
        if frames.shape[1] != self.clip_length:
            raise ValueError(f"expected clips of {self.clip_length} frames, got frames of shape {frames.shape}")

        def one(key, clip):
            k_order, k_transform, k_aug = jax.random.split(key, 3)
            order = jax.random.randint(k_order, (), 0, len(self.perms))
            transform = jax.random.randint(k_transform, (), 0, len(self.transforms))
            return self.make_clip(k_aug, clip, order, transform), order, transform

        keys = jax.random.split(rng, frames.shape[0])
        clips, order, transform = jax.vmap(one)(keys, frames)
        return {"clips": clips.astype(self.dtype), "order": order, "transform": transform}

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del step
        (order_logits, transform_logits), model_state = apply_model(
            self.build_model(), params, model_state, inputs["clips"], train=True, rng=rng
        )
        order_loss = optax.softmax_cross_entropy_with_integer_labels(order_logits, inputs["order"]).mean()
        transform_loss = optax.softmax_cross_entropy_with_integer_labels(transform_logits, inputs["transform"]).mean()
        loss = order_loss + self.kwargs.transform_weight * transform_loss
        metrics = {
            "order_loss": order_loss,
            "transform_loss": transform_loss,
            "order_accuracy": _accuracy(order_logits, inputs["order"]),
            "transform_accuracy": _accuracy(transform_logits, inputs["transform"]),
        }
        return loss, (model_state, extra, metrics)

    def identity(self):
        return {**super().identity(), "clip_length": self.clip_length}


def default_kwargs(
    num_permutations: int = 0,
    transforms: str = "rotations",
    transform_weight: float = 1.0,
    head_hidden: int = 512,
    center_order_features: bool = True,
) -> dict:
    """`method_kwargs` of the default setting: all K! orders, 4 rotations, equal weights, 512 hidden units,
    clip-centred features for the order head."""
    return {
        "num_permutations": num_permutations,
        "transforms": transforms,
        "transform_weight": transform_weight,
        "head_hidden": head_hidden,
        "center_order_features": center_order_features,
    }
