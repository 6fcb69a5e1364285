"""Pretraining methods, one module each, found by name through the registry."""

from fetalssl_jax.methods import barlow_twins  # noqa: F401  (registers the method)
from fetalssl_jax.methods.base import Method, get_method, register, registered_methods

__all__ = ["Method", "get_method", "register", "registered_methods"]
