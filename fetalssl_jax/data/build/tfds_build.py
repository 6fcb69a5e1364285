"""What the two TFDS builders in `data_builders/` share: Beam or in-process generation, lenient skipping, the
ArrayRecord default.

The same per-item function makes the records of one video / image in both modes. Without Beam options the
builder yields the records in this process; with `DownloadConfig(beam_runner=...)` or `beam_options` (the
`tfds build --beam_pipeline_options=...` flag) it returns a Beam PTransform, so a Dataflow, Flink or Spark runner
spreads the decoding over many workers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds

from fetalssl_jax.data.build.readers import DataError

log = logging.getLogger("fetalssl_jax.data")

ON_ERROR = ("raise", "skip")


class SkippingExamples:
    """Calls `make(item)` -> iterable of (key, example); a DataError either propagates ('raise') or is logged
    with the item's name, counted, and the item yields nothing ('skip'). Never a partial item: `make` must
    validate everything before its first yield, and its output is materialised before anything is emitted."""

    def __init__(self, make: Callable[[Any], Iterable[tuple[str, dict]]], on_error: str, kind: str):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
        self.make, self.on_error, self.kind = make, on_error, kind
        self.skipped: list[str] = []  # in-process mode only; Beam counts in its `skipped_<kind>` metric

    def __call__(self, item: Any) -> list[tuple[str, dict]]:
        try:
            return list(self.make(item))
        except DataError as e:
            if self.on_error == "raise":
                raise
            log.warning("skipped %s: %s", self.kind, e)
            self.skipped.append(str(e))
            try:
                import apache_beam as beam

                beam.metrics.Metrics.counter("fetalssl_jax", f"skipped_{self.kind}").inc()
            except ImportError:
                pass
            return []


class BeamOrLocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes ArrayRecord by default (random access for `as_data_source`, which the training pipeline reads by
    record index); generates with Beam only when the download config asks for a Beam runner or options."""

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)
        self._use_beam = False

    def _generate_splits(self, dl_manager, download_config):
        # TFDS hands the Beam settings to the split writer only; the builder needs them to choose what
        # `_generate_examples` returns.
        self._use_beam = download_config.beam_runner is not None or download_config.beam_options is not None
        return super()._generate_splits(dl_manager, download_config)

    def _emit(self, items: Sequence[Any], examples: SkippingExamples, label: str) -> Any:
        """(key, example) pairs of all items: a Beam PTransform under Beam, else a generator.

        In-process, the number of skipped items goes to the build log and to `metadata.json` as
        `skipped_<kind>_<label>` (counts only: file names can name patients); under Beam it is the
        `skipped_<kind>` counter of the pipeline's metrics, with a warning per item in the workers' logs."""
        if self._use_beam:
            import apache_beam as beam

            return f"Create_{label}" >> beam.Create(list(items)) | f"Examples_{label}" >> beam.FlatMap(examples)

        def generate() -> Iterator[tuple[str, dict]]:
            for item in items:
                yield from examples(item)
            # written with dataset_info after the generation (download_and_prepare saves the info last)
            self.info.metadata[f"skipped_{examples.kind}_{label}"] = len(examples.skipped)
            if examples.skipped:
                log.warning("%s: skipped %d %s (on_error='skip'), see the warnings above", label,
                            len(examples.skipped), examples.kind)  # fmt: skip

        return generate()
