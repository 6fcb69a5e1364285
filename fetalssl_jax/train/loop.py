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
from fetalssl_jax.train.health import MIN_RELATIVE_CHANGE, Tally, check_finite, check_tally, relative_weight_change
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


@dataclasses.dataclass
class _Run:
    """What one pretraining run trains with, resolved from its config before the first step."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    method: Method
    dataset: Any
    sampler: BatchSampler | RecordSampler
    total_steps: int
    optimizer: Any
    checkpointer: Checkpointer
    mesh: jax.sharding.Mesh

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0


def _open_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> _Run:
    """Validates the config and checks the workdir's checkpoint before the data is made (a refused resume costs
    nothing), then makes the data, the method at the run's length and its optimiser."""
    config_lib.validate_pretraining(config)
    workdir.mkdir(parents=True, exist_ok=True)
    method_cls = get_method(config.method)
    probe = method_cls(config)  # what does not depend on the run's length (the identity, the kind of example)
    checkpointer = Checkpointer(
        workdir, probe.identity(), keep=config.keep_checkpoints,
        fingerprint=config_lib.fingerprint(config), allow_extend=bool(config.get("allow_extend", False)),
    )  # fmt: skip
    checkpointer.check_resumable()
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
    # config_lib.validate_pretraining checked that the batch divides over the mesh's devices
    return _Run(config, workdir, method, dataset, sampler, total_steps, optimizer, checkpointer, make_mesh())


def _start_state(run: _Run) -> tuple[TrainState, dict[str, Any]]:
    """(state, untrained backbone variables): the state initialised from the seed, then restored from the newest
    checkpoint if there is one; the untrained start is a baseline of the evaluation either way."""
    config = run.config
    example = jax.make_array_from_process_local_data(batch_sharding(run.mesh), run.sampler.batch(0)["frames"])
    state = init_state(run.method, run.optimizer, config.seed, example, run.mesh)
    start_variables = jax.device_get(backbone_variables(state))
    state = run.checkpointer.restore_latest(state)
    start = int(state.step)
    if run.is_main:
        (run.workdir / "config.json").write_text(config_lib.config_json(config))
        log.info(
            "%s: %d examples, %d steps/epoch, %d steps, batch %d on %d devices, %s",
            run.method.name, len(run.dataset), run.sampler.steps_per_epoch, run.total_steps, config.batch_size,
            run.mesh.size, f"resuming at step {start}" if start else "starting",
        )  # fmt: skip
    return state, start_variables


def fetch(tree: Any) -> Any:
    """The training loop's one read of device values (the metrics and tally of a recorded step), allowed through a
    device-to-host transfer guard that the steady state may run under."""
    with jax.transfer_guard_device_to_host("allow"):
        return jax.device_get(tree)


class _Recorder:
    """Checks, records and reports the metrics of the recorded steps (log, checkpoint, evaluation and last steps),
    read from the device with the `Tally` of the steps since the previous record: a non-finite loss at any step
    stops the run (naming that step and the last checkpoint), the weight change is checked once, after twice the
    warm-up."""

    def __init__(self, run: _Run, monitor: Monitor):
        config = run.config
        self.monitor = monitor
        self.checkpoints = run.checkpointer.directory
        self.last_checkpoint = run.checkpointer.latest_step()
        warmup_steps = (
            round(config.optim.warmup_epochs * run.sampler.steps_per_epoch)
            if config.optim.schedule == "warmup_cosine"
            else 0
        )
        self.health_check_step = min(run.total_steps, max(2 * warmup_steps, 50))

    def __call__(self, step: int, metrics: dict[str, jax.Array], tally: dict[str, jax.Array]) -> None:
        metrics, tally = fetch((metrics, tally))
        loss_mean = check_tally(tally, self.last_checkpoint, self.checkpoints)
        values = {k: float(v) for k, v in metrics.items()}
        check_finite(step, values, self.last_checkpoint, self.checkpoints)
        self.monitor.step(step, {**values, "loss_mean": loss_mean})
        if "weight_change/all" in values:
            change = {k.split("/", 1)[1]: v for k, v in values.items() if k.startswith("weight_change/")}
            if step + 1 == self.health_check_step and change["all"] < MIN_RELATIVE_CHANGE:
                log.warning(
                    "after %d steps the backbone's convolutions moved only %.1f %% from their initial values (per "
                    "stage: %s): it is barely training. Raise the learning rate or the LARS trust coefficient "
                    "(config.optim.trust_coefficient), or shorten the warm-up.",
                    step + 1, 100 * change["all"], ", ".join(f"{k} {100 * v:.1f} %" for k, v in change.items()),
                )  # fmt: skip


def _evaluate(
    run: _Run, evaluator: Evaluator, monitor: Monitor, state: TrainState, shots: tuple[int, ...] | None = None
) -> FrozenEval:
    """The frozen-backbone evaluation of `state`, logged (process 0) as a record of kind 'eval'."""
    result = evaluator(state, run.method.name, shots)
    if run.is_main:
        row = next(iter(result.knn))
        values = {"eval/knn_macro_f1": result.knn[row].mean, "eval/effective_rank": result.effective_rank[row]}
        for k, score in result.few_label.scores[row].items():
            values[f"eval/probe_{shot_name(k).replace('/', '_per_')}_macro_f1"] = score.mean
        monitor.evaluation(int(state.step), values)
    return result


def _train_steps(
    run: _Run, state: TrainState, start_step: int, start_params: Any, record: _Recorder,
    evaluate: Callable[..., FrozenEval], stop_at_step: int | None,
) -> tuple[TrainState, str]:  # fmt: skip
    """(state, 'finished' or 'preempted'): the steps from `start_step` (the state's) to the end or a stop,
    checkpointing every `checkpoint_every_steps`, before a periodic evaluation and at the end. Only the metrics of
    log, checkpoint, evaluation and last steps are read from the device, each while the next step runs; the other
    steps are checked on the device (`Tally`). A checkpoint is written only after the steps up to its own were
    checked. The weight change is measured from `start_params`, the untrained backbone's."""
    config, total_steps = run.config, run.total_steps
    train_step = make_train_step(run.method, run.optimizer, run.mesh)
    initial_params = jax.device_put(start_params, replicated(run.mesh))
    weight_change = jax.jit(relative_weight_change)
    tallies = Tally(replicated(run.mesh))
    batches = device_batches(run.sampler, start_step, batch_sharding(run.mesh), config.data.prefetch)
    try:
        with preemption_signal() as preempted:
            pending, tally = None, tallies.fresh()
            for step in range(start_step, total_steps):
                state, metrics = train_step(state, next(batches))
                tally = tallies.update(tally, step, metrics)
                done = step + 1
                logged = step % config.log_every_steps == 0 or done == record.health_check_step
                if logged:
                    change = weight_change(state.params["backbone"], initial_params)
                    metrics = {**metrics, **{f"weight_change/{k}": v for k, v in change.items()}}
                if pending is not None:
                    record(*pending)  # the previous recorded step's metrics: fetched while this step runs
                    pending = None
                stop = preempted(done) or done == stop_at_step
                periodic_eval = config.eval.every_steps > 0 and done % config.eval.every_steps == 0
                save = stop or done == total_steps or done % config.checkpoint_every_steps == 0 or periodic_eval
                if logged or save:
                    pending, tally = (step, metrics, tally), tallies.fresh()
                if save:
                    record(*pending)
                    pending = None
                    record.last_checkpoint = run.checkpointer.save(state)
                if periodic_eval and done < total_steps:
                    evaluate(state, tuple(config.eval.monitor_shots))
                if stop:
                    return state, "preempted"
            if pending is not None:
                record(*pending)
            record.last_checkpoint = run.checkpointer.save(state)
            return state, "finished"
    finally:
        batches.close()


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stop_at_step: int | None = None) -> RunResult:
    """Pretrains `config.method` in `workdir`, resuming from its newest checkpoint.

    `stop_at_step` ends the run after that step as SIGTERM would (checkpoint, then return 'preempted').

    The config is validated first (ConfigError, before anything is written, generated or compiled). A checkpoint in
    `workdir` is resumed only if it was written by a config with the same fingerprint (up to cosmetic keys, see
    `config_lib.fingerprint`; num_steps / num_epochs may change with `config.allow_extend`), otherwise
    CheckpointMismatchError names every differing key.
    """
    run = _open_run(config, pathlib.Path(workdir))
    state, start_variables = _start_state(run)
    monitor = Monitor(run.workdir, int(state.step), run.total_steps, config.batch_size, config.log_every_steps,
                      run.is_main, config.progress_bar)  # fmt: skip
    evaluator = Evaluator(config, run.method, start_variables)
    evaluate = functools.partial(_evaluate, run, evaluator, monitor)
    try:
        state, status = _train_steps(run, state, int(state.step), start_variables["params"], _Recorder(run, monitor),
                                     evaluate, stop_at_step)  # fmt: skip
    finally:
        monitor.close()
        run.checkpointer.close()
    step = int(state.step)
    if status == "preempted":
        log.warning("stopped at step %d; checkpoint saved in %s; run again to resume", step, run.checkpointer.directory)
        return RunResult(status, step, run.workdir)
    description = {"identity": run.method.identity(), "step": step, "image_size": config.data.image_size}
    export_backbone(run.workdir / "backbone", backbone_variables(state), description)  # every process: orbax syncs
    result = evaluate(state)
    if run.is_main:
        table = format_table(result)
        print(f"\nFrozen-backbone evaluation on the labelled test split (patients unseen in training):\n{table}\n")
        (run.workdir / "eval.json").write_text(json.dumps(result.to_dict(), indent=2))
        (run.workdir / "eval.md").write_text(table + "\n")
    return RunResult(status, step, run.workdir, result)
