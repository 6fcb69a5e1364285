"""Fine-tune or linear-probe a plane classifier on a few labels; select on validation; report on test.

The reference protocol: AdamW (lr 1e-3, wd 1e-6), class-weighted cross-entropy with weights from the training
counts, RandAugment(5, 5) + horizontal and vertical flips on the device, resize only for inference, the epoch with
the best validation balanced accuracy kept and scored on the test patients. The backbone is a ResNet or a ViT
(`model.arch`); a ViT fine-tunes with BEiT / MAE's layer-wise learning-rate decay (`optim.layer_decay`,
`downstream/optimizer.py`) and may warm up and decay its rate (`optim.schedule`).

The labels are a stratified `label_fraction` of the training split or `labels_per_class` images of every class.
Training runs `num_epochs` epochs, or, with `num_steps` > 0, that many optimiser steps whatever the subset size
(an epoch of 10 images is one step), validated every `eval_every_epochs` epochs or `eval_every_steps` steps and at
the end (`train.durations`).

A run writes into its workdir: ``config.json``, ``label_indices.json`` (the chosen training images),
``metrics.jsonl`` and ``tensorboard/`` (the loss of every step, and a record of kind 'eval' per validation, as
pretraining writes them), ``classifier/`` (the selected weights + ``classifier.json``, with the temperature and the
known-frame rule fitted on validation: `downstream/trust.py`), ``results.json`` (validation and test metrics,
per-class report, confusion matrix, calibration and known frames), ``confusion_matrix.{png,json}``,
``reliability_diagram.png`` and ``predictions.csv`` (calibrated probabilities, score, known). ``results.json`` is
written last: a workdir that has it is finished and is not rerun; its results are reused if the same config (up to
cosmetic keys) made them, otherwise the run is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from fetalssl_jax.data import sources
from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.data.pipeline import epoch_permutation
from fetalssl_jax.data.randaugment import rand_augment_batch
from fetalssl_jax.downstream import calibration, report
from fetalssl_jax.downstream.backbones import BackboneInit, resolve_backbone
from fetalssl_jax.downstream.labels import budget_name, choose_labels, class_weights
from fetalssl_jax.downstream.optimizer import SCHEDULES, classifier_optimizer
from fetalssl_jax.downstream.trust import RELIABILITY_PNG, fit_trust
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.frozen import map_batches, with_channel
from fetalssl_jax.methods.base import apply_model
from fetalssl_jax.models import backbone as backbone_lib
from fetalssl_jax.models.classifier import Classifier, weighted_cross_entropy
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh, replicated
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.train.checkpoint import Checkpointer
from fetalssl_jax.train.durations import Durations, durations
from fetalssl_jax.train.fingerprint import config_json, ensure_resumable, fingerprint, stored_fingerprint
from fetalssl_jax.train.health import check_finite
from fetalssl_jax.train.loop import preemption_signal
from fetalssl_jax.train.monitor import Monitor
from fetalssl_jax.train.optim import Optimizer
from fetalssl_jax.train.state import TrainState
from fetalssl_jax.train.step import make_train_step
from fetalssl_jax.validation import MISSING, Checks, is_int, is_number, raise_if

log = logging.getLogger("fetalssl_jax")

MODES = ("finetune", "linear")
# A classifier's checkpoints only save it (a resumed run repeats the losses). Its `eval` keys are not cosmetic: they
# size the labelled set.
COSMETIC_KEYS = ("progress_bar", "compilation_cache_dir", "checkpoint_every_epochs", "checkpoint_every_steps")


def problems(config: ml_collections.ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a classification config (configs/classify.py)."""
    c = Checks(config, prefix)
    c.integer("seed", 0)
    c.text("init", "'random', a pretraining workdir, a backbone directory or a weights file")
    c.one_of("mode", MODES)
    c.one_of("calibration", calibration.CALIBRATIONS)
    c.fraction("label_fraction")
    c.integer("labels_per_class", 0, "0: use label_fraction")
    per_class, fraction = c.get("labels_per_class"), c.get("label_fraction")
    if is_int(per_class) and per_class > 0 and is_number(fraction) and fraction != 1:
        c.fail("label_fraction", fraction, f"must stay 1 when labels_per_class ({per_class}) is set; choose one budget")
    backbone_lib.check_config(c)
    c.below_one("head.dropout")
    sources.check_labelled(c)
    c.integer("augment.num_ops", 0)
    c.non_negative_number("augment.magnitude")
    for key in ("augment.hflip_prob", "augment.vflip_prob"):
        c.probability(key)
    c.one_of("optim.name", ("adamw",))
    c.positive_number("optim.lr")
    c.non_negative_number("optim.weight_decay")
    c.fraction("optim.layer_decay")
    if c.get("optim.layer_decay") not in (1, MISSING) and not backbone_lib.is_vit(c.get("model.arch")):
        c.fail("optim.layer_decay", c.get("optim.layer_decay"), "decays a ViT's blocks; must be 1.0 for a ResNet")
    c.one_of("optim.schedule", SCHEDULES)
    c.below_one("optim.warmup_fraction")
    for key in ("batch_size", "eval_batch_size", "eval_every_epochs"):
        c.integer(key)
    c.steps_and_epochs(integer_epochs=True)
    for key in ("eval_every_steps", "checkpoint_every_epochs", "checkpoint_every_steps"):
        c.integer(key, 0, "0: at the end only" if key.startswith("eval") else "0: no checkpoints")
    c.boolean("progress_bar")
    return c.problems


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every value of a classification config that no run can use."""
    raise_if(problems(config))


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the compiled functions depend on; equal specs share one compilation across grid cells. The backbone is a
    ResNet (`arch`, `width`, `conv_impl`) or a ViT (`arch`, `patch_size`, `reg_tokens`, `layer_scale`,
    `drop_path_rate`); `layer_decay`, `schedule`, `warmup_steps` and `total_steps` shape the optimiser
    (`downstream/optimizer.py`)."""

    arch: str
    width: int
    dtype: str
    num_classes: int
    dropout: float
    head_batch_norm: bool
    mode: str
    image_size: int
    num_ops: int
    magnitude: float
    hflip_prob: float
    vflip_prob: float
    learning_rate: float
    weight_decay: float
    conv_impl: str = "auto"  # CPU convolutions as GEMMs ("auto" on the CPU backend), see models/conv.py
    patch_size: int = 0  # a ViT's keys (0 for a ResNet)
    reg_tokens: int = 0
    layer_scale: float = 0.0
    drop_path_rate: float = 0.0
    layer_decay: float = 1.0  # a ViT's layer-wise learning-rate decay; 1: off
    schedule: str = "constant"  # or "warmup_cosine" over total_steps
    warmup_steps: int = 0
    total_steps: int = 0

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_classes: int) -> StepSpec:
        a, m, o = config.augment, config.model, config.optim
        vit = {k: m[k] for k in ("patch_size", "reg_tokens", "layer_scale", "drop_path_rate") if k in m}
        return cls(
            m.arch, int(m.get("width", 0)), m.dtype, num_classes, float(config.head.dropout),
            bool(config.head.batch_norm), config.mode, int(config.data.image_size), int(a.num_ops),
            float(a.magnitude), float(a.hflip_prob), float(a.vflip_prob), float(o.lr), float(o.weight_decay),
            m.get("conv_impl", "auto"), **vit, layer_decay=float(o.get("layer_decay", 1.0)),
            schedule=o.get("schedule", "constant"),
        )  # fmt: skip

    def model_config(self) -> dict[str, Any]:
        """The backbone's `model` keys (`models.backbone.create_backbone`)."""
        if backbone_lib.is_vit(self.arch):
            keys = ("arch", "patch_size", "reg_tokens", "layer_scale", "drop_path_rate", "dtype")
        else:
            keys = ("arch", "width", "dtype", "conv_impl")
        return {k: getattr(self, k) for k in keys}

    def identity(self) -> dict[str, Any]:
        """What the backbone is (`models.backbone.description`), as backbone.json records it."""
        return backbone_lib.description(self.model_config())

    def model(self) -> Classifier:
        backbone = backbone_lib.create_backbone(self.model_config(), self.image_size, zero_init_residual=False)
        return Classifier(backbone, self.num_classes, self.dropout, self.head_batch_norm)

    def optimizer(self) -> optax.GradientTransformation:
        return classifier_optimizer(self.arch, self.mode, self.learning_rate, self.weight_decay, self.layer_decay,
                                    self.schedule, self.warmup_steps, self.total_steps)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    """The classifier as a training task of the shared train step (`train.step.Task`): RandAugment + flips on the
    device, class-weighted cross-entropy; the class weights ride in the state's `extra` (an argument of the
    compiled step, so the cells of a grid share one compilation)."""

    spec: StepSpec
    model: Classifier

    def step_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        s = self.spec
        images = rand_augment_batch(rng, batch["images"], s.num_ops, s.magnitude, s.image_size, s.hflip_prob,
                                    s.vflip_prob)  # fmt: skip
        return images, batch["labels"]

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del step
        images, labels = inputs
        finetune = self.spec.mode == "finetune"
        logits, model_state = apply_model(
            self.model, params, model_state, images, train=True, backbone_train=finetune, rngs={"dropout": rng}
        )
        return weighted_cross_entropy(logits, labels, extra["class_weights"]), (model_state, extra, {})

    def after_update(self, extra, params, model_state, step):
        del params, model_state, step
        return extra


def class_probabilities(model: Classifier, image_size: int, variables: Any, images: jax.Array) -> jax.Array:
    """Class probabilities [B, C] of uint8 images [B, H, W, C]: `preprocess_eval`, BatchNorm running statistics."""
    return jax.nn.softmax(model.apply(variables, preprocess_eval(images, image_size), train=False), axis=-1)


class Compiled(NamedTuple):
    """The jitted functions of one `StepSpec` over a mesh of all devices."""

    model: Classifier
    init_state: Callable[..., TrainState]  # (params, batch_stats, class_weights, seed) -> the state, replicated
    train_step: Callable[..., tuple[TrainState, dict[str, jax.Array]]]  # pretraining's, with the classifier task
    predict: Callable[..., jax.Array]  # (params, batch_stats, uint8 images) -> class probabilities
    mesh: jax.sharding.Mesh


@functools.lru_cache(maxsize=8)
def compiled_functions(spec: StepSpec) -> Compiled:
    """The compiled functions of `spec`; the train step is pretraining's (`train.step.make_train_step`) with the
    classifier's task."""
    model = spec.model()
    tx = spec.optimizer()
    mesh = make_mesh()
    data, full = batch_sharding(mesh), replicated(mesh)

    def init_state(params: Any, batch_stats: Any, class_weights: jax.Array, seed: jax.Array) -> TrainState:
        # A raw uint32 key (not a typed one): orbax checkpoints it like any array.
        return TrainState(jnp.zeros((), jnp.int32), params, {"batch_stats": batch_stats}, tx.init(params),
                          {"class_weights": class_weights}, jax.random.PRNGKey(seed))  # fmt: skip

    def predict(params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
        return class_probabilities(model, spec.image_size, {"params": params, "batch_stats": batch_stats}, images)

    return Compiled(
        model,
        jax.jit(init_state, out_shardings=full),
        make_train_step(ClassificationTask(spec, model), Optimizer(tx, {}), mesh),
        jax.jit(predict, in_shardings=(full, full, data), out_shardings=data),
        mesh,
    )


def predict_probabilities(
    spec: StepSpec, params: Any, batch_stats: Any, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """Class probabilities [N, C] of uint8 images, in fixed-size batches (the last one padded)."""
    compiled = compiled_functions(spec)
    return map_batches(lambda x: compiled.predict(params, batch_stats, x), with_channel(images), batch_size,
                       compiled.mesh.size)  # fmt: skip


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the examples for `epoch`, wrapped around to whole batches (each example at least once)."""
    order = epoch_permutation(num_examples, seed, epoch)
    total = _round_up(num_examples, batch_size)
    return np.resize(order, total)  # np.resize repeats the permutation to fill the last batch


def cycled_batch(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of batch `step` of an endless stream of shuffled passes over the examples (pass p is the
    permutation seeded by [seed, p]); batches run on across pass boundaries.

    With `num_steps`, batches cycle through the subset rather than being sampled with replacement: every image is
    used equally often (within one), where a with-replacement draw from 10 images would leave some out of many
    batches. The caller caps the batch at the subset size, so a tiny subset costs less per step instead of
    repeating images within a batch. Stateless in `step`, so a resumed run sees the same batches.
    """
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    passes = positions // num_examples
    out = np.empty(batch_size, np.int64)
    for p in np.unique(passes):
        here = passes == p
        out[here] = epoch_permutation(num_examples, seed, int(p))[positions[here] % num_examples]
    return out


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int, steps: Durations, by_steps: bool):
    """The example indices of optimiser step `step` (0-based): cycled passes (`cycled_batch`) for a run of
    `num_steps`, else the slice of its epoch's order."""
    if by_steps:
        return cycled_batch(num_examples, batch_size, seed, step)
    epoch, s = divmod(step, steps.steps_per_epoch)
    return epoch_order(num_examples, batch_size, seed, epoch)[s * batch_size : (s + 1) * batch_size]


def save_classifier(directory: pathlib.Path, variables: dict[str, Any], description: dict[str, Any]) -> None:
    """The selected classifier: orbax variables (atomic) + classifier.json."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory.absolute() / "variables", variables, force=True)
    checkpointer.wait_until_finished()
    report.write_json(directory / "classifier.json", description)


def load_classifier(directory: str | pathlib.Path) -> tuple[Classifier, dict[str, Any], dict[str, Any], StepSpec]:
    """(model, variables, description, spec) of a classifier saved by a classification run (its workdir or
    its ``classifier/`` directory)."""
    directory = pathlib.Path(directory).absolute()
    if not (directory / "classifier.json").is_file() and (directory / "classifier" / "classifier.json").is_file():
        directory = directory / "classifier"
    if not (directory / "classifier.json").is_file():
        raise DataError(f"{directory} holds no trained classifier (classifier.json)")
    description = json.loads((directory / "classifier.json").read_text())
    spec = StepSpec(**description["spec"])
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return spec.model(), {"batch_stats": {}, **variables}, description, spec  # a ViT's head may have no BatchNorm


def resolve_class_names(config: ml_collections.ConfigDict, splits: dict[str, Any]) -> tuple[str, ...]:
    """`config.classes`, or the labelled data's class names when it is empty; checked against the labels."""
    names = tuple(config.classes) or sources.class_names(config)
    largest = max(int(np.max(split.labels)) for split in splits.values() if len(split.labels))
    if largest >= len(names):
        raise DataError(f"the labelled data has label {largest} but config.classes names only {len(names)}: {names}")
    return names


@exclusive_workdir
def run_classification(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path,
    stop_after_epochs: int | None = None,
    splits: dict[str, Any] | None = None,
    ignore: Sequence[str] = (),
) -> dict[str, Any]:
    """Trains one classifier as `config` says, in `workdir`; returns the results (also in results.json).

    The config is validated first (ConfigError). A workdir that already has results.json is finished: its results
    are returned without training, if the config that made them has the same fingerprint as `config` (up to
    `COSMETIC_KEYS` and the keys in `ignore`); otherwise WorkdirMismatchError names the keys. Likewise training
    resumes from the checkpoint in `workdir/checkpoints` (every `checkpoint_every_epochs`,
    or with `num_steps` every `checkpoint_every_steps`) only for the same fingerprint, and repeats the losses of an
    uninterrupted run. `stop_after_epochs` ends early after that many epochs (with `num_steps`: validation rounds)
    and a checkpoint, as SIGTERM or a first Ctrl-C does after the current round, and returns {}. `splits` passes the
    labelled data of `config` when the caller has it already (the grid: one load for all its cells, whose `init`
    paths it passes in `ignore`). The run holds the workdir's lock (`runtime/workdir_lock.py`).
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    wanted = fingerprint(config, COSMETIC_KEYS, ignore)
    if (workdir / "results.json").is_file():
        return _finished_results(workdir, wanted, ignore)
    make_workdir(workdir)
    # the shared checkpointer, keeping the best weights so far beside the state; only the newest is needed
    checkpointer = Checkpointer(workdir, wanted, keep=1, extra_items=("best_variables",))
    checkpointer.check_resumable()  # before anything is generated or written: a refusal costs nothing
    enable_compilation_cache(config.compilation_cache_dir)
    started = time.time()
    run = _prepare(config, workdir, sources.labelled_splits(config) if splits is None else splits)
    state = _initial_state(run)
    best, best_variables = {"balanced_accuracy": -1.0}, None
    if checkpointer.latest_step() is not None:
        state, best_variables, best = _restore(checkpointer, state)
        log.info("resuming %s after step %d", workdir, int(state.step))
    monitor = Monitor(workdir, int(state.step), run.steps.total, run.batch_size, run.steps.log or run.steps.total,
                      progress_bar=config.progress_bar)  # fmt: skip
    try:
        with preemption_signal() as preempted:
            finished = _train_and_select(run, state, checkpointer, monitor, best, best_variables, stop_after_epochs,
                                         preempted)  # fmt: skip
    finally:
        monitor.close()
        checkpointer.close()
    if finished is None:
        return {}
    return _test_and_report(run, *finished, started)


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """The `classify` task of the command line: `run_classification`, and the line to print."""
    results = run_classification(config, workdir)
    if not results:  # stopped by SIGTERM or Ctrl-C, checkpointed
        return f"preempted; run again to resume; workdir: {pathlib.Path(workdir).absolute()}"
    test = results["test"]
    return (f"test: macro-F1 {test['macro_f1']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, "
            f"accuracy {test['accuracy']:.3f} (selected at step {results['best_step']}); "
            f"workdir: {pathlib.Path(workdir).absolute()}")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _LabelledRun:
    """The labelled training set of one classification run and how it trains, resolved from its config."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    splits: dict[str, Any]
    class_names: tuple[str, ...]
    budget: str
    images: np.ndarray  # the chosen training images, uint8 [N, H, W, C]
    labels: np.ndarray
    weights: np.ndarray  # class weights N / count_c
    spec: StepSpec
    steps: Durations
    batch_size: int
    init: BackboneInit  # where the backbone's weights come from

    @property
    def by_steps(self) -> bool:
        return self.config.num_steps > 0

    def round_record(self, step: int) -> dict[str, int]:
        """What names the validation after `step` steps in metrics.jsonl and in the selected classifier."""
        return {"step": step} if self.by_steps else {"epoch": step // self.steps.steps_per_epoch, "step": step}


def _finished_results(workdir: pathlib.Path, wanted: dict[str, Any], ignore: Sequence[str]) -> dict[str, Any]:
    """The results of a finished run, if the same config (up to `ignore`) made them."""
    stored = stored_fingerprint(workdir / "config.json", COSMETIC_KEYS, ignore)
    ensure_resumable(stored, wanted, what=f"the finished classification run in {workdir}", old_name="finished run",
                     hint="use a new workdir")  # fmt: skip
    return json.loads((workdir / "results.json").read_text())


def _prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, splits: dict[str, Any]) -> _LabelledRun:
    """Chooses the labelled subset (label_indices.json), writes config.json and converts the durations to steps."""
    class_names = resolve_class_names(config, splits)
    for name in ("train", "valid", "test"):
        if name not in splits or len(splits[name].labels) == 0:
            raise DataError(f"the labelled data has no {name!r} split (or it is empty)")
    train_all = splits["train"]
    chosen = choose_labels(train_all.labels, config.label_fraction, config.labels_per_class, config.seed, class_names)
    labels = train_all.labels[chosen]
    report.write_json(workdir / "label_indices.json", {
        "label_fraction": config.label_fraction, "labels_per_class": config.labels_per_class, "seed": config.seed,
        "indices": chosen.tolist(),
        "patient_ids": [str(p) for p in train_all.patient_ids[chosen]],
        "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(),
    })  # fmt: skip
    (workdir / "config.json").write_text(config_json(config, COSMETIC_KEYS))
    spec = StepSpec.from_config(config, len(class_names))
    batch_size = _round_up(min(config.batch_size, len(labels)), jax.device_count())  # the mesh of all devices
    steps = durations(config, -(-len(labels) // batch_size))
    if spec.schedule != "constant":  # the schedule's length is the run's
        warmup = round(config.optim.warmup_fraction * steps.total)
        spec = dataclasses.replace(spec, warmup_steps=warmup, total_steps=steps.total)
    return _LabelledRun(
        config, workdir, splits, class_names, budget_name(config.label_fraction, config.labels_per_class),
        with_channel(train_all.images[chosen]), labels, class_weights(labels, len(class_names)), spec, steps,
        batch_size, resolve_backbone(config.init, config.model, spec.image_size, config.seed),
    )  # fmt: skip


def _initial_state(run: _LabelledRun) -> TrainState:
    """The head initialised from the seed, the backbone from `config.init`."""
    config, compiled, init, steps = run.config, compiled_functions(run.spec), run.init, run.steps
    model = compiled.model
    # Only the head is initialised here (the backbone's variables come from `init`).
    head = model.init(
        jax.random.key(config.seed), np.zeros((1, model.backbone.num_features), np.float32), train=False,
        method=Classifier.logits_from_features,
    )  # fmt: skip
    params = {**head["params"], "backbone": init.variables["params"]}
    batch_stats = dict(head.get("batch_stats", {}))  # a ViT has no BatchNorm: only the head's, if any
    if "batch_stats" in init.variables:
        batch_stats["backbone"] = init.variables["batch_stats"]
    log.info(
        "%s from %s (%s): %d training images (%s), %d steps (%.1f epochs), batch %d, %d validations",
        config.mode, init.source, init.kind, len(run.labels), run.budget, steps.total,
        steps.total / steps.steps_per_epoch, run.batch_size, len(steps.evaluations()),
    )  # fmt: skip
    return compiled.init_state(params, batch_stats, jnp.asarray(run.weights), config.seed)


def _variables(state: TrainState) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.model_state["batch_stats"]}


def _restore(checkpointer: Checkpointer, state: TrainState) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """(state, best variables, best validation) of the newest checkpoint (numbered by optimiser step)."""
    step = checkpointer.latest_step()
    template = jax.tree.map(np.asarray, jax.device_get(_variables(state)))
    state, extra = checkpointer.restore(step, state, {"best_variables": template})
    return state, extra["best_variables"], checkpointer.meta(step)["best"]


def _train_round(
    run: _LabelledRun, state: TrainState, monitor: Monitor, start: int, end: int
) -> tuple[TrainState, list[dict[str, float]]]:
    """Steps `start` .. `end` - 1, their metrics fetched once at the end, recorded and checked finite."""
    train_step = compiled_functions(run.spec).train_step
    began, metrics = time.perf_counter(), []
    for step in range(start, end):
        idx = batch_indices(len(run.labels), run.batch_size, run.config.seed, step, run.steps, run.by_steps)
        state, m = train_step(state, {"images": run.images[idx], "labels": run.labels[idx]})
        metrics.append(m)
    values = [{k: float(v) for k, v in m.items()} for m in jax.device_get(metrics)]
    monitor.steps(start, values, time.perf_counter() - began)
    return state, values


def _train_and_select(
    run: _LabelledRun, state: TrainState, checkpointer: Checkpointer, monitor: Monitor, best: dict[str, Any],
    best_variables: dict[str, Any] | None, stop_after_epochs: int | None, preempted: Callable[[int], bool],
) -> tuple[dict[str, Any], dict[str, Any]] | None:  # fmt: skip
    """Trains to the end, validating after each of `steps.evaluations()` and keeping the best weights; (best, best
    variables), or None when stopped after `stop_after_epochs` validations or, before the last one, by a
    pre-emption notice (`preempted`: SIGTERM or a first Ctrl-C), checkpointed."""
    ends, steps = run.steps.evaluations(), run.steps
    last_checkpoint = checkpointer.latest_step()
    for r, end in enumerate(ends):
        start = ends[r - 1] if r else 0
        if end <= int(state.step):
            continue
        state, values = _train_round(run, state, monitor, start, end)
        # the round's mean loss and gradient norm: non-finite if any step's was (norms are never negative)
        finite = {k: float(np.mean(np.asarray([v[k] for v in values], np.float32))) for k in ("loss", "grad_norm")}
        check_finite(end - 1, finite, last_checkpoint, checkpointer.directory)
        variables = _variables(state)
        valid_probs = predict_probabilities(run.spec, variables["params"], variables["batch_stats"],
                                            run.splits["valid"].images, run.config.eval_batch_size)  # fmt: skip
        valid = report.summary_metrics(run.splits["valid"].labels, valid_probs.argmax(1))
        monitor.evaluation(end, {"train_loss": finite["loss"], **{f"valid_{k}": v for k, v in valid.items()}})
        if valid["balanced_accuracy"] > best["balanced_accuracy"]:  # ties keep the earlier validation
            best, best_variables = {**valid, **run.round_record(end)}, jax.device_get(variables)
        last = end == steps.total
        stop = r + 1 == stop_after_epochs or (not last and preempted(end))
        if not last and Durations.crossed(start, end, steps.checkpoint) or stop:
            last_checkpoint = checkpointer.save(state, {"best": best}, {"best_variables": best_variables})
        if stop:
            if r + 1 != stop_after_epochs:
                log.warning("stopped after step %d; checkpoint saved in %s; run again to resume", end,
                            checkpointer.directory)  # fmt: skip
            return None
    return best, best_variables


def _test_and_report(run: _LabelledRun, best: dict[str, Any], best_variables: dict[str, Any], started: float):
    """Saves the selected classifier, scores it on the test split and writes the report files, results.json last."""
    config, workdir, init = run.config, run.workdir, run.init
    description = {
        "spec": dataclasses.asdict(run.spec), "classes": list(run.class_names), "init": init.source,
        "init_kind": init.kind, "mode": config.mode, "label_fraction": config.label_fraction,
        "labels_per_class": config.labels_per_class, "seed": config.seed, "best_epoch": best.get("epoch"),
        "best_step": best["step"],
    }  # fmt: skip
    fit = fit_trust(run.spec.model(), run.spec.image_size, best_variables, run.splits, config.seed,
                    config.eval_batch_size, config.calibration)  # fmt: skip
    fit.trust.save(workdir / "classifier")
    save_classifier(workdir / "classifier", best_variables, {**description, **fit.trust.description()})
    test = run.splits["test"]
    test_probs = fit.test_probabilities  # calibrated: softmax(logits / temperature + class biases)
    test_report = report.full_report(test.labels, test_probs.argmax(1), run.class_names)
    report.write_json(workdir / "confusion_matrix.json",
                      {"class_names": list(run.class_names), "matrix": test_report["confusion_matrix"]})  # fmt: skip
    report.plot_confusion_matrix(
        np.asarray(test_report["confusion_matrix"]), run.class_names, workdir / "confusion_matrix.png",
        f"{config.mode}, {run.budget} labels: macro-F1 {test_report['macro_f1']:.3f}",
    )  # fmt: skip
    report.write_predictions(workdir / "predictions.csv", test.labels, test_probs, run.class_names, test.patient_ids,
                             fit.columns())  # fmt: skip
    fit.plot(workdir / RELIABILITY_PNG, test.labels, f"{config.mode}, {run.budget} labels: test split")
    results = {
        "init": init.source, "init_kind": init.kind, "mode": config.mode, "label_fraction": config.label_fraction,
        "labels_per_class": config.labels_per_class, "seed": config.seed, "num_train_images": int(len(run.labels)),
        "num_steps": run.steps.total, "best_epoch": best.get("epoch"), "best_step": best["step"],
        "valid": best, "test": test_report, "calibration": fit.calibration, "ood": fit.ood,
        "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    report.write_json(workdir / "results.json", results)
    # The run is complete: its checkpoint is no longer needed (a grid keeps hundreds of these workdirs).
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    return results
