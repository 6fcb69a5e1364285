"""The pretraining loop: everything it does is read from the config.

data -> sharded uint8 batches -> compiled train step (augment, loss, update) -> metrics, checkpoints, kNN /
linear-probe evaluation -> exported backbone. Resumes from the newest checkpoint in the workdir if the same config
(up to cosmetic keys) wrote it; SIGTERM saves a checkpoint and returns; a non-finite loss stops the run and keeps
the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import pathlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from fetalssl_jax import config_lib
from fetalssl_jax.data import sources
from fetalssl_jax.data.pipeline import BatchSampler, device_batches
from fetalssl_jax.data.tfds_source import RecordDataset, RecordSampler
from fetalssl_jax.eval.few_label import shot_name
from fetalssl_jax.eval.frozen import FrozenEval, evaluate_inits, format_table
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.base import Method
from fetalssl_jax.models.resnet import random_backbone_variables
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh, replicated
from fetalssl_jax.train.checkpoint import Checkpointer, CheckpointMismatchError, export_backbone
from fetalssl_jax.train.health import MIN_RELATIVE_CHANGE, check_finite, relative_weight_change
from fetalssl_jax.train.monitor import Monitor
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.state import TrainState
from fetalssl_jax.train.step import init_state, make_train_step

log = logging.getLogger("fetalssl_jax")


@dataclasses.dataclass
class RunResult:
    """How a run ended: 'finished' or 'preempted', at which step, and its evaluation."""

    status: str
    step: int
    workdir: pathlib.Path
    evaluation: FrozenEval | None = None


@contextlib.contextmanager
def preemption_signal() -> Iterator[Callable[[int], bool]]:
    """`preempted(step)`: whether to stop after `step` because of a pre-emption notice (SIGTERM; pre-emptible TPUs
    and spot GPUs send it first), while the block runs.

    With several processes JAX's pre-emption service (started by jax.distributed) catches SIGTERM on any of them
    and agrees on one step at which all stop; it must be asked at every step, by every process. With one, a SIGTERM
    handler sets a flag."""
    if jax.process_count() > 1:
        yield multihost_utils.reached_preemption_sync_point
        return
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield lambda step: event.is_set()
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    try:
        yield lambda step: event.is_set()
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


RANDOM_INIT = "random init (torchvision)"
SSL_START = "untrained SSL start"


class Evaluator:
    """kNN and few-label probes on the labelled splits, beside both baselines: torchvision's default random init
    and the method's own untrained start (zero-initialised residual BN), so an effect of the initialisation is
    never mistaken for learning. Baseline features are extracted once per run."""

    def __init__(self, config: ml_collections.ConfigDict, method: Method, start_variables: dict[str, Any]):
        self.config = config
        self.backbone = method.build_backbone()
        self.start_variables = start_variables
        self._splits = None
        self._baseline_features: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def splits(self):
        if self._splits is None:
            self._splits = sources.labelled_splits(self.config)
        return self._splits

    @functools.cached_property
    def baselines(self) -> dict[str, dict[str, Any]]:
        """The baselines' variables (none without `eval.compare_random_init`), made once per run."""
        if not self.config.eval.compare_random_init:
            return {}
        model = self.config.model
        # torchvision's default random init: with the zero-initialised last BN of every block (the SSL start), a
        # ResNet only passes its input through the strided 1x1 shortcuts and sees a sparse grid of pixels.
        return {
            RANDOM_INIT: random_backbone_variables(model.arch, int(model.width), self.config.seed),
            SSL_START: self.start_variables,
        }

    def __call__(self, state: TrainState, name: str, shots: tuple[int, ...] | None = None) -> FrozenEval:
        e = self.config.eval
        # on the host: every process evaluates the same replicated variables by itself, no collectives
        inits = {f"{name} (step {int(state.step)})": jax.device_get(backbone_variables(state)), **self.baselines}
        result = evaluate_inits(
            self.backbone, inits, self.splits, self.config.data.image_size, len(sources.class_names(self.config)),
            baselines=tuple(n for n in (RANDOM_INIT, SSL_START) if n in inits), knn_k=e.knn_k,
            batch_size=e.batch_size, shots=tuple(shots or e.shots), draws=e.draws, seed=self.config.seed,
            probe_max_iter=e.probe_max_iter, features=self._baseline_features,
        )  # fmt: skip
        if not self._baseline_features and len(inits) > 1:
            self._baseline_features = {n: f for n, f in result.features.items() if n in (RANDOM_INIT, SSL_START)}
        return result


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stop_at_step: int | None = None) -> RunResult:
    """Pretrains `config.method` in `workdir`, resuming from its newest checkpoint.

    `stop_at_step` ends the run after that step as SIGTERM would (checkpoint, then return 'preempted').

    The config is validated first (ConfigError, before anything is written, generated or compiled). A checkpoint in
    `workdir` is resumed only if it was written by a config with the same fingerprint (up to cosmetic keys, see
    `config_lib.fingerprint`; num_steps / num_epochs may change with `config.allow_extend`), otherwise
    CheckpointMismatchError names every differing key.
    """
    config_lib.validate_pretraining(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    method_cls = get_method(config.method)
    probe = method_cls(config)  # what does not depend on the run's length (the identity, the kind of example)
    checkpointer = Checkpointer(
        workdir, probe.identity(), keep=config.keep_checkpoints,
        fingerprint=config_lib.fingerprint(config), allow_extend=bool(config.get("allow_extend", False)),
    )  # fmt: skip
    checkpointer.check_resumable()  # before the data is made: a refused resume costs nothing
    enable_compilation_cache(config.compilation_cache_dir)
    dataset = sources.pretraining_frames(config, probe.example_mode)
    sampler = make_sampler(config, probe, dataset, jax.process_index(), jax.process_count())
    total_steps = total_steps_of(config, sampler.steps_per_epoch)
    latest = checkpointer.latest_step()
    if latest is not None and latest > total_steps:  # only with allow_extend: steps past the new end cannot be undone
        raise CheckpointMismatchError(
            f"{checkpointer.directory} holds a checkpoint at step {latest}, past this config's {total_steps} steps; "
            "a run can be extended, not shortened. Use a new --workdir."
        )
    method = method_cls(config, total_steps)
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, total_steps)

    mesh = make_mesh()  # config_lib.validate_pretraining checked that the batch divides over its devices
    data_sharding = batch_sharding(mesh)
    example = jax.make_array_from_process_local_data(data_sharding, sampler.batch(0)["frames"])
    state = init_state(method, optimizer, config.seed, example, mesh)
    start_variables = jax.device_get(backbone_variables(state))  # the untrained start, a baseline of the evaluation
    initial_params = jax.device_put(start_variables["params"], replicated(mesh))
    weight_change = jax.jit(relative_weight_change)

    state = checkpointer.restore_latest(state)
    start = int(state.step)
    if is_main:
        (workdir / "config.json").write_text(config_lib.config_json(config))
        log.info(
            "%s: %d examples, %d steps/epoch, %d steps, batch %d on %d devices, %s",
            method.name, len(dataset), sampler.steps_per_epoch, total_steps, config.batch_size, mesh.size,
            f"resuming at step {start}" if start else "starting",
        )  # fmt: skip

    monitor = Monitor(
        workdir, start, total_steps, config.batch_size, config.log_every_steps, is_main, config.progress_bar
    )
    evaluator = Evaluator(config, method, start_variables)
    warmup_steps = (
        round(config.optim.warmup_epochs * sampler.steps_per_epoch) if config.optim.schedule == "warmup_cosine" else 0
    )
    health_check_step = min(total_steps, max(2 * warmup_steps, 50))
    train_step = make_train_step(method, optimizer, mesh)
    last_checkpoint = checkpointer.latest_step()

    def record(step: int, metrics: dict[str, jax.Array]) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, values, last_checkpoint, checkpointer.directory)
        monitor.step(step, values)
        if "weight_change/all" in values:
            check_health(step, {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("weight_change/")})

    def check_health(step: int, change: dict[str, float]) -> None:
        if step + 1 == health_check_step and change["all"] < MIN_RELATIVE_CHANGE:
            log.warning(
                "after %d steps the backbone's convolutions moved only %.1f %% from their initial values (per stage: "
                "%s): it is barely training. Raise the learning rate or the LARS trust coefficient "
                "(config.optim.trust_coefficient), or shorten the warm-up.",
                step + 1, 100 * change["all"], ", ".join(f"{k} {100 * v:.1f} %" for k, v in change.items()),
            )  # fmt: skip

    def evaluate(name: str, shots: tuple[int, ...] | None = None) -> FrozenEval:
        result = evaluator(state, name, shots)
        if is_main:
            row = next(iter(result.knn))
            values = {"eval/knn_macro_f1": result.knn[row].mean, "eval/effective_rank": result.effective_rank[row]}
            for k, score in result.few_label.scores[row].items():
                values[f"eval/probe_{shot_name(k).replace('/', '_per_')}_macro_f1"] = score.mean
            monitor.evaluation(int(state.step), values)
        return result

    status = "finished"
    batches = device_batches(sampler, start, data_sharding, config.data.prefetch)
    try:
        with preemption_signal() as preempted:
            pending = None
            for step in range(start, total_steps):
                state, metrics = train_step(state, next(batches))
                if step % config.log_every_steps == 0 or step + 1 == health_check_step:
                    change = weight_change(state.params["backbone"], initial_params)
                    metrics = {**metrics, **{f"weight_change/{k}": v for k, v in change.items()}}
                if pending is not None:
                    record(*pending)  # previous step's metrics: fetched while this step runs
                pending = (step, metrics)
                done = step + 1
                stop = preempted(done) or done == stop_at_step
                periodic_eval = config.eval.every_steps > 0 and done % config.eval.every_steps == 0
                if stop or done == total_steps or done % config.checkpoint_every_steps == 0 or periodic_eval:
                    record(*pending)
                    pending = None
                    last_checkpoint = checkpointer.save(state)
                if periodic_eval and done < total_steps:
                    evaluate(method.name, tuple(config.eval.monitor_shots))
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
    export_backbone(workdir / "backbone", backbone_variables(state), description)  # every process: orbax syncs them
    result = evaluate(method.name)
    if is_main:
        table = format_table(result)
        print(f"\nFrozen-backbone evaluation on the labelled test split (patients unseen in training):\n{table}\n")
        (workdir / "eval.json").write_text(json.dumps(result.to_dict(), indent=2))
        (workdir / "eval.md").write_text(table + "\n")
    return RunResult(status, step, workdir, result)
