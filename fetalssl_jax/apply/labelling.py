"""The chosen frames as a folder to label: PNGs plus `labels.csv` in the layout the `fetal_cardiac_planes`
builder's `csv` config reads (`image_name`, `class`, `patient_id`), with `class` left empty for the labeller.

PNG names and patient ids are the salted ids of the frames' videos (`<source_id>_<frame>.png`), never file names.
`patient_id` is the video's id, or with `patients` (`Input.patients`: the patient folder's salted id) the patient's:
the builder keeps a patient's images in one split, so frames of one video (patient) never end up in both training
and test.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping

import numpy as np

from fetalssl_jax.apply.embedding import Embeddings
from fetalssl_jax.apply.files import save_png, write_csv
from fetalssl_jax.apply.inputs import FrameBlock

LABELS_CSV = "labels.csv"
LABELS_COLUMNS = ("image_name", "class", "patient_id")


def image_name(source_id: str, frame: int) -> str:
    """The PNG name of a frame: its video's salted id and its frame number."""
    return f"{source_id}_{int(frame):06d}.png"


def export_for_labelling(
    blocks: Iterable[FrameBlock],
    embeddings: Embeddings,
    chosen: np.ndarray,
    out_dir: str | pathlib.Path,
    patients: Mapping[str, str] | None = None,
) -> pathlib.Path:
    """Writes the `chosen` rows of `embeddings` as PNGs (the frames before resizing) and `labels.csv` (rows in the
    order of choice; `patient_id` from `patients` {source id: patient id}, else the source id) into `out_dir`;
    `blocks` is a second pass over the same input (one video at a time). Returns the CSV's path."""
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = np.asarray(chosen, np.int64)
    wanted = set(chosen.tolist())
    start = 0
    for block in blocks:
        for i in range(len(block)):
            row = start + i
            if row in wanted:
                if (block.source_ids[i], block.frame_index[i]) != (embeddings.source_ids[row],
                                                                   embeddings.frame_index[row]):  # fmt: skip
                    raise RuntimeError(f"the input changed while it was read: row {row} is another frame now")
                save_png(out_dir / image_name(block.source_ids[i], block.frame_index[i]), block.originals[i])
        start += len(block)
    rows = []
    for r in chosen:
        source = str(embeddings.source_ids[r])
        patient = source if patients is None else patients[source]
        rows.append((image_name(source, embeddings.frame_index[r]), "", patient))
    path = out_dir / LABELS_CSV
    write_csv(path, LABELS_COLUMNS, rows)
    return path
