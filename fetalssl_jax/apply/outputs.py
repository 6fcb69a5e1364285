"""The outputs of embed, predict and select belong to what made them, as a training run's checkpoints do.

A run's fingerprint (`train.fingerprint`) is its config less the cosmetic keys and the locations (`input`,
`backbone`, `classifier`, `data_dir`), plus `identity`: the model (kind, architecture and width or a ViT's patch
size, registers and LayerScale, input size, class names, the SHA-256 of its weights as loaded, so a moved or
re-exported model is the same model and other weights in the same place are not, and a classifier's temperature and
known-frame rule where it has them) and the input (for files: the salted id, size and the SHA-256 of the first and
last 64 KiB of every video / image listed, so a moved or copied folder is the same input and a rewritten file is
not; for a built dataset: its name and split). `config.json` holds the config with `input` replaced by a salted
hash of its path (`readers.salted_hash` with the input's `readers.id_salt`; `sources.csv` stays the only key from
ids to files) and `identity`; `finished.json`, written last, marks complete outputs.

Against a workdir that holds outputs:
- the same fingerprint, finished: nothing is rewritten ("up to date");
- the same fingerprint, not finished (a run that stopped): the run is done again;
- another fingerprint: refused by `ensure_resumable`, naming every differing key, unless `overwrite`, which moves
  every earlier output into `previous/<UTC time>/` in the workdir (nothing is deleted). select lets the budget and
  the input's files differ (`growable`): it adds to its labelling set instead.
A workdir with files but no config.json holds something else: refused, or moved aside with `overwrite`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from fetalssl_jax.apply.bad_files import Skipped, SkippingInput
from fetalssl_jax.apply.files import write_csv
from fetalssl_jax.apply.inputs import Input
from fetalssl_jax.apply.loading import Backbone, PlaneClassifier
from fetalssl_jax.apply.onnx_model import OnnxClassifier
from fetalssl_jax.data.build import readers
from fetalssl_jax.downstream.report import write_json
from fetalssl_jax.runtime.workdir_lock import LOCK_NAME
from fetalssl_jax.train.fingerprint import (
    WorkdirMismatchError,
    config_json,
    digest,
    ensure_resumable,
    fingerprint,
    stored_fingerprint,
)

COSMETIC_KEYS = ("progress_bar", "compilation_cache_dir", "overwrite")  # keys that never change what a tool writes
LOCATIONS = ("input", "backbone", "classifier", "data_dir")  # where things are; `identity` says what they are
FINISHED = "finished.json"
PREVIOUS = "previous"
SKIPPED_CSV = "skipped.csv"
SOURCES_CSV = "sources.csv"
SAMPLE_BYTES = 1 << 16  # of the start and of the end of every input file, for its digest


def weights_digest(variables: Any) -> str:
    """SHA-256 (16 hex digits) of a pytree of arrays: every leaf's path, dtype, shape and bytes."""
    sha = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        sha.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        sha.update(array.tobytes())
    return sha.hexdigest()[:16]


def model_identity(model: Backbone | PlaneClassifier | OnnxClassifier) -> dict[str, Any]:
    """What a model is, whatever its path: kind, identity (architecture and width, or a ViT's architecture, patch
    size, registers and LayerScale), input size (and classes), weights digest (of an ONNX file: its bytes)."""
    if isinstance(model, OnnxClassifier):
        digest = hashlib.sha256(pathlib.Path(model.source).read_bytes()).hexdigest()[:16]
        return {"kind": "onnx_classifier", "image_size": model.image_size, "classes": list(model.class_names),
                "weights_sha256": digest}  # fmt: skip
    if isinstance(model, PlaneClassifier):
        return {"kind": "classifier", **model.spec.identity(), "image_size": model.image_size,
                "classes": list(model.class_names), "weights_sha256": weights_digest(model.variables),
                **model.trust.identity()}  # fmt: skip
    return {"kind": model.kind, **model.identity, "image_size": model.image_size,
            "weights_sha256": weights_digest(model.variables)}  # fmt: skip


def _file_digest(path: pathlib.Path) -> str:
    """SHA-256 (16 hex digits) of a file's size and its first and last SAMPLE_BYTES, or of those of every file of a
    folder of frames: a file rewritten (new pixels, another export) changes it, a copy or a new modification time
    does not, and it reads 128 KiB per file whatever the video's length. "" for a file that cannot be read."""
    sha = hashlib.sha256()
    try:
        for file in [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file()):
            size = file.stat().st_size
            with open(file, "rb") as f:
                sha.update(f"{file.name}:{size}:".encode() + f.read(SAMPLE_BYTES))
                f.seek(max(size - SAMPLE_BYTES, 0))
                sha.update(f.read(SAMPLE_BYTES))
    except OSError:
        return ""
    return sha.hexdigest()[:16]


def input_identity(data: Input) -> dict[str, Any]:
    """What an input is: a built dataset's name and split, or the number of its files and the digest of their
    salted ids and contents (`_file_digest`): a file added, removed or rewritten changes it, its path does not."""
    if data.kind == "tfds":
        return {"kind": "tfds", "dataset": data.tfds_name, "split": data.split}
    paths = [ref.path for ref in data.videos] if data.is_video else list(data.images)
    files = [(source_id, _file_digest(path)) for (source_id, _), path in zip(data.sources(), paths, strict=True)]
    sha = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    return {"kind": data.kind, "files": len(files), "files_sha256": sha}


def public_config(
    config: ml_collections.ConfigDict, data: Input, model: Backbone | PlaneClassifier
) -> ml_collections.ConfigDict:
    """The config as config.json records it: `input` a salted hash of its path (a built dataset's name as is),
    and `identity` (the model's and the input's)."""
    public = ml_collections.ConfigDict(config.to_dict())
    if data.kind != "tfds":
        path = str(pathlib.Path(config.input.strip()).expanduser().resolve())
        public.input = f"salted-sha256:{readers.salted_hash(path, data.salt)}"
    public.identity = {"model": model_identity(model), "input": input_identity(data)}
    return public


def _timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


class ToolOutputs:
    """The outputs of one embed / predict / select run in `workdir` (see the module docstring): what is stored, what
    this run would make, and the steps of a run: `up_to_date`, `make_room`, `start`, `finish`."""

    def __init__(self, workdir: pathlib.Path, public: ml_collections.ConfigDict, growable: Sequence[str] = ()):
        self.workdir = workdir
        self.public = public
        self.growable = tuple(growable)
        self.wanted = fingerprint(public, COSMETIC_KEYS, LOCATIONS)
        self.stored = stored_fingerprint(workdir / "config.json", COSMETIC_KEYS, LOCATIONS)

    def _outputs(self) -> list[pathlib.Path]:
        """Everything in the workdir but its lock files and previous/."""
        return sorted(p for p in self.workdir.iterdir() if not p.name.startswith(LOCK_NAME) and p.name != PREVIOUS)

    def up_to_date(self) -> str | None:
        """The line of the finished run that made exactly these outputs, or None."""
        finished = self.workdir / FINISHED
        if self.stored != self.wanted or not finished.is_file():
            return None
        record = json.loads(finished.read_text())
        if record.get("fingerprint_sha256") != digest(self.wanted):
            return None
        return f"up to date (same config, model and input files; nothing rewritten): {record['message']}"

    def make_room(self, overwrite: bool) -> pathlib.Path | None:
        """Checks that the workdir holds nothing, outputs of this fingerprint, or (select) of one that differs only
        in `growable` keys; otherwise refuses (WorkdirMismatchError), or with `overwrite` moves the outputs into
        previous/<UTC time>/ and returns that folder."""
        outputs = self._outputs()
        if not outputs or self.stored == self.wanted:
            return None
        if overwrite:
            return self._move_aside(outputs)
        hint = (f"use a new --workdir, or --config.overwrite=True to move the old outputs into "
                f"{self.workdir / PREVIOUS}/<time>/ (nothing is deleted)")  # fmt: skip
        if self.stored is None:
            shown = ", ".join(p.name for p in outputs[:5]) + (" ..." if len(outputs) > 5 else "")
            raise WorkdirMismatchError(f"{self.workdir} holds files that no embed, predict or select run made "
                                       f"(no config.json): {shown}. {hint[:1].upper()}{hint[1:]}.")  # fmt: skip
        grows = tuple(f"identity.{k}" if k == "input" else k for k in self.growable)
        stored = fingerprint(self.stored, ignore=grows)
        ensure_resumable(stored, fingerprint(self.wanted, ignore=grows), what=f"the output in {self.workdir}",
                         old_name="workdir", hint=hint)  # fmt: skip
        return None

    def _move_aside(self, outputs: list[pathlib.Path]) -> pathlib.Path:
        stamp = _timestamp()
        target = self.workdir / PREVIOUS / stamp
        for k in range(1, 1000):
            if not target.exists():
                break
            target = self.workdir / PREVIOUS / f"{stamp}-{k}"
        target.mkdir(parents=True)
        for path in outputs:
            os.rename(path, target / path.name)
        return target

    def start(self, data: Input | SkippingInput) -> None:
        """Marks the outputs as not finished, then writes config.json and sources.csv."""
        (self.workdir / FINISHED).unlink(missing_ok=True)
        (self.workdir / "config.json").write_text(config_json(self.public, COSMETIC_KEYS + LOCATIONS))
        if data.sources():
            write_csv(self.workdir / SOURCES_CSV, ("source_id", "path"), data.sources())

    def finish(self, message: str, skipped: Sequence[Skipped], moved: pathlib.Path | None = None) -> str:
        """Writes skipped.csv and finished.json (last); returns the line to print, with the skipped files counted
        and where earlier outputs went."""
        write_csv(self.workdir / SKIPPED_CSV, ("source_id", "reason"), [(s.source_id, s.reason) for s in skipped])
        if skipped:
            message += f"; skipped {len(skipped)} unreadable file(s), listed in {self.workdir / SKIPPED_CSV}"
        if moved is not None:
            message += f"; the earlier outputs are in {moved}"
        write_json(self.workdir / FINISHED, {"fingerprint_sha256": digest(self.wanted), "message": message,
                                             "skipped": len(skipped)})  # fmt: skip
        return message
