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

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from fetalssl_jax import config_lib
from fetalssl_jax.data import sources
from fetalssl_jax.data.augment import preprocess_eval
from fetalssl_jax.data.randaugment import rand_augment_batch
from fetalssl_jax.downstream import report
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.downstream.classifier import Classifier, weighted_cross_entropy
from fetalssl_jax.downstream.labels import budget_name, choose_labels, class_weights
from fetalssl_jax.models.resnet import create_resnet
from fetalssl_jax.train.checkpoint import CheckpointMismatchError, abstract_tree
from fetalssl_jax.train.step import batch_sharding, enable_compilation_cache, make_mesh, replicated

log = logging.getLogger("fetalssl_jax")

MODES = config_lib.CLASSIFY_MODES


@flax.struct.dataclass
class ClassifierState:
    """Everything a classifier training step changes."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array


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


@functools.lru_cache(maxsize=8)
def compiled_functions(spec: StepSpec):
    """(model, init_state, train_step, predict, mesh) for `spec`, jitted over a mesh of all devices."""
    model = spec.model()
    tx = spec.optimizer()
    mesh = make_mesh()
    data, full = batch_sharding(mesh), replicated(mesh)
    finetune = spec.mode == "finetune"

    def init_state(params: Any, batch_stats: Any, seed: jax.Array) -> ClassifierState:
        # A raw uint32 key (not a typed one): orbax checkpoints it like any array.
        return ClassifierState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params), jax.random.PRNGKey(seed))

    def train_step(state: ClassifierState, images: jax.Array, labels: jax.Array, weights: jax.Array):
        aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
        x = rand_augment_batch(
            aug_rng, images, spec.num_ops, spec.magnitude, spec.image_size, spec.hflip_prob, spec.vflip_prob
        )

        def loss_of(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats}, x, train=True, backbone_train=finetune,
                rngs={"dropout": dropout_rng}, mutable=["batch_stats"],
            )  # fmt: skip
            return weighted_cross_entropy(logits, labels, weights), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return ClassifierState(state.step + 1, params, batch_stats, opt_state, state.rng), loss

    def predict(params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
        x = preprocess_eval(images, spec.image_size)
        return jax.nn.softmax(model.apply({"params": params, "batch_stats": batch_stats}, x, train=False), axis=-1)

    return (
        model,
        jax.jit(init_state, out_shardings=full),
        jax.jit(train_step, in_shardings=(full, data, data, full), out_shardings=(full, full), donate_argnums=0),
        jax.jit(predict, in_shardings=(full, full, data), out_shardings=data),
        mesh,
    )


def _with_channel(images: np.ndarray) -> np.ndarray:
    return images[..., None] if images.ndim == 3 else images


def predict_probabilities(
    spec: StepSpec, params: Any, batch_stats: Any, images: np.ndarray, batch_size: int
) -> np.ndarray:
    """Class probabilities [N, C] of uint8 images, in fixed-size batches (the last one padded)."""
    _, _, _, predict, mesh = compiled_functions(spec)
    images = _with_channel(images)
    batch_size = _round_up(min(batch_size, len(images)), mesh.size)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        out.append(np.asarray(predict(params, batch_stats, batch))[:n])
    return np.concatenate(out)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def epoch_order(num_examples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of the examples for `epoch`, wrapped around to whole batches (each example at least once)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_examples)
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
        out[here] = np.random.default_rng([seed, int(p)]).permutation(num_examples)[positions[here] % num_examples]
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


def _epoch_checkpoints(workdir: pathlib.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(
        workdir.absolute() / "checkpoints", options=options, item_names=("state", "best_variables", "meta")
    )


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
    results_file = workdir / "results.json"
    fingerprint = config_lib.fingerprint(config, ignore)
    if results_file.is_file():
        stored = config_lib.stored_fingerprint(workdir / "config.json", ignore)
        _refuse_differences(stored, fingerprint, f"{workdir} was finished with another classification config",
                            "finished run", "use a new workdir or delete that one")  # fmt: skip
        return json.loads(results_file.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoints = _epoch_checkpoints(workdir)
    start_round = checkpoints.latest_step() or 0
    if start_round:  # checked before anything is generated or written: a refused resume costs nothing
        meta = checkpoints.restore(start_round, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        # checkpoints written before fingerprints hold the whole config as a JSON string
        stored = meta.get("fingerprint") or config_lib.fingerprint(json.loads(meta["config"]), ignore)
        _refuse_differences(stored, fingerprint, f"{workdir} holds a classification checkpoint of another config",
                            "checkpoint", "use a new workdir")  # fmt: skip
    enable_compilation_cache(config.compilation_cache_dir)
    started = time.time()

    splits = sources.labelled_splits(config) if splits is None else splits
    class_names = resolve_class_names(config, splits)
    for name in ("train", "valid", "test"):
        if name not in splits or len(splits[name].labels) == 0:
            raise ValueError(f"the labelled data has no {name!r} split (or it is empty)")
    train_all = splits["train"]
    chosen = choose_labels(train_all.labels, config.label_fraction, config.labels_per_class, config.seed, class_names)
    budget = budget_name(config.label_fraction, config.labels_per_class)
    train_images, train_labels = _with_channel(train_all.images[chosen]), train_all.labels[chosen]
    weights = class_weights(train_labels, len(class_names))
    report.write_json(workdir / "label_indices.json", {
        "label_fraction": config.label_fraction, "labels_per_class": config.labels_per_class, "seed": config.seed,
        "indices": chosen.tolist(),
        "patient_ids": [str(p) for p in train_all.patient_ids[chosen]],
        "class_counts": np.bincount(train_labels, minlength=len(class_names)).tolist(),
    })  # fmt: skip
    (workdir / "config.json").write_text(config_lib.config_json(config))

    spec = StepSpec.from_config(config, len(class_names))
    model, init_state, train_step, _, mesh = compiled_functions(spec)
    init = resolve_backbone(config.init, spec.arch, spec.width, config.seed)
    # Only the head is initialised here (the backbone's variables come from `init`).
    head = model.init(
        jax.random.key(config.seed), np.zeros((1, model.backbone.num_features), np.float32), train=False,
        method=Classifier.logits_from_features,
    )  # fmt: skip
    params = {**head["params"], "backbone": init.variables["params"]}
    batch_stats = {**head.get("batch_stats", {}), "backbone": init.variables["batch_stats"]}
    state = init_state(params, batch_stats, config.seed)

    batch_size = _round_up(min(config.batch_size, len(train_labels)), mesh.size)
    schedule = Schedule.from_config(config, len(train_labels), batch_size)
    device_weights = jnp.asarray(weights)
    log.info(
        "%s from %s (%s): %d training images (%s), %d steps (%.1f epochs), batch %d, %d validations",
        config.mode, init.source, init.kind, len(train_labels), budget, schedule.ends[-1],
        schedule.ends[-1] / schedule.steps_per_epoch, batch_size, len(schedule.ends),
    )  # fmt: skip

    best = {"balanced_accuracy": -1.0}
    best_variables = None
    metrics_file = workdir / "metrics.jsonl"
    if start_round:
        template = {"params": state.params, "batch_stats": state.batch_stats}
        restored = checkpoints.restore(start_round, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_tree(state)),
            best_variables=ocp.args.StandardRestore(jax.tree.map(np.asarray, jax.device_get(template))),
        ))  # fmt: skip
        state, best_variables, best = restored.state, restored.best_variables, meta["best"]
        kept = metrics_file.read_text().splitlines()[:start_round] if metrics_file.is_file() else []
        metrics_file.write_text("".join(line + "\n" for line in kept))
        log.info("resuming %s after step %d", workdir, schedule.ends[start_round - 1])
    else:
        metrics_file.write_text("")
    bar = tqdm.tqdm(total=len(schedule.ends), unit="epoch" if not schedule.by_steps else "validation",
                    disable=not config.progress_bar, dynamic_ncols=True, initial=start_round)  # fmt: skip
    for r in range(start_round, len(schedule.ends)):
        bar.update(1)
        losses = []
        for step in range(schedule.ends[r - 1] if r else 0, schedule.ends[r]):
            idx = schedule.batch(len(train_labels), batch_size, config.seed, step)
            state, loss = train_step(state, train_images[idx], train_labels[idx], device_weights)
            losses.append(loss)
        train_loss = float(np.mean(jax.device_get(losses)))
        record = schedule.round_record(r)
        if not np.isfinite(train_loss):
            raise FloatingPointError(f"{workdir}: training loss became {train_loss} by step {record['step']}")
        valid_probs = predict_probabilities(spec, state.params, state.batch_stats, splits["valid"].images,
                                            config.eval_batch_size)  # fmt: skip
        valid = report.summary_metrics(splits["valid"].labels, valid_probs.argmax(1))
        with open(metrics_file, "a") as f:
            f.write(json.dumps({**record, "train_loss": train_loss,
                                **{f"valid_{k}": v for k, v in valid.items()}}) + "\n")  # fmt: skip
        bar.set_postfix(loss=f"{train_loss:.3f}", valid_bal_acc=f"{valid['balanced_accuracy']:.3f}")
        if valid["balanced_accuracy"] > best["balanced_accuracy"]:  # ties keep the earlier validation
            best = {**valid, **record}
            best_variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        done = r + 1
        if schedule.should_checkpoint(config, r) or done == stop_after_epochs:
            checkpoints.save(done, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), best_variables=ocp.args.StandardSave(best_variables),
                meta=ocp.args.JsonSave({"fingerprint": fingerprint, "best": best}),
            ))  # fmt: skip
        if done == stop_after_epochs:
            bar.close()
            checkpoints.close()
            return {}
    bar.close()
    checkpoints.close()

    description = {
        "spec": dataclasses.asdict(spec), "classes": list(class_names), "init": init.source, "init_kind": init.kind,
        "mode": config.mode, "label_fraction": config.label_fraction, "labels_per_class": config.labels_per_class,
        "seed": config.seed, "best_epoch": best.get("epoch"), "best_step": best["step"],
    }  # fmt: skip
    save_classifier(workdir / "classifier", best_variables, description)
    test = splits["test"]
    test_probs = predict_probabilities(
        spec, best_variables["params"], best_variables["batch_stats"], test.images, config.eval_batch_size
    )
    test_report = report.full_report(test.labels, test_probs.argmax(1), class_names)
    report.write_json(workdir / "confusion_matrix.json",
                      {"class_names": list(class_names), "matrix": test_report["confusion_matrix"]})  # fmt: skip
    report.plot_confusion_matrix(
        np.asarray(test_report["confusion_matrix"]), class_names, workdir / "confusion_matrix.png",
        f"{config.mode}, {budget} labels: macro-F1 {test_report['macro_f1']:.3f}",
    )  # fmt: skip
    report.write_predictions(workdir / "predictions.csv", test.labels, test_probs, class_names, test.patient_ids)
    results = {
        "init": init.source, "init_kind": init.kind, "mode": config.mode, "label_fraction": config.label_fraction,
        "labels_per_class": config.labels_per_class, "seed": config.seed, "num_train_images": int(len(train_labels)),
        "num_steps": schedule.ends[-1], "best_epoch": best.get("epoch"), "best_step": best["step"],
        "valid": best, "test": test_report, "seconds": round(time.time() - started, 1),
    }  # fmt: skip
    report.write_json(results_file, results)
    # The run is complete: its checkpoint is no longer needed (a grid keeps hundreds of these workdirs).
    shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
    return results
