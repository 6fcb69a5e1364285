"""The pretraining loop: everything it does is read from the config.

data -> sharded uint8 batches -> compiled train step (augment, loss, update) -> metrics, checkpoints, kNN /
linear-probe evaluation -> exported backbone. Resumes from the newest checkpoint in the workdir if the same config
(up to cosmetic keys) wrote it; SIGTERM or a first Ctrl-C saves a checkpoint and returns; a non-finite loss stops
the run and keeps the last good checkpoint. The run holds the workdir's lock (`runtime/workdir_lock.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import pathlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from fetalssl_jax.data import augment, sources
from fetalssl_jax.data.pipeline import BatchSampler, device_batches
from fetalssl_jax.data.tfds_source import RecordDataset, RecordSampler
from fetalssl_jax.eval import evaluator as evaluator_lib
from fetalssl_jax.eval.evaluator import Evaluator
from fetalssl_jax.eval.few_label import shot_name
from fetalssl_jax.eval.frozen import FrozenEval, format_table
from fetalssl_jax.methods import get_method, registered_methods
from fetalssl_jax.methods.base import Method
from fetalssl_jax.models import backbone as backbone_lib
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh, replicated
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.train import optim
from fetalssl_jax.train.checkpoint import Checkpointer, export_backbone
from fetalssl_jax.train.durations import Durations, durations
from fetalssl_jax.train.fingerprint import WorkdirMismatchError, config_json, fingerprint
from fetalssl_jax.train.health import MIN_RELATIVE_CHANGE, Tally, check_finite, check_tally, relative_weight_change
from fetalssl_jax.train.monitor import Monitor
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.state import TrainState
from fetalssl_jax.train.step import init_state, make_train_step
from fetalssl_jax.validation import Checks, is_int, raise_if

log = logging.getLogger("fetalssl_jax")

# Keys that never change a pretraining run's trajectory: how it reports and how often it saves, where the compiler
# caches, how many batches are prepared ahead, and the frozen-backbone evaluation (it reads the weights, never
# changes them). `allow_extend` only permits a change of the run's length.
COSMETIC_KEYS = (
    "progress_bar", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "compilation_cache_dir",
    "data.prefetch", "eval", "allow_extend",
)  # fmt: skip


def problems(config: ml_collections.ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a pretraining config: the loop's own keys, and those of the method, the backbone, the data,
    the views, the optimiser and the evaluation, each checked by the code that reads it."""
    c = Checks(config, prefix)
    c.one_of("method", registered_methods())
    c.integer("seed", 0)
    c.integer("batch_size")
    batch, devices = c.get("batch_size"), jax.device_count()
    if is_int(batch) and batch > 0 and batch % devices:
        c.fail("batch_size", batch, f"must be divisible by the {devices} devices (it is the global batch)")
    c.steps_and_epochs(integer_epochs=False)
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        c.integer(key)
    for key in ("allow_extend", "progress_bar"):
        c.boolean(key)
    backbone_lib.check_config(c)
    sources.check_config(c)
    for view in ("augment.view1", "augment.view2"):
        augment.check_view(c, view)
    optim.check_config(c)
    evaluator_lib.check_config(c)
    if config.get("method") in registered_methods():
        get_method(config.method).check_config(c)
    return c.problems


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every value of a pretraining config that no run can use, before any data is made
    or anything compiled."""
    raise_if(problems(config))


@dataclasses.dataclass
class RunResult:
    """How a run ended: 'finished' or 'preempted', at which step, and its evaluation."""

    status: str
    step: int
    workdir: pathlib.Path
    evaluation: FrozenEval | None = None


INTERRUPTED = b"Ctrl-C: stopping after this step and its checkpoint; press Ctrl-C again to abort at once\n"
_SIGNALLED = threading.Event()  # this process's own handlers caught SIGTERM or Ctrl-C (`stopped_by_signal`)


def stopped_by_signal() -> bool:
    """Whether a run of this process stopped early on its own SIGTERM / Ctrl-C handler (`preemption_signal`)."""
    return _SIGNALLED.is_set()


def _abort(signum, frame):
    """A second Ctrl-C: KeyboardInterrupt at once. Not `signal.default_int_handler`: asyncio.run (orbax's checkpoint
    write calls it) replaces that one with its own, which cancels the write's task and leaves a CancelledError."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def preemption_signal() -> Iterator[Callable[[int], bool]]:
    """`preempted(step)`: whether to stop after `step` because of a pre-emption notice (SIGTERM; pre-emptible TPUs
    and spot GPUs send it first) or a first Ctrl-C (SIGINT, said in one line), while the block runs; a second
    Ctrl-C raises KeyboardInterrupt at once.

    With several processes JAX's pre-emption service (started by jax.distributed) catches SIGTERM on any of them
    and agrees on one step at which all stop; it must be asked at every step, by every process, and a Ctrl-C is
    passed on to it as a SIGTERM of this process. With one, the handlers set a flag."""
    several = jax.process_count() > 1
    event = threading.Event()
    preempted = multihost_utils.reached_preemption_sync_point if several else lambda step: event.is_set()
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield preempted
        return

    def interrupted(signum, frame):
        signal.signal(signal.SIGINT, _abort)
        os.write(2, INTERRUPTED)  # not print: the handler may run inside a write to stderr (the progress bar)
        if several:
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            _SIGNALLED.set()
            event.set()

    def terminated(signum, frame):
        _SIGNALLED.set()
        event.set()

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, interrupted)}
    if not several:
        previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, terminated)
    try:
        yield preempted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def backbone_variables(state: TrainState) -> dict[str, Any]:
    """The online backbone's params and BatchNorm statistics."""
    return backbone_lib.backbone_variables({"params": state.params, **state.model_state})


def make_sampler(
    config, method: Method, dataset, process_index: int = 0, process_count: int = 1
) -> BatchSampler | RecordSampler:
    """The batch sampler of `config` for `method`'s kind of example (in-memory frames or TFDS records)."""
    data = config.data
    if isinstance(dataset, RecordDataset):
        return RecordSampler(dataset, config.batch_size, config.seed, process_index, process_count)
    return BatchSampler(
        dataset, config.batch_size, config.seed, method.example_mode(config), data.max_gap,
        data.get("clip_length", 1), data.get("clip_stride", 1), process_index, process_count,
    )  # fmt: skip


@dataclasses.dataclass
class _Run:
    """What one pretraining run trains with, resolved from its config before the first step."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    method: Method
    dataset: Any
    sampler: BatchSampler | RecordSampler
    durations: Durations
    optimizer: Any
    checkpointer: Checkpointer
    mesh: jax.sharding.Mesh

    @property
    def is_main(self) -> bool:
        return jax.process_index() == 0

    @property
    def total_steps(self) -> int:
        return self.durations.total


def _open_run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> _Run:
    """Validates the config and checks the workdir's checkpoint before the data is made (a refused resume costs
    nothing), then makes the data, the method at the run's length and its optimiser."""
    validate(config)
    make_workdir(workdir)
    method_cls = get_method(config.method)
    wanted = {**fingerprint(config, COSMETIC_KEYS), **method_cls.external_inputs(config)}
    checkpointer = Checkpointer(workdir, wanted, keep=config.keep_checkpoints,
                                allow_extend=bool(config.allow_extend))  # fmt: skip
    checkpointer.check_resumable()
    enable_compilation_cache(config.compilation_cache_dir)
    dataset = sources.pretraining_frames(config, method_cls.example_mode(config))
    sampler = make_sampler(config, method_cls, dataset, jax.process_index(), jax.process_count())
    steps = durations(config, sampler.steps_per_epoch)
    total_steps = steps.total
    latest = checkpointer.latest_step()
    if latest is not None and latest > total_steps:  # only with allow_extend: steps past the new end cannot be undone
        raise WorkdirMismatchError(
            f"{checkpointer.directory} holds a checkpoint at step {latest}, past this config's {total_steps} steps; "
            "a run can be extended, not shortened. Use a new --workdir."
        )
    method = method_cls(config, total_steps)
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, total_steps)
    # `validate` checked that the batch divides over the mesh's devices
    return _Run(config, workdir, method, dataset, sampler, steps, optimizer, checkpointer, make_mesh())


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
        (run.workdir / "config.json").write_text(config_json(config, COSMETIC_KEYS))
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
    result = evaluator(jax.device_get(backbone_variables(state)), f"{run.method.name} (step {int(state.step)})", shots)
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
    config, total_steps, every = run.config, run.total_steps, run.durations
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
                logged = step % every.log == 0 or done == record.health_check_step
                if logged:
                    change = weight_change(state.params["backbone"], initial_params)
                    metrics = {**metrics, **{f"weight_change/{k}": v for k, v in change.items()}}
                if pending is not None:
                    record(*pending)  # the previous recorded step's metrics: fetched while this step runs
                    pending = None
                stop = preempted(done) or done == stop_at_step
                periodic_eval = every.eval > 0 and done % every.eval == 0
                save = stop or done == total_steps or done % every.checkpoint == 0 or periodic_eval
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


@exclusive_workdir
def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stop_at_step: int | None = None) -> RunResult:
    """Pretrains `config.method` in `workdir`, resuming from its newest checkpoint.

    `stop_at_step` ends the run after that step as SIGTERM would (checkpoint, then return 'preempted').

    The config is validated first (ConfigError, before anything is written, generated or compiled). A checkpoint in
    `workdir` is resumed only if it was written by a config with the same fingerprint (up to `COSMETIC_KEYS`;
    num_steps / num_epochs may change with `config.allow_extend`), otherwise WorkdirMismatchError names every
    differing key.
    """
    run = _open_run(config, pathlib.Path(workdir))
    state, start_variables = _start_state(run)
    monitor = Monitor(run.workdir, int(state.step), run.total_steps, config.batch_size, run.durations.log,
                      run.is_main, config.progress_bar)  # fmt: skip
    evaluator = Evaluator(config, run.method.build_backbone(), start_variables)
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


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """The `pretrain` task of the command line: `train`, and the line to print."""
    result = train(config, workdir)
    return f"{result.status} at step {result.step}; workdir: {pathlib.Path(workdir).absolute()}"
