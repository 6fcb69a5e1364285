"""Atomic writers of the outputs (a temporary file renamed into place: a reader never sees half a file)."""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np


def write_csv(path: pathlib.Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV written to a temporary file and renamed (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(path)


def save_png(path: pathlib.Path, image: np.ndarray, text: dict[str, str] | None = None) -> None:
    """A uint8 gray image as PNG (with `text` chunks), written to a temporary file and renamed."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
