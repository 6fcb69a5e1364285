"""Files that cannot be read, skipped instead of stopping the run (`on_error = "skip"`, the default of embed,
predict and select): a corrupt or truncated video, an unreadable image (`readers.DataError`) or a file the system
cannot read (OSError) is left out, and the run goes on with the others.

Each skipped file is recorded by its salted source id and the reason in one line with its path left out (the
file's path and name are replaced by "<file>"; `sources.csv` maps the id back to the file, locally). With
`on_error = "raise"` the first bad file stops the run, as before. Built datasets (tfds:) have no files to skip.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

from fetalssl_jax.apply.inputs import FrameBlock, Input
from fetalssl_jax.data.build import readers

log = logging.getLogger("fetalssl_jax")

ON_ERROR = ("skip", "raise")
BAD_FILE_ERRORS = (readers.DataError, OSError)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file left out: its salted source id and why (one line, no path)."""

    source_id: str
    reason: str


def reason_without_path(error: BaseException, names: Sequence[str]) -> str:
    """The error's message in one line, every one of `names` (the file's path, its name in the input ...) replaced
    by "<file>", longest first; a leading "<file>: " dropped."""
    text = " ".join(str(error).split()) or type(error).__name__
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        text = text.replace(name, "<file>")
    return text.removeprefix("<file>: ").removeprefix("<file>::<file>: ")


class SkippingInput:
    """An `Input` whose `blocks` leave out the videos / images that cannot be read (with `on_error = "skip"`),
    recording each in `skipped` (once, however often the input is read). Every other attribute is the input's."""

    def __init__(self, data: Input, on_error: str = "skip"):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error = {on_error!r}: must be one of {ON_ERROR}")
        self.data = data
        self.on_error = on_error
        self.skipped: list[Skipped] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.data, name)

    def blocks(self, image_size: int, frame_skip: int = 5, chunk: int = 256) -> Iterator[FrameBlock]:
        """`Input.blocks`, without the files that cannot be read (the files skipped before are not read again). A
        video, or a chunk of images, is read whole before it is handed on; a chunk with a bad image image by image."""
        data = self.data
        if self.on_error == "raise" or data.kind == "tfds":
            yield from data.blocks(image_size, frame_skip, chunk)
            return
        ids = [source_id for source_id, _ in data.sources()]
        if data.is_video:
            parts = [(dataclasses.replace(data, videos=(ref,)), [i]) for i, ref in enumerate(data.videos)]
        else:
            n = len(data.images)
            parts = [(dataclasses.replace(data, images=data.images[s : s + chunk]), list(range(s, min(s + chunk, n))))
                     for s in range(0, n, chunk)]  # fmt: skip
        for part, rows in parts:
            if len(rows) > 1 and not any(self._was_skipped(ids[i]) for i in rows):
                blocks = self._read(part, image_size, frame_skip, chunk)
                if blocks is not None:
                    yield from blocks
                    continue
            singles = [(part, rows[0])] if len(rows) == 1 else [
                (dataclasses.replace(data, images=(data.images[i],)), i) for i in rows]  # fmt: skip
            for one, i in singles:
                if not self._was_skipped(ids[i]):
                    yield from self._read(one, image_size, frame_skip, chunk, ids[i]) or ()

    def _was_skipped(self, source_id: str) -> bool:
        return any(s.source_id == source_id for s in self.skipped)

    def _read(
        self, part: Input, image_size: int, frame_skip: int, chunk: int, source_id: str = ""
    ) -> list[FrameBlock] | None:
        """The blocks of `part` (one video, or a chunk of images), or None if it cannot be read; with `source_id` (a
        single file) the failure is recorded as skipped."""
        try:
            return list(part.blocks(image_size, frame_skip, chunk))
        except BAD_FILE_ERRORS as error:
            if source_id:
                self._skip(part, source_id, error)
            return None

    def _skip(self, part: Input, source_id: str, error: BaseException) -> None:
        if part.is_video:
            (ref,) = part.videos
            names = [str(ref.path), ref.name, ref.relpath, pathlib.PurePath(ref.relpath).name]
        else:
            (path,) = part.images
            names = [str(path), path.relative_to(part.root).as_posix(), path.name]
        names.append(str(part.root))
        self.skipped.append(Skipped(source_id, reason_without_path(error, names)))
        log.warning("skipped %s", " ".join(str(error).split()))  # the message names the file (on this machine)
