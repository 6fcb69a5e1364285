"""VICReg (Bardes et al. 2022) as the paper's reference trains it.

Projector as Barlow Twins. loss = sim * MSE(z1, z2) + std * variance term + cov * covariance term, where the
variance term is mean_d relu(1 - sqrt(var_d + 1e-4)) averaged over both branches and the covariance term the
squared off-diagonal entries of each branch's covariance (centred, / (N - 1)), summed and divided by D.
Statistics are over the global batch (the reference gathers the batch across GPUs too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fetalssl_jax.methods.base import TwoViewMethod, register


def _variance_term(z: jax.Array) -> jax.Array:
    std = jnp.sqrt(jnp.var(z, axis=0, ddof=1) + 1e-4)  # unbiased, as torch.var
    return jnp.mean(jax.nn.relu(1.0 - std))


def _covariance_term(z: jax.Array) -> jax.Array:
    n, d = z.shape
    z = z - jnp.mean(z, axis=0)
    cov = z.T @ z / (n - 1)
    return (jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(jnp.diagonal(cov)))) / d


def vicreg_terms(z1: jax.Array, z2: jax.Array) -> dict[str, jax.Array]:
    """The three unweighted terms: invariance (MSE), variance (mean of both branches), covariance (sum)."""
    z1, z2 = z1.astype(jnp.float32), z2.astype(jnp.float32)
    return {
        "invariance": jnp.mean(jnp.square(z1 - z2)),
        "variance": 0.5 * (_variance_term(z1) + _variance_term(z2)),
        "covariance": _covariance_term(z1) + _covariance_term(z2),
    }


def vicreg_loss(
    z1: jax.Array, z2: jax.Array, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> jax.Array:
    """VICReg loss of two batches of embeddings [N, D]."""
    t = vicreg_terms(z1, z2)
    return sim_coeff * t["invariance"] + std_coeff * t["variance"] + cov_coeff * t["covariance"]


@register
class VICReg(TwoViewMethod):
    """VICReg; `method_kwargs`: projector (sizes), sim_coeff, std_coeff, cov_coeff."""

    name = "vicreg"

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        for key in ("sim_coeff", "std_coeff", "cov_coeff"):
            c.non_negative_number(f"method_kwargs.{key}")

    def embedding_loss(self, z1, z2):
        k = self.kwargs
        terms = vicreg_terms(z1, z2)
        loss = k.sim_coeff * terms["invariance"] + k.std_coeff * terms["variance"] + k.cov_coeff * terms["covariance"]
        return loss, terms
