"""SimCLR (Chen et al. 2020) as the paper's reference trains it.

Backbone -> projector Linear-BN-ReLU-Linear [512, 128]; NT-Xent over the 2N views of the *global* batch: each
view's positive is the other view of its image, its negatives the other 2N - 2 views, temperature 0.5.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fetalssl_jax.methods.base import TwoViewMethod, l2_normalize, register


def nt_xent_loss(z1: jax.Array, z2: jax.Array, temperature: float = 0.5) -> jax.Array:
    """NT-Xent of two batches of embeddings [N, D]: mean over the 2N views of -log softmax at the positive."""
    z = l2_normalize(jnp.concatenate([z1, z2]))
    n = z1.shape[0]
    logits = z @ z.T / temperature
    logits = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, logits)  # a view is not its own negative
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_prob = jax.nn.log_softmax(logits, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_prob, positive[:, None], axis=1))


@register
class SimCLR(TwoViewMethod):
    """SimCLR; `method_kwargs`: projector (sizes, with biases), temperature."""

    name = "simclr"
    head_bias = True

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        c.positive_number("method_kwargs.temperature")

    def embedding_loss(self, z1, z2):
        return nt_xent_loss(z1, z2, self.kwargs.temperature), {}
