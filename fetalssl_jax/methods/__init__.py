"""Pretraining methods, one module each, found by name through the registry.

Every module of this package is imported here, so a new method is one new file (a `Method` subclass decorated
with `@register`) plus its config in `configs/`; nothing else changes.
"""

import importlib
import pkgutil

from fetalssl_jax.methods.base import Method, get_method, register, registered_methods

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Method", "get_method", "register", "registered_methods"]
