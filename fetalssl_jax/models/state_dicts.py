"""The one check that a converted state dict fits the configured model, for the ResNet (`torch_io`) and ViT
(`vit_io`) importers: the same entries, each of the same shape, or one `DataError` naming what differs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fetalssl_jax.errors import DataError

Path = tuple[str, ...]


def _listed(keys: list[str]) -> str:
    return f"{keys[:6]}{' ...' if len(keys) > 6 else ''}"


def check_fits(
    found: Mapping[Path, Any], expected: Mapping[Path, Any], name: Callable[[Path], str], source: str, model: str,
    keys_hint: str, shape_hint: str,
) -> None:  # fmt: skip
    """Raises a DataError unless `found` and `expected` (flat Flax paths -> arrays) hold the same paths with the
    same shapes; entries are named in the file's layout (`name`), the hints say which settings to check."""
    missing = sorted(name(k) for k in expected.keys() - found.keys())
    unexpected = sorted(name(k) for k in found.keys() - expected.keys())
    if missing or unexpected:
        raise DataError(f"{source} does not fit the configured {model}: missing {_listed(missing)}; unexpected "
                        f"{_listed(unexpected)} (check {keys_hint})")  # fmt: skip
    for path, value in expected.items():
        if tuple(np.shape(value)) != tuple(np.shape(found[path])):
            raise DataError(f"{source}: {name(path)} has shape {tuple(np.shape(found[path]))} in Flax layout, the "
                            f"configured {model} needs {tuple(np.shape(value))} (check {shape_hint})")  # fmt: skip
