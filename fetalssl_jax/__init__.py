"""fetalssl_jax: self-supervised learning on fetal ultrasound videos, in JAX/Flax."""

__version__ = "0.1.0"
