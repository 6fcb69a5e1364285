"""BYOL (Grill et al. 2020) with the paper's reference settings.

Online network: backbone -> projector (feat -> 1024, BN, ReLU, -> 256) -> predictor (256 -> 1024, BN, ReLU, -> 256),
Linear layers with biases. Target network: an exponential moving average of the online backbone and projector, their
parameters *and* BatchNorm running statistics, momentum cosine-scheduled from `momentum_base` (0.996) to 1 over the
run. Loss 0.5 * (negcos(p1, sg(z2')) + negcos(p2, sg(z1'))), negcos the mean negative cosine similarity, so the
loss lies in [-1, 1] (the BYOL paper's 2 - 2 cos summed over both directions is 4 + 4 * this).

Choices, where the reference leaves room:
- Augmentations: the reference's symmetric SimCLR/MoCo/BYOL set (blur p 0.5 on both views, no solarize), not the
  BYOL paper's asymmetric blur 1.0 / 0.1 and solarize 0 / 0.2 (set `augment.view1/2` for that).
- The target runs in training mode (batch statistics of its own forward pass), as in BYOL; all BatchNorm
  statistics are over the global batch, each view separately.
- The EMA step (`momentum.MomentumMethod`): after the optimiser update, of the updated parameters and the online
  BatchNorm statistics of this step, with the momentum of the same step: target <- m * target + (1 - m) * online.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.methods.base import apply_model, l2_normalize, register
from fetalssl_jax.methods.momentum import MomentumMethod
from fetalssl_jax.models.heads import MLPHead


def negative_cosine_loss(p: jax.Array, z: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Mean over the batch of -cos(p_i, z_i) for p, z [N, D] (float32). No stop-gradient inside."""
    p, z = l2_normalize(p, eps), l2_normalize(z, eps)
    return -jnp.mean(jnp.sum(p * z, axis=1))


class BYOLNetwork(nn.Module):
    """Backbone, projector and predictor, each view separately (per-view BatchNorm statistics).

    `__call__` gives the online predictions (p1, p2); `project` the projections (z1, z2), which is all the target
    network computes (its variables hold only `backbone` and `projector`).
    """

    backbone: nn.Module
    projector_sizes: Sequence[int]
    predictor_sizes: Sequence[int]
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.projector = MLPHead(self.projector_sizes, use_bias=True, dtype=self.dtype)
        self.predictor = MLPHead(self.predictor_sizes, use_bias=True, dtype=self.dtype)

    def project(self, views: tuple[jax.Array, jax.Array], train: bool = True) -> tuple[jax.Array, jax.Array]:
        return tuple(self.projector(self.backbone(x, train=train), train=train) for x in views)

    def __call__(self, views: tuple[jax.Array, jax.Array], train: bool = True) -> tuple[jax.Array, jax.Array]:
        return tuple(self.predictor(z.astype(self.dtype), train=train) for z in self.project(views, train))


@register
class BYOL(MomentumMethod):
    """BYOL; `method_kwargs`: projector (sizes), predictor (sizes), momentum_base.

    `extra` = {"target_params", "target_state"}: the target's backbone + projector parameters and BatchNorm statistics.
    """

    name = "byol"
    target_modules = ("backbone", "projector")  # the predictor has no target

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        for key in ("projector", "predictor"):
            c.integers(f"method_kwargs.{key}", 1, non_empty=True, why="layer sizes")

    def build_model(self) -> nn.Module:
        return BYOLNetwork(
            self.build_backbone(), tuple(self.kwargs.projector), tuple(self.kwargs.predictor), dtype=self.dtype
        )

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.two_views(rng, frames)

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        model = self.build_model()
        (p1, p2), new_state = apply_model(model, params, model_state, inputs, train=True, rng=rng)
        (z1, z2), _ = apply_model(
            model, extra["target_params"], extra["target_state"], inputs, train=True, method=BYOLNetwork.project
        )
        z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
        loss = 0.5 * (negative_cosine_loss(p1, z2) + negative_cosine_loss(p2, z1))

        return loss, (new_state, extra, {"momentum": self.momentum(step)})


def default_kwargs(
    projector: Sequence[int] = (1024, 256), predictor: Sequence[int] = (1024, 256), momentum_base: float = 0.996
) -> dict:
    """`method_kwargs` of the reference setting."""
    return {"projector": tuple(projector), "predictor": tuple(predictor), "momentum_base": momentum_base}
