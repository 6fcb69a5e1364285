"""Fine-tune or linear-probe a plane classifier on a few labels; select on validation; report on test.

The reference protocol: AdamW (lr 1e-3, wd 1e-6), class-weighted cross-entropy with weights from the training
counts, RandAugment(5, 5) + horizontal and vertical flips on the device, resize only for inference, the epoch with
the best validation balanced accuracy kept and scored on the test patients.

The labels are a stratified `label_fraction` of the training split or `labels_per_class` images of every class.
Training runs `num_epochs` epochs, or, with `num_steps` > 0, that many optimiser steps whatever the subset size
(an epoch of 10 images is one step), validated every `eval_every_steps` steps and at the end.

A run writes into its workdir: ``config.json``, ``label_indices.json`` (the chosen training images),
``metrics.jsonl`` (one line per validation), ``classifier/`` (the selected weights + ``classifier.json``),
``results.json`` (validation and test metrics, per-class report, confusion matrix), ``confusion_matrix.{png,json}``
and ``predictions.csv``. ``results.json`` is written last: a workdir that has it is finished and is not rerun; its
results are reused if the same config (up to cosmetic keys) made them, otherwise the run is refused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from fetalssl_jax import config_lib
from fetalssl_jax.data import sources
from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.data.pipeline import epoch_permutation
from fetalssl_jax.data.randaugment import rand_augment_batch
from fetalssl_jax.downstream import report
from fetalssl_jax.downstream.backbones import BackboneInit, resolve_backbone
from fetalssl_jax.downstream.labels import budget_name, choose_labels, class_weights
from fetalssl_jax.eval.frozen import map_batches, with_channel
from fetalssl_jax.methods.base import apply_model
from fetalssl_jax.models.classifier import Classifier, weighted_cross_entropy
from fetalssl_jax.models.resnet import create_resnet
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh, replicated
from fetalssl_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
from fetalssl_jax.train.health import check_finite
from fetalssl_jax.train.monitor import append_metrics, make_progress_bar, truncate_metrics
from fetalssl_jax.train.optim import Optimizer
from fetalssl_jax.train.state import TrainState
from fetalssl_jax.train.step import make_train_step

log = logging.getLogger("fetalssl_jax")

MODES = config_lib.CLASSIFY_MODES
# A checkpoint's state is the shared `TrainState` (the classifier's own state class before it): written into the
# checkpoint's meta, so that an older checkpoint is refused with a message instead of an orbax tree mismatch.
STATE_LAYOUT = "TrainState"


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the compiled functions depend on; equal specs share one compilation across grid cells."""

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

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_classes: int) -> StepSpec:
        if config.mode not in MODES:
            raise ValueError(f"config.mode={config.mode!r}; choose one of {MODES}")
        if config.optim.name != "adamw":
            raise ValueError(f"config.optim.name={config.optim.name!r}: the classifier trains with 'adamw'")
        a = config.augment
        return cls(
            config.model.arch, int(config.model.width), config.model.dtype, num_classes, float(config.head.dropout),
            bool(config.head.batch_norm), config.mode, int(config.data.image_size), int(a.num_ops),
            float(a.magnitude), float(a.hflip_prob), float(a.vflip_prob), float(config.optim.lr),
            float(config.optim.weight_decay), config.model.get("conv_impl", "auto"),
        )  # fmt: skip

    def model(self) -> Classifier:
        backbone = create_resnet(
            self.arch, width=self.width, dtype=self.dtype, zero_init_residual=False, conv_impl=self.conv_impl
        )
        return Classifier(backbone, self.num_classes, self.dropout, self.head_batch_norm)

    def optimizer(self) -> optax.GradientTransformation:
        adamw = optax.adamw(self.learning_rate, weight_decay=self.weight_decay)
        if self.mode == "finetune":
            return adamw

        # Linear probe: the backbone is frozen (no update, no weight decay); only the head learns.
        def labels(params):
            return {name: jax.tree.map(lambda _, n=name: "frozen" if n == "backbone" else "train", subtree)
                    for name, subtree in params.items()}  # fmt: skip

        return optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)


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


@functools.lru_cache(maxsize=8)
def compiled_functions(spec: StepSpec):
    """(model, init_state, train_step, predict, mesh) for `spec`, jitted over a mesh of all devices; the train step
    is pretraining's (`train.step.make_train_step`) with the classifier's task."""
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

    return (
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
    _, _, _, predict, mesh = compiled_functions(spec)
    return map_batches(lambda x: predict(params, batch_stats, x), with_channel(images), batch_size, mesh.size)


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


@dataclasses.dataclass(frozen=True)
class Schedule:
    """When a run validates: after each epoch, or with `num_steps` every `eval_every_steps` steps and at the end.

    `ends[r]` is the number of optimiser steps done when validation round r + 1 runs; rounds are what
    metrics.jsonl lines, checkpoints and `stop_after_epochs` count.
    """

    ends: tuple[int, ...]
    by_steps: bool
    steps_per_epoch: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, num_examples: int, batch_size: int) -> Schedule:
        steps_per_epoch = -(-num_examples // batch_size)
        if config.num_steps > 0:
            every = config.eval_every_steps if config.eval_every_steps > 0 else config.num_steps
            return cls((*range(every, config.num_steps, every), config.num_steps), True, steps_per_epoch)
        if config.num_epochs <= 0:
            raise ValueError(f"config.num_epochs={config.num_epochs}: train at least one epoch (or set num_steps)")
        return cls(tuple(steps_per_epoch * (e + 1) for e in range(config.num_epochs)), False, steps_per_epoch)

    def batch(self, num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
        """The example indices of optimiser step `step` (0-based)."""
        if self.by_steps:
            return cycled_batch(num_examples, batch_size, seed, step)
        epoch, s = divmod(step, self.steps_per_epoch)
        return epoch_order(num_examples, batch_size, seed, epoch)[s * batch_size : (s + 1) * batch_size]

    def round_record(self, r: int) -> dict[str, int]:
        """What names validation round `r` (0-based) in metrics.jsonl and in the selected classifier."""
        return {"step": self.ends[r]} if self.by_steps else {"epoch": r + 1, "step": self.ends[r]}

    def should_checkpoint(self, config: ml_collections.ConfigDict, r: int) -> bool:
        """After round `r` (not the last): every `checkpoint_every_epochs` epochs, or with `num_steps` at the first
        validation after each multiple of `checkpoint_every_steps`."""
        if r + 1 >= len(self.ends):
            return False
        if not self.by_steps:
            every = config.checkpoint_every_epochs
            return every > 0 and (r + 1) % every == 0
        every = config.checkpoint_every_steps
        previous = self.ends[r - 1] if r else 0
        return every > 0 and self.ends[r] // every > previous // every


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
        raise FileNotFoundError(f"{directory} holds no trained classifier (classifier.json)")
    description = json.loads((directory / "classifier.json").read_text())
    spec = StepSpec(**description["spec"])
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return spec.model(), variables, description, spec


def resolve_class_names(config: ml_collections.ConfigDict, splits: dict[str, Any]) -> tuple[str, ...]:
    """`config.classes`, or the labelled data's class names when it is empty; checked against the labels."""
    names = tuple(config.classes) or sources.class_names(config)
    largest = max(int(np.max(split.labels)) for split in splits.values() if len(split.labels))
    if largest >= len(names):
        raise ValueError(f"the labelled data has label {largest} but config.classes names only {len(names)}: {names}")
    return names


def _refuse_differences(
    stored: dict[str, Any] | None, wanted: dict[str, Any], what: str, old_name: str, hint: str
) -> None:
    """CheckpointMismatchError naming every key whose value differs between the stored and the wanted fingerprint."""
    differences = [] if stored is None else config_lib.fingerprint_differences(stored, wanted)
    if differences:
        keys = [k for k, _, _ in differences]
        raise CheckpointMismatchError(
            f"{what} (differs in {keys}); {hint}:\n{config_lib.format_differences(differences, old_name)}"
        )


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
    cosmetic keys, `config_lib.fingerprint`, and the keys in `ignore`); otherwise CheckpointMismatchError names the
    keys. Likewise training resumes from the checkpoint in `workdir/checkpoints` (every `checkpoint_every_epochs`,
    or with `num_steps` every `checkpoint_every_steps`) only for the same fingerprint, and repeats the losses of an
    uninterrupted run. `stop_after_epochs` ends early after that many epochs (with `num_steps`: validation rounds)
    and a checkpoint (as a pre-emption would) and returns {}. `splits` passes the labelled data of `config` when the
    caller has it already (the grid: one load for all its cells, whose `init` paths it passes in `ignore`).
    """
    config_lib.validate_classification(config)
    workdir = pathlib.Path(workdir)
    fingerprint = config_lib.fingerprint(config, ignore)
    if (workdir / "results.json").is_file():
        return _finished_results(workdir, fingerprint, ignore)
    workdir.mkdir(parents=True, exist_ok=True)
    # the shared checkpointer, keeping the best weights so far beside the state; only the newest is needed
    checkpointer = Checkpointer(workdir, {"task": "classification", "mode": config.mode}, keep=1,
                                fingerprint=fingerprint, extra_items=("best_variables",))  # fmt: skip
    _check_resumable(checkpointer, workdir)  # before anything is generated or written: a refusal costs nothing
    enable_compilation_cache(config.compilation_cache_dir)
    started = time.time()
    run = _prepare(config, workdir, sources.labelled_splits(config) if splits is None else splits)
    state = _initial_state(run)
    best, best_variables, start_round = {"balanced_accuracy": -1.0}, None, 0
    if checkpointer.latest_step() is not None:
        state, best_variables, best = _restore(checkpointer, state)
        start_round = run.schedule.ends.index(int(state.step)) + 1
        log.info("resuming %s after step %d", workdir, int(state.step))
    truncate_metrics(run.metrics_file, int(state.step) + 1 if start_round else 0)
    run.metrics_file.touch()
    try:
        finished = _train_and_select(run, state, checkpointer, start_round, best, best_variables, stop_after_epochs)
    finally:
        checkpointer.close()
    if finished is None:
        return {}
    return _test_and_report(run, *finished, started)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What one classification run trains on and writes to, resolved from its config."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    splits: dict[str, Any]
    class_names: tuple[str, ...]
    budget: str
    images: np.ndarray  # the chosen training images, uint8 [N, H, W, C]
    labels: np.ndarray
    weights: np.ndarray  # class weights N / count_c
    spec: StepSpec
    schedule: Schedule
    batch_size: int
    init: BackboneInit  # where the backbone's weights come from

    @property
    def metrics_file(self) -> pathlib.Path:
        return self.workdir / "metrics.jsonl"


def _finished_results(workdir: pathlib.Path, fingerprint: dict[str, Any], ignore: Sequence[str]) -> dict[str, Any]:
    """The results of a finished run, if the same config (up to `ignore`) made them."""
    stored = config_lib.stored_fingerprint(workdir / "config.json", ignore)
    _refuse_differences(stored, fingerprint, f"{workdir} was finished with another classification config",
                        "finished run", "use a new workdir or delete that one")  # fmt: skip
    return json.loads((workdir / "results.json").read_text())


def _check_resumable(checkpointer: Checkpointer, workdir: pathlib.Path) -> None:
    """CheckpointMismatchError if the newest checkpoint holds a train state of an earlier layout or was written by
    another config (naming the keys). The layout is checked first: checkpoints older than the shared `TrainState`
    (those written before fingerprints included) name no layout in their meta."""
    step = checkpointer.latest_step()
    if step is None:
        return
    if checkpointer.meta(step).get("state") != STATE_LAYOUT:
        raise CheckpointMismatchError(
            f"{workdir} holds a classification checkpoint of an earlier fetalssl_jax, whose train state had another "
            f"layout (not a {STATE_LAYOUT}); use a new workdir"
        )
    checkpointer.check_resumable(step)


def _prepare(config: ml_collections.ConfigDict, workdir: pathlib.Path, splits: dict[str, Any]) -> _Run:
    """Chooses the labelled subset (label_indices.json), writes config.json and sizes the schedule."""
    class_names = resolve_class_names(config, splits)
    for name in ("train", "valid", "test"):
        if name not in splits or len(splits[name].labels) == 0:
            raise ValueError(f"the labelled data has no {name!r} split (or it is empty)")
    train_all = splits["train"]
    chosen = choose_labels(train_all.labels, config.label_fraction, config.labels_per_class, config.seed, class_names)
    labels = train_all.labels[chosen]
    report.write_json(workdir / "label_indices.json", {
        "label_fraction": config.label_fraction, "labels_per_class": config.labels_per_class, "seed": config.seed,
        "indices": chosen.tolist(),
        "patient_ids": [str(p) for p in train_all.patient_ids[chosen]],
        "class_counts": np.bincount(labels, minlength=len(class_names)).tolist(),
    })  # fmt: skip
    (workdir / "config.json").write_text(config_lib.config_json(config))
    spec = StepSpec.from_config(config, len(class_names))
    batch_size = _round_up(min(config.batch_size, len(labels)), compiled_functions(spec)[-1].size)
    return _Run(
        config, workdir, splits, class_names, budget_name(config.label_fraction, config.labels_per_class),
        with_channel(train_all.images[chosen]), labels, class_weights(labels, len(class_names)), spec,
        Schedule.from_config(config, len(labels), batch_size), batch_size,
        resolve_backbone(config.init, spec.arch, spec.width, config.seed),
    )  # fmt: skip


def _initial_state(run: _Run) -> TrainState:
    """The head initialised from the seed, the backbone from `config.init`."""
    config, spec = run.config, run.spec
    model, init_state, _, _, _ = compiled_functions(spec)
    init = run.init
    # Only the head is initialised here (the backbone's variables come from `init`).
    head = model.init(
        jax.random.key(config.seed), np.zeros((1, model.backbone.num_features), np.float32), train=False,
        method=Classifier.logits_from_features,
    )  # fmt: skip
    params = {**head["params"], "backbone": init.variables["params"]}
    batch_stats = {**head.get("batch_stats", {}), "backbone": init.variables["batch_stats"]}
    schedule = run.schedule
    log.info(
        "%s from %s (%s): %d training images (%s), %d steps (%.1f epochs), batch %d, %d validations",
        config.mode, init.source, init.kind, len(run.labels), run.budget, schedule.ends[-1],
        schedule.ends[-1] / schedule.steps_per_epoch, run.batch_size, len(schedule.ends),
    )  # fmt: skip
    return init_state(params, batch_stats, jnp.asarray(run.weights), config.seed)


def _variables(state: TrainState) -> dict[str, Any]:
    return {"params": state.params, "batch_stats": state.model_state["batch_stats"]}


def _restore(checkpointer: Checkpointer, state: TrainState) -> tuple[TrainState, dict[str, Any], dict[str, Any]]:
    """(state, best variables, best validation) of the newest checkpoint. Its round is found from the state's step:
    checkpoints are numbered by optimiser step (before the shared Checkpointer: by round; both resume)."""
    step = checkpointer.latest_step()
    template = jax.tree.map(np.asarray, jax.device_get(_variables(state)))
    state, extra = checkpointer.restore(step, state, {"best_variables": template})
    return state, extra["best_variables"], checkpointer.meta(step)["best"]


def _train_and_select(
    run: _Run, state: TrainState, checkpointer: Checkpointer, start_round: int, best: dict[str, Any],
    best_variables: dict[str, Any] | None, stop_after_epochs: int | None,
) -> tuple[dict[str, Any], dict[str, Any]] | None:  # fmt: skip
    """Trains the remaining rounds, validating after each and keeping the best weights; (best, best variables),
    or None when stopped after `stop_after_epochs` rounds (checkpointed, as a pre-emption would)."""
    config, schedule = run.config, run.schedule
    _, _, train_step, _, _ = compiled_functions(run.spec)
    bar = make_progress_bar(len(schedule.ends), start_round, config.progress_bar,
                       "epoch" if not schedule.by_steps else "validation")  # fmt: skip
    last_checkpoint = checkpointer.latest_step()
    for r in range(start_round, len(schedule.ends)):
        bar.update(1)
        losses, grad_norms = [], []
        for step in range(schedule.ends[r - 1] if r else 0, schedule.ends[r]):
            idx = schedule.batch(len(run.labels), run.batch_size, config.seed, step)
            state, metrics = train_step(state, {"images": run.images[idx], "labels": run.labels[idx]})
            losses.append(metrics["loss"])
            grad_norms.append(metrics["grad_norm"])
        record = {**schedule.round_record(r), "train_loss": float(np.mean(jax.device_get(losses)))}
        # the round's mean loss and gradient norm: non-finite if any step's was (norms are never negative)
        finite = {"loss": record["train_loss"], "grad_norm": float(np.mean(jax.device_get(grad_norms)))}
        check_finite(schedule.ends[r] - 1, finite, last_checkpoint, checkpointer.directory)
        variables = _variables(state)
        valid_probs = predict_probabilities(run.spec, variables["params"], variables["batch_stats"],
                                            run.splits["valid"].images, config.eval_batch_size)  # fmt: skip
        valid = report.summary_metrics(run.splits["valid"].labels, valid_probs.argmax(1))
        append_metrics(run.metrics_file, {**record, **{f"valid_{k}": v for k, v in valid.items()}})
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", valid_bal_acc=f"{valid['balanced_accuracy']:.3f}")
        if valid["balanced_accuracy"] > best["balanced_accuracy"]:  # ties keep the earlier validation
            best, best_variables = {**valid, **schedule.round_record(r)}, jax.device_get(variables)
        if schedule.should_checkpoint(config, r) or r + 1 == stop_after_epochs:
            last_checkpoint = checkpointer.save(
                state, {"best": best, "state": STATE_LAYOUT}, {"best_variables": best_variables}
            )
        if r + 1 == stop_after_epochs:
            bar.close()
            return None
    bar.close()
    return best, best_variables


def _test_and_report(run: _Run, best: dict[str, Any], best_variables: dict[str, Any], started: float):
    """Saves the selected classifier, scores it on the test split and writes the report files, results.json last."""
    config, workdir, init = run.config, run.workdir, run.init
    description = {
        "spec": dataclasses.asdict(run.spec), "classes": list(run.class_names), "init": init.source,
        "init_kind": init.kind, "mode": config.mode, "label_fraction": config.label_fraction,
        "labels_per_class": config.labels_per_class, "seed": config.seed, "best_epoch": best.get("epoch"),
        "best_step": best["step"],
    }  # fmt: skip
    save_classifier(workdir / "classifier", best_variables, description)
    test = run.splits["test"]
    test_probs = predict_probabilities(
        run.spec, best_variables["params"], best_variables["batch_stats"], test.images, config.eval_batch_size
    )
    test_report = report.full_report(test.labels, test_probs.argmax(1), run.class_names)
    report.write_json(workdir / "confusion_matrix.json",
                      {"class_names": list(run.class_names), "matrix": test_report["confusion_matrix"]})  # fmt: skip
    report.plot_confusion_matrix(
        np.asarray(test_report["confusion_matrix"]), run.class_names, workdir / "confusion_matrix.png",
        f"{config.mode}, {run.budget} labels: macro-F1 {test_report['macro_f1']:.3f}",
    )  # fmt: skip
    report.write_predictions(workdir / "predictions.csv", test.labels, test_probs, run.class_names, test.patient_ids)
    results = {
        "init": init.source, "init_kind": init.kind, "mode": config.mode, "label_fraction": config.label_fraction,
        "labels_per_class": config.labels_per_class, "seed": config.seed, "num_train_images": int(len(run.labels)),
        "num_steps": run.schedule.ends[-1], "best_epoch": best.get("epoch"), "best_step": best["step"],
        "valid": best, "test": test_report, "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    report.write_json(workdir / "results.json", results)
    # The run is complete: its checkpoint is no longer needed (a grid keeps hundreds of these workdirs).
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    return results
