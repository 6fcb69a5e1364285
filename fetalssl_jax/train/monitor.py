"""What a run reports while it trains: a progress bar, metrics.jsonl and TensorBoard scalars."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Mapping

import tqdm

from fetalssl_jax.runtime.tensorflow import import_tensorflow


def append_metrics(metrics_file: pathlib.Path, record: Mapping[str, object]) -> None:
    """Appends one record as a line of metrics.jsonl."""
    with metrics_file.open("a") as f:
        f.write(json.dumps(record) + "\n")


def make_progress_bar(total: int, initial: int, enabled: bool, unit: str = "step") -> tqdm.tqdm:
    """The terminal progress bar of a run (disabled: a no-op object with the same methods)."""
    return tqdm.tqdm(total=total, initial=initial, disable=not enabled, unit=unit, dynamic_ncols=True)


def _before(record: Mapping, start_step: int) -> bool:
    """Whether a record was written before a run resumed at `start_step` (steps done): a step record names the
    0-based step, an evaluation record the number of steps done."""
    return record["step"] < start_step or record.get("kind") == "eval" and record["step"] == start_step


def _is_eval(record: Mapping, step: int) -> bool:
    return record.get("kind") == "eval" and record["step"] == step


def truncate_metrics(metrics_file: pathlib.Path, start_step: int) -> None:
    """Drops the records written after the checkpoint a run resumes from (`start_step`) from a metrics.jsonl, so
    that a resumed run's file reads as an uninterrupted one's; atomic. No file: nothing to do."""
    if not metrics_file.exists():
        return
    kept = [line for line in metrics_file.read_text().splitlines() if line and _before(json.loads(line), start_step)]
    tmp = metrics_file.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(metrics_file)


class Monitor:
    """Writes the metrics of the recorded steps (process 0 only) and shows step, loss, learning rate and images/s."""

    def __init__(
        self,
        workdir: pathlib.Path,
        start_step: int,
        total_steps: int,
        batch_size: int,
        log_every: int,
        enabled: bool = True,
        progress_bar: bool = True,
    ):
        self.enabled = enabled
        self.batch_size = batch_size
        self.log_every = max(1, log_every)
        self.metrics_file = workdir / "metrics.jsonl"
        self._writer = None
        self._tb_dir = workdir / "tensorboard"
        self._last_time = None
        self._last_step = start_step - 1
        self._images_per_s = 0.0
        if enabled:
            truncate_metrics(self.metrics_file, start_step)
        self.bar = make_progress_bar(total_steps, start_step, enabled and progress_bar)

    @property
    def writer(self):
        if self._writer is None:
            self._writer = import_tensorflow().summary.create_file_writer(str(self._tb_dir))
        return self._writer

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """TensorBoard scalars at `step`."""
        if not self.enabled:
            return
        tf = import_tensorflow()
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def evaluation(self, step: int, values: Mapping[str, float]) -> None:
        """An evaluation after `step` steps: a metrics.jsonl line of kind 'eval' (replacing one of the same step, as
        a rerun of a finished run evaluates again) and TensorBoard scalars."""
        if not self.enabled:
            return
        if self.metrics_file.exists():
            lines = self.metrics_file.read_text().splitlines()
            kept = [line for line in lines if line and not _is_eval(json.loads(line), step)]
            if len(kept) < len(lines):
                tmp = self.metrics_file.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                tmp.replace(self.metrics_file)
        append_metrics(self.metrics_file, {"step": step, "kind": "eval", **{k: float(v) for k, v in values.items()}})
        self.scalars(step, values)

    def step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records the metrics of the (0-based) step `step`, just completed; the steps since the previous record
        count towards images/s and the progress bar."""
        now, steps = time.perf_counter(), step - self._last_step
        if self._last_time is not None:
            rate = steps * self.batch_size / max(now - self._last_time, 1e-9)
            self._images_per_s = rate if self._images_per_s == 0 else 0.9 * self._images_per_s + 0.1 * rate
        self._last_time = now
        self._record(step, metrics)

    def steps(self, start: int, records: list[Mapping[str, float]], seconds: float) -> None:
        """Records the metrics of steps `start`, `start` + 1, ... fetched together, trained in `seconds`."""
        self._images_per_s = self.batch_size * len(records) / max(seconds, 1e-9)
        self._last_time = None
        for offset, metrics in enumerate(records):
            self._record(start + offset, metrics)

    def _record(self, step: int, metrics: Mapping[str, float]) -> None:
        steps, self._last_step = step - self._last_step, step
        if not self.enabled:
            return
        record = {"step": step, **{k: float(v) for k, v in metrics.items()}, "images_per_s": self._images_per_s}
        append_metrics(self.metrics_file, record)
        self.bar.update(steps)
        if step % self.log_every == 0:
            self.bar.set_postfix(
                loss=f"{record['loss']:.4g}",
                lr=f"{record.get('lr', 0.0):.3g}",
                img_s=f"{self._images_per_s:.1f}",
            )
            self.scalars(step, {f"train/{k}": v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        self.bar.close()
        if self._writer is not None:
            self._writer.flush()


def read_metrics(workdir: str | pathlib.Path, kind: str = "train") -> list[dict[str, float]]:
    """The records of metrics.jsonl of one kind, in step order: 'train' (one per log, checkpoint, evaluation and
    last step; `loss_mean` is the mean loss since the previous record) or 'eval' (periodic
    evaluations: kNN and few-label macro-F1, effective rank)."""
    path = pathlib.Path(workdir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [r for r in records if r.get("kind", "train") == kind]
