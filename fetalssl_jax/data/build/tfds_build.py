"""What the two TFDS builders in `data_builders/` share: Beam or in-process generation, lenient skipping and the
skip report, one-line errors, the ArrayRecord default.

The same per-item function makes the records of one video / image in both modes. Without Beam options the
builder yields the records in this process; with `DownloadConfig(beam_runner=...)` or `beam_options` (the
`tfds build --beam_pipeline_options=...` flag) it returns a Beam PTransform, so a Dataflow, Flink or Spark runner
spreads the decoding over many workers.

A `DataError` (a bad input file, named) reaches a Python caller of `download_and_prepare` as itself; under the
`tfds build` command line it is printed as one line, `error: <message>`, and the command exits with status 2
instead of printing absl's traceback.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from fetalssl_jax.errors import DataError

log = logging.getLogger("fetalssl_jax.data")

ON_ERROR = ("raise", "skip")


class SkipItem(Exception):
    """An item that gives no record for a reason that is not a broken file (a video shorter than one clip, every
    frame colour Doppler): skipped and counted under `reason` (`count` times; `also`: more counts, e.g. the frames
    left out before) whatever `on_error` says."""

    def __init__(self, reason: str, message: str, count: int = 1, also: dict[str, int] | None = None):
        super().__init__(message)
        self.reason, self.count, self.also = reason, count, dict(also or {})


@dataclasses.dataclass
class Made:
    """What a per-item function returns: the (key, example) records, and how many parts of the item were left out
    of them, by reason (e.g. {'doppler_frames': 3})."""

    records: list[tuple[str, dict]]
    counts: dict[str, int] = dataclasses.field(default_factory=dict)


class SkippingExamples:
    """Calls `make(item)` -> `Made` (or an iterable of (key, example)); a DataError either propagates ('raise')
    or is logged with the item's name, counted, and the item yields nothing ('skip'); a SkipItem and the counts of
    a `Made` are counted under their reasons. Never a partial item: `make` must validate everything before its
    first yield, and its output is materialised before anything is emitted.

    `reasons`: the reasons reported (as 0 when nothing was left out for them)."""

    def __init__(self, make: Callable[[Any], Made | Iterable[tuple[str, dict]]], on_error: str, kind: str, reasons=()):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.make, self.on_error, self.kind, self.reasons = make, on_error, kind, tuple(reasons)
        self.skipped: list[str] = []  # in-process mode only; Beam counts in its `skipped_<kind>` metric
        self.counts: collections.Counter[str] = collections.Counter()

    def __call__(self, item: Any) -> list[tuple[str, dict]]:
        try:
            made = self.make(item)
            made = made if isinstance(made, Made) else Made(list(made))
        except SkipItem as e:
            log.warning("left out %s: %s", self.kind, e)
            for reason, n in {e.reason: e.count, **e.also}.items():
                self._count(reason, n)
            return []
        except DataError as e:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s: %s", self.kind, e)
            self.skipped.append(str(e))
            self._count(self.kind, 1)
            return []
        for reason, n in made.counts.items():
            self._count(reason, n)
        return made.records

    def _count(self, reason: str, n: int) -> None:
        if reason != self.kind:
            self.counts[reason] += n
        try:
            import apache_beam as beam

            beam.metrics.Metrics.counter("fetalssl_jax", f"skipped_{reason}").inc(n)
        except ImportError:
            pass

    def report(self, label: str) -> dict[str, int]:
        """{'skipped_<kind>_<label>': bad items, 'skipped_<reason>_<label>': count, ...} for `metadata.json`."""
        counts = {f"skipped_{self.kind}_{label}": len(self.skipped)}
        counts.update({f"skipped_{r}_{label}": self.counts[r] for r in (*self.reasons, *sorted(self.counts))})
        return counts

    def summary(self) -> str:
        """What was left out, in words ('' if nothing)."""
        parts = [f"{len(self.skipped)} unreadable {self.kind} (on_error='skip')"] if self.skipped else []
        parts += [f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.counts.items()) if n]
        return ", ".join(parts)


def _under_tfds_cli() -> bool:
    """Whether this process is the `tfds` command line (however it was started)."""
    return "tensorflow_datasets.scripts.cli.build" in sys.modules


class BeamOrLocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes ArrayRecord by default (random access for `as_data_source`, which the training pipeline reads by
    record index); generates with Beam only when the download config asks for a Beam runner or options."""

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)
        self._use_beam = False

    def download_and_prepare(self, *args, **kwargs):
        """TFDS's, with a DataError as one line and exit status 2 under the `tfds build` command line."""
        try:
            return super().download_and_prepare(*args, **kwargs)
        except DataError as error:
            if not _under_tfds_cli():
                raise
            print(f"error: {error}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def _generate_splits(self, dl_manager, download_config):
        # TFDS hands the Beam settings to the split writer only; the builder needs them to choose what
        # `_generate_examples` returns.
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        return super()._generate_splits(dl_manager, download_config)

    def _emit(self, items: Sequence[Any], examples: SkippingExamples, label: str) -> Any:
        """(key, example) pairs of all items: a Beam PTransform under Beam, else a generator.

        In-process, what was left out goes to the build log and to `metadata.json` (`SkippingExamples.report`:
        counts only, as file names can name patients), and a split left without any record is a DataError saying
        why; under Beam the counts are the pipeline's `skipped_<kind>` / `skipped_<reason>` metrics, with a
        warning per item in the workers' logs."""
        if self._use_beam:
            import apache_beam as beam

            return f"Create_{label}" >> beam.Create(list(items)) | f"Examples_{label}" >> beam.FlatMap(examples)

        def generate() -> Iterator[tuple[str, dict]]:
            emitted = 0
            for item in items:
                records = examples(item)
                emitted += len(records)
                yield from records
            # written with dataset_info after the generation (download_and_prepare saves the info last)
            self.info.metadata.update(examples.report(label))
            summary = examples.summary()
            if summary:
                log.warning("%s: left out %s; see the warnings above", label, summary)
            if not emitted:
                raise DataError(f"the {label} split has no records: its {len(items)} {examples.kind} gave none "
                                f"({summary or 'nothing to make records of'}); fix or remove them, or put more "
                                f"{examples.kind} in the split (its fraction)")  # fmt: skip

        return generate()
