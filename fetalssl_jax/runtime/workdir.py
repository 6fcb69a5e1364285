"""The run directory a command writes into."""

from __future__ import annotations

import pathlib

from fetalssl_jax.errors import UserError


def make_workdir(path: str | pathlib.Path) -> pathlib.Path:
    """`path` as a directory, made with its parents if needed; one that cannot be made (a file in the way, no
    permission) is a UserError naming it and the reason."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot make the workdir {path}: {error.strerror or error}") from None
    return path
