"""Public pure loss functions of the pretraining methods (each lives beside its method; gathered here)."""

from fetalssl_jax.methods.autoencoder import reconstruction_loss
from fetalssl_jax.methods.barlow_twins import barlow_twins_loss, batch_standardize
from fetalssl_jax.methods.byol import negative_cosine_loss
from fetalssl_jax.methods.dino_losses import (
    dino_center_update,
    dino_loss,
    ibot_patch_loss,
    koleo_loss,
    sinkhorn_knopp,
)
from fetalssl_jax.methods.mae_loss import mae_loss
from fetalssl_jax.methods.moco import info_nce_loss
from fetalssl_jax.methods.simclr import nt_xent_loss
from fetalssl_jax.methods.vicreg import vicreg_loss

__all__ = [
    "barlow_twins_loss",
    "batch_standardize",
    "dino_center_update",
    "dino_loss",
    "ibot_patch_loss",
    "info_nce_loss",
    "koleo_loss",
    "mae_loss",
    "negative_cosine_loss",
    "nt_xent_loss",
    "reconstruction_loss",
    "sinkhorn_knopp",
    "vicreg_loss",
]
