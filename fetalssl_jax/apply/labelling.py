"""The chosen frames as a folder to label: PNGs plus `labels.csv` in the layout the `fetal_cardiac_planes`
builder's `csv` config reads (`image_name`, `class`, `patient_id`), with `class` left empty for the labeller.

PNG names and patient ids are the salted ids of the frames' videos (`<source_id>_<frame>.png`), never file names.
`patient_id` is the video's id, or with `patients` (`Input.patients`: the patient folder's salted id) the patient's:
the builder keeps a patient's images in one split, so frames of one video (patient) never end up in both training
and test.

What a labeller wrote is never touched: frames chosen later are added as new PNGs and new rows at the end of
labels.csv, whose earlier bytes (the filled-in classes, any column or line ending a spreadsheet gave it) stay as
they are. `selection.csv` beside the folder records every frame select chose, in the order of choice.
"""

from __future__ import annotations

import csv
import io
import pathlib
import shutil
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fetalssl_jax.apply.embedding import Embeddings
from fetalssl_jax.apply.files import save_png, write_csv
from fetalssl_jax.apply.inputs import FrameBlock
from fetalssl_jax.errors import UserError

LABELS_CSV = "labels.csv"
LABELS_COLUMNS = ("image_name", "class", "patient_id")
SELECTION_CSV = "selection.csv"
SELECTION_COLUMNS = ("order", "row", "source_id", "frame_index")


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
    """Writes the `chosen` rows of `embeddings` as PNGs (the frames before resizing; a PNG already there is kept)
    and adds them to `labels.csv` (rows in the order of choice, after the rows already there; `patient_id` from
    `patients` {source id: patient id}, else the source id) in `out_dir`; `blocks` is a second pass over the same
    input (one video at a time). Returns the CSV's path."""
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
                png = out_dir / image_name(block.source_ids[i], block.frame_index[i])
                if not png.exists():
                    save_png(png, block.originals[i])
        start += len(block)
    rows = []
    for r in chosen:
        source = str(embeddings.source_ids[r])
        patient = source if patients is None else patients[source]
        rows.append({"image_name": image_name(source, embeddings.frame_index[r]), "class": "", "patient_id": patient})
    path = out_dir / LABELS_CSV
    append_label_rows(path, rows)
    return path


def append_label_rows(path: pathlib.Path, rows: Sequence[Mapping[str, str]]) -> int:
    """Adds `rows` ({column: value}) whose image_name the file does not list yet to the end of labels.csv (a new
    file with the LABELS_COLUMNS header if there is none), in the file's own columns, delimiter and line ending;
    its earlier bytes are kept as they are (written to a temporary file and renamed). Returns how many were added."""
    if not path.is_file():
        write_csv(path, LABELS_COLUMNS, [[row[c] for c in LABELS_COLUMNS] for row in rows])
        return len(rows)
    old = path.read_bytes()
    text = old.decode("utf-8-sig", errors="replace")
    first = text.splitlines()[0] if text else ""
    delimiter = max(",;\t", key=first.count) if first else ","
    table = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    header = [h.strip() for h in table[0]] if table else []
    if "image_name" not in header:
        raise UserError(
            f"{path}: its first line {first!r} names no image_name column, so the newly chosen frames cannot be "
            f"added; restore its header ({','.join(LABELS_COLUMNS)}) or use a new workdir"
        )
    listed = {line[header.index("image_name")] for line in table[1:] if len(line) > header.index("image_name")}
    new = [row for row in rows if row["image_name"] not in listed]
    newline = "\r\n" if b"\r\n" in old else "\n"
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=newline).writerows(
        [[row.get(column, "") for column in header] for row in new]
    )
    separator = newline.encode() if old and not old.endswith(b"\n") else b""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(old + separator + out.getvalue().encode())
    shutil.copymode(path, tmp)
    tmp.replace(path)
    return len(new)


def read_selection(directory: pathlib.Path) -> list[tuple[str, int]]:
    """(source id, frame index) of every frame chosen before in `directory` (its selection.csv), in the order of
    choice; [] without one."""
    path = directory / SELECTION_CSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(row["source_id"], int(row["frame_index"])) for row in csv.DictReader(f)]


def rows_of(embeddings: Embeddings, frames: Sequence[tuple[str, int]]) -> list[int | None]:
    """The row of each (source id, frame index) in `embeddings`, None for a frame they do not hold."""
    index = {(str(s), int(f)): r for r, (s, f) in enumerate(zip(embeddings.source_ids, embeddings.frame_index,
                                                                strict=True))}  # fmt: skip
    return [index.get((str(s), int(f))) for s, f in frames]


def write_selection(directory: pathlib.Path, frames: Sequence[tuple[str, int]], embeddings: Embeddings) -> None:
    """selection.csv: every chosen frame in the order of choice with its row in `embeddings` (empty for a frame of
    a video the embeddings no longer hold)."""
    rows = rows_of(embeddings, frames)
    write_csv(directory / SELECTION_CSV, SELECTION_COLUMNS,
              [(k, "" if r is None else r, s, f) for k, ((s, f), r) in enumerate(zip(frames, rows, strict=True))]
              )  # fmt: skip
