"""MoCo (He et al. 2020; v2 head and augmentations, Chen et al. 2020) with the paper's reference settings.

Query encoder: backbone -> MLP head Linear-ReLU-Linear-ReLU-Linear, sizes 2048-2048-128, with biases, no BatchNorm.
Key encoder: an exponential moving average of the query encoder, its parameters *and* its BatchNorm running
statistics, with momentum cosine-scheduled from `momentum_base` (0.996) to 1 over the run (BYOL's schedule).
A queue of `queue_size` (4096) L2-normalised keys supplies the negatives; InfoNCE at `temperature` (0.5).

Choices, where MoCo v2 and the reference leave room:
- Symmetrised loss (as MoCo v3 and solo-learn's MoCo v2+): 0.5 * (InfoNCE(q1, k2) + InfoNCE(q2, k1)), both against
  the queue as it was before the step; then the keys of *both* views (2N for a global batch of N) are enqueued,
  newest first: queue <- concat([k1, k2, queue])[:K]. MoCo v2 itself uses one direction and enqueues N keys.
- No shuffle-BN. MoCo v1/v2 shuffle the samples across GPUs before the key encoder so that the key BatchNorm
  statistics come from other samples than the query's and cannot leak which key is the positive. Here every
  BatchNorm (query and key encoder, each view separately) normalises over the *global* batch inside one jit, as
  a single device would (the reference trained on one GPU, where shuffle-BN does nothing either). With the key
  encoder's BN in training mode the leak is one sample among the N of the global batch, as with SyncBN in MoCo v3.
- The key encoder runs in training mode (batch statistics), as in MoCo; its running statistics are the EMA of the
  query encoder's (they only matter if the key encoder is ever evaluated).
- The queue starts as random unit vectors from a fixed key (MoCo: randn, normalised).
- The EMA step (`momentum.MomentumMethod`): after the optimiser update, of the updated parameters and the query
  encoder's BatchNorm statistics of this step, with the momentum of the same step:
  target <- m * target + (1 - m) * online for every leaf.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.methods.base import apply_model, l2_normalize, register
from fetalssl_jax.methods.momentum import MomentumMethod
from fetalssl_jax.models.heads import MLPHead

QUEUE_SEED = 20200313  # fixed: the initial queue does not depend on the run's seed


def info_nce_loss(query: jax.Array, key: jax.Array, queue: jax.Array, temperature: float = 0.5) -> jax.Array:
    """InfoNCE of queries [N, D] against their keys [N, D] (positives) and a queue [K, D] (negatives).

    All three are L2-normalised here. Logits [N, 1 + K] = [q.k, q.queue^T] / temperature; the loss is the mean
    cross-entropy with the positive at index 0. No stop-gradient inside: the caller decides what is constant.
    """
    q, k, neg = l2_normalize(query), l2_normalize(key), l2_normalize(queue)
    positive = jnp.sum(q * k, axis=1, keepdims=True)
    negatives = q @ neg.T
    logits = jnp.concatenate([positive, negatives], axis=1) / temperature
    return -jnp.mean(jax.nn.log_softmax(logits, axis=1)[:, 0])


class MoCoEncoder(nn.Module):
    """Backbone and MLP head (no BN) applied to each view separately (per-view BatchNorm statistics)."""

    backbone: nn.Module
    head_sizes: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.head = MLPHead(self.head_sizes, use_bias=True, use_bn=False, dtype=self.dtype)

    def embed(self, x: jax.Array, train: bool) -> jax.Array:
        return self.head(self.backbone(x, train=train), train=train)

    def __call__(self, views: tuple[jax.Array, jax.Array], train: bool = True) -> tuple[jax.Array, jax.Array]:
        x1, x2 = views
        return self.embed(x1, train), self.embed(x2, train)


@register
class MoCo(MomentumMethod):
    """MoCo; `method_kwargs`: head (sizes), queue_size, temperature, momentum_base.

    `extra` = {"target_params", "target_state" (BatchNorm statistics of the key encoder), "queue" [K, D]}.
    """

    name = "moco"

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        c.integers("method_kwargs.head", 1, non_empty=True, why="the head's layer sizes")
        c.integer("method_kwargs.queue_size")
        c.positive_number("method_kwargs.temperature")

    def build_model(self) -> nn.Module:
        return MoCoEncoder(self.build_backbone(), tuple(self.kwargs.head), dtype=self.dtype)

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.two_views(rng, frames)

    def init_extra_state(self, variables):
        queue = jax.random.normal(
            jax.random.PRNGKey(QUEUE_SEED), (int(self.kwargs.queue_size), int(self.kwargs.head[-1])), jnp.float32
        )
        return {**super().init_extra_state(variables), "queue": l2_normalize(queue)}

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        model = self.build_model()
        (q1, q2), new_state = apply_model(model, params, model_state, inputs, train=True, rng=rng)
        (k1, k2), _ = apply_model(model, extra["target_params"], extra["target_state"], inputs, train=True)
        k1, k2 = jax.lax.stop_gradient(k1), jax.lax.stop_gradient(k2)
        queue = extra["queue"]
        t = self.kwargs.temperature
        loss = 0.5 * (info_nce_loss(q1, k2, queue, t) + info_nce_loss(q2, k1, queue, t))

        keys = l2_normalize(jnp.concatenate([k1, k2]))
        new_extra = {**extra, "queue": jnp.concatenate([keys, queue])[: queue.shape[0]]}
        positive_cos = 0.5 * jnp.mean(
            jnp.sum(l2_normalize(q1) * keys[len(k1) :], 1) + jnp.sum(l2_normalize(q2) * keys[: len(k1)], 1)
        )
        return loss, (new_state, new_extra, {"momentum": self.momentum(step), "positive_cos": positive_cos})


def default_kwargs(
    head: Sequence[int] = (2048, 2048, 128),
    queue_size: int = 4096,
    temperature: float = 0.5,
    momentum_base: float = 0.996,
) -> dict:
    """`method_kwargs` of the reference setting."""
    return {
        "head": tuple(head),
        "queue_size": queue_size,
        "temperature": temperature,
        "momentum_base": momentum_base,
    }
