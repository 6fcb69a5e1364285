"""The pretraining loop: everything it does is read from the config.

data -> sharded uint8 batches -> compiled train step (augment, loss, update) -> metrics, checkpoints, kNN /
linear-probe evaluation -> exported backbone. Resumes from the newest checkpoint in the workdir; SIGTERM
saves a checkpoint and returns; a non-finite loss stops the run and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np

from fetalssl_jax.data import sources
from fetalssl_jax.data.pipeline import BatchSampler, device_batches
from fetalssl_jax.data.tfds_source import RecordDataset, RecordSampler
from fetalssl_jax.downstream.backbones import random_backbone_variables
from fetalssl_jax.eval.frozen import FrozenEval, evaluate_backbone, format_table
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.base import Method
from fetalssl_jax.train.checkpoint import Checkpointer, export_backbone
from fetalssl_jax.train.monitor import Monitor
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.state import TrainState
from fetalssl_jax.train.step import (
    batch_sharding,
    enable_compilation_cache,
    init_state,
    make_mesh,
    make_train_step,
)

log = logging.getLogger("fetalssl_jax")


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN or infinite."""


@dataclasses.dataclass
class RunResult:
    """How a run ended: 'finished' or 'preempted', at which step, and its evaluation."""

    status: str
    step: int
    workdir: pathlib.Path
    evaluation: dict[str, FrozenEval] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def preemption_signal() -> Iterator[threading.Event]:
    """An event set by SIGTERM while the block runs (pre-emptible TPUs and spot GPUs send SIGTERM first)."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


def backbone_variables(state: TrainState) -> dict[str, Any]:
    """The online backbone's params and BatchNorm statistics."""
    return {"params": state.params["backbone"], "batch_stats": state.model_state["batch_stats"]["backbone"]}


def make_sampler(
    config, method: Method, dataset, process_index: int = 0, process_count: int = 1
) -> BatchSampler | RecordSampler:
    """The batch sampler of `config` for `method`'s kind of example (in-memory frames or TFDS records)."""
    data = config.data
    if isinstance(dataset, RecordDataset):
        return RecordSampler(dataset, config.batch_size, config.seed, process_index, process_count)
    return BatchSampler(
        dataset, config.batch_size, config.seed, method.example_mode, data.max_gap, data.clip_length,
        data.clip_stride, process_index, process_count,
    )  # fmt: skip


def total_steps_of(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`num_steps` if set, else `num_epochs` epochs."""
    return int(config.num_steps) if config.num_steps > 0 else int(config.num_epochs * steps_per_epoch)


class Evaluator:
    """kNN and linear probe on the labelled splits; the random-init row is computed once per run."""

    def __init__(self, config: ml_collections.ConfigDict, method: Method):
        self.config = config
        self.backbone = method.build_backbone()
        self._splits = None
        self._random = None

    @property
    def splits(self):
        if self._splits is None:
            self._splits = sources.labelled_splits(self.config)
        return self._splits

    def _evaluate(self, variables) -> FrozenEval:
        e = self.config.eval
        return evaluate_backbone(
            self.backbone,
            variables,
            self.splits,
            self.config.data.image_size,
            e.knn_k,
            e.batch_size,
            e.probe_max_iter,
        )

    def __call__(self, state: TrainState, name: str) -> dict[str, FrozenEval]:
        rows = {f"{name} (step {int(state.step)})": self._evaluate(backbone_variables(state))}
        if self.config.eval.compare_random_init:
            if self._random is None:
                # torchvision's default random init: with the zero-initialised last BN of every block (the SSL
                # start), a ResNet only passes its input through the strided 1x1 shortcuts and sees a sparse
                # grid of pixels, a degenerate baseline.
                model = self.config.model
                variables = random_backbone_variables(model.arch, int(model.width), self.config.seed)
                self._random = self._evaluate(variables)
            rows["random init"] = self._random
        return rows


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stop_at_step: int | None = None) -> RunResult:
    """Pretrains `config.method` in `workdir`, resuming from its newest checkpoint.

    `stop_at_step` ends the run after that step as SIGTERM would (checkpoint, then return 'preempted').
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    enable_compilation_cache(config.compilation_cache_dir)
    is_main = jax.process_index() == 0
    method_cls = get_method(config.method)
    dataset = sources.pretraining_frames(config, method_cls(config).example_mode)
    sampler = make_sampler(config, method_cls(config), dataset, jax.process_index(), jax.process_count())
    total_steps = total_steps_of(config, sampler.steps_per_epoch)
    method = method_cls(config, total_steps)
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, total_steps)

    mesh = make_mesh()
    if config.batch_size % mesh.size:
        raise ValueError(f"batch_size {config.batch_size} is not divisible by the {mesh.size} devices")
    data_sharding = batch_sharding(mesh)
    example = jax.make_array_from_process_local_data(data_sharding, sampler.batch(0)["frames"])
    state = init_state(method, optimizer, config.seed, example, mesh)

    checkpointer = Checkpointer(workdir, method.identity(), keep=config.keep_checkpoints)
    state = checkpointer.restore_latest(state)
    start = int(state.step)
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
        log.info(
            "%s: %d examples, %d steps/epoch, %d steps, batch %d on %d devices, %s",
            method.name, len(dataset), sampler.steps_per_epoch, total_steps, config.batch_size, mesh.size,
            f"resuming at step {start}" if start else "starting",
        )  # fmt: skip

    monitor = Monitor(
        workdir, start, total_steps, config.batch_size, config.log_every_steps, is_main, config.progress_bar
    )
    evaluator = Evaluator(config, method)
    train_step = make_train_step(method, optimizer, mesh)
    last_checkpoint = checkpointer.latest_step()

    def record(step: int, metrics: dict[str, jax.Array]) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
            kept = f"the last good checkpoint (step {last_checkpoint}) is kept" if last_checkpoint else "no checkpoint"
            raise NonFiniteLossError(
                f"loss {values['loss']} / gradient norm {values['grad_norm']} at step {step}: training stopped; "
                f"{kept} in {checkpointer.directory}. Lower the learning rate or use float32 compute."
            )
        monitor.step(step, values)

    def evaluate(name: str) -> dict[str, FrozenEval]:
        rows = evaluator(state, name)
        if is_main:
            step = int(state.step)
            for row, r in rows.items():
                tag = "random" if row == "random init" else "pretrained"
                monitor.scalars(step, {f"eval/{tag}/knn_macro_f1": r.knn["macro_f1"],
                                       f"eval/{tag}/linear_macro_f1": r.linear_probe["macro_f1"]})  # fmt: skip
        return rows

    status = "finished"
    batches = device_batches(sampler, start, data_sharding, config.data.prefetch)
    try:
        with preemption_signal() as preempted:
            pending = None
            for step in range(start, total_steps):
                state, metrics = train_step(state, next(batches))
                if pending is not None:
                    record(*pending)  # previous step's metrics: fetched while this step runs
                pending = (step, metrics)
                done = step + 1
                stop = preempted.is_set() or done == stop_at_step
                periodic_eval = config.eval.every_steps > 0 and done % config.eval.every_steps == 0
                if stop or done == total_steps or done % config.checkpoint_every_steps == 0 or periodic_eval:
                    record(*pending)
                    pending = None
                    last_checkpoint = checkpointer.save(state)
                if periodic_eval and done < total_steps:
                    evaluate(method.name)
                if stop:
                    status = "preempted"
                    break
            if pending is not None:
                record(*pending)
            if status == "finished":
                last_checkpoint = checkpointer.save(state)
    finally:
        batches.close()
        monitor.close()
        checkpointer.close()

    step = int(state.step)
    if status == "preempted":
        log.warning("stopped at step %d; checkpoint saved in %s; run again to resume", step, checkpointer.directory)
        return RunResult(status, step, workdir)

    description = {"identity": method.identity(), "step": step, "image_size": config.data.image_size}
    if is_main:
        export_backbone(workdir / "backbone", backbone_variables(state), description)
    rows = evaluate(method.name)
    if is_main:
        table = format_table(rows)
        print(f"\nFrozen-backbone evaluation on the labelled test split (patients unseen in training):\n{table}\n")
        (workdir / "eval.json").write_text(json.dumps({k: dataclasses.asdict(v) for k, v in rows.items()}, indent=2))
    return RunResult(status, step, workdir, rows)
