"""Public pure loss functions of the pretraining methods (each lives beside its method; gathered here)."""

from fetalssl_jax.methods.barlow_twins import barlow_twins_loss, batch_standardize

__all__ = ["barlow_twins_loss", "batch_standardize"]
