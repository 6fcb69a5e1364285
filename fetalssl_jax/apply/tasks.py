"""The command-line tasks `embed`, `predict` and `select` (configs/embed.py, predict.py, select.py): a config and a
workdir in, files in the workdir out; each returns the line the command prints.

Every run holds the workdir's lock (`runtime/workdir_lock.py`) and writes `config.json` (the resolved config, its
input path as a salted hash), `sources.csv` (salted id -> path of every video or image listed: the only local key
to the ids in the other files, which never name a file; keep it with your scans), `skipped.csv` (the files that
could not be read, with `on_error = "skip"`) and, last, `finished.json`. Outputs are tied to the config, the model
and the input's files (`apply/outputs.py`): the same again is "up to date", another is refused unless
`overwrite`, which moves the old outputs into `previous/<UTC time>/`; select adds to its labelling set instead.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from fetalssl_jax.apply import inputs, planes
from fetalssl_jax.apply.bad_files import ON_ERROR, SkippingInput
from fetalssl_jax.apply.embedding import Embeddings, embed_input, map_blocks
from fetalssl_jax.apply.files import save_png, write_csv
from fetalssl_jax.apply.inputs import NO_LABEL, Input, open_input
from fetalssl_jax.apply.labelling import LABELS_CSV, export_for_labelling, read_selection, rows_of, write_selection
from fetalssl_jax.apply.loading import Backbone, PlaneClassifier, check_class_names, load_backbone, load_classifier
from fetalssl_jax.apply.outputs import PREVIOUS, SKIPPED_CSV, ToolOutputs, public_config
from fetalssl_jax.apply.selection import STRATEGIES
from fetalssl_jax.downstream import backbones
from fetalssl_jax.downstream.report import write_json
from fetalssl_jax.errors import DataError, UserError
from fetalssl_jax.runtime.sharding import enable_compilation_cache
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, raise_if

SELECT_GROWS = ("budget", "input")  # a select run may differ from the workdir's in these: it adds frames
KNOWN_COLUMNS = ("ood_score", "known")  # predict's columns for a classifier with a known-frame rule (`apply/planes.py`)


def problems(config: ml_collections.ConfigDict) -> list[str]:
    """Every problem of an embed, predict or select config."""
    c = Checks(config)
    c.one_of("task", ("embed", "predict", "select"))
    inputs.check_keys(c)
    c.one_of("on_error", ON_ERROR)
    c.boolean("overwrite")
    if c.get("task") == "predict":
        c.text("classifier", "a classification run")
        for key in ("smooth_window", "top_k", "min_separation"):
            c.integer(key)
        c.probability("threshold")
        c.boolean("stream")
        if c.get("stream") is True and c.get("fit") == "crop_pad":
            c.fail("fit", "crop_pad", "needs the whole video's content box, which a stream does not know; use "
                   "'stretch' or 'pad' with stream=True")  # fmt: skip
    else:
        backbones.check_keys(c)
    if c.get("task") == "select":
        c.integer("budget")
        c.one_of("strategy", tuple(STRATEGIES))
        for key in ("min_gap", "seed", "patient_folder"):
            c.integer(key, 0)
    return c.problems


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every problem of an embed, predict or select config."""
    raise_if(problems(config))


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """The `embed`, `predict` or `select` task of the command line; the line to print."""
    return {"embed": run_embed, "predict": run_predict, "select": run_select}[config.task](config, workdir)


@dataclasses.dataclass
class _Job:
    """One tool run: its config, workdir, input (bad files skipped as `on_error` says), model and outputs."""

    config: ml_collections.ConfigDict
    workdir: pathlib.Path
    data: SkippingInput
    model: Any
    outputs: ToolOutputs

    def check_some_read(self) -> None:
        """DataError (after writing skipped.csv) when every file of the input was skipped."""
        listed = len(self.data.sources())
        if listed and len(self.data.skipped) == listed:
            write_csv(self.workdir / SKIPPED_CSV, ("source_id", "reason"),
                      [(s.source_id, s.reason) for s in self.data.skipped])  # fmt: skip
            raise DataError(f"none of the {listed} file(s) of {self.data.description} could be read; the reasons are "
                            f"in {self.workdir / SKIPPED_CSV}")  # fmt: skip

    def finish(self, message: str, moved: pathlib.Path | None) -> str:
        return self.outputs.finish(message, self.data.skipped, moved)


def _open(config: ml_collections.ConfigDict, workdir, load: Callable[[], Any], growable=()) -> _Job:
    """Validates the config, opens its input and loads its model (`load()`), all before anything is written, and
    reads what the workdir holds."""
    validate(config)
    data = open_input(config.input, config.input_type, config.data_dir, config.split, config.fit,
                      config.deidentify_pixels)  # fmt: skip
    model = load()
    workdir = pathlib.Path(workdir)
    outputs = ToolOutputs(workdir, public_config(config, data, model), growable)
    enable_compilation_cache(config.compilation_cache_dir)
    return _Job(config, workdir, SkippingInput(data, config.on_error), model, outputs)


def _backbone(config: ml_collections.ConfigDict) -> Callable[[], Backbone]:
    model = config.model
    return lambda: load_backbone(config.backbone, arch=model.arch or None, width=model.width or None,
                                 patch_size=model.get("patch_size", 0) or None,
                                 image_size=config.image_size or None)  # fmt: skip


def _embed(job: _Job) -> Embeddings:
    config = job.config
    try:
        return embed_input(job.model, job.data, config.frame_skip, config.batch_size, config.progress_bar)
    except ValueError:
        job.check_some_read()
        raise


@exclusive_workdir
def run_embed(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """Frozen features of every frame of `config.input` -> embeddings.npz / embeddings.csv in `workdir`."""
    job = _open(config, workdir, _backbone(config))
    done = job.outputs.up_to_date()
    if done:
        return done
    moved = job.outputs.make_room(config.overwrite)
    job.outputs.start(job.data)
    embeddings = _embed(job)
    path = embeddings.save(job.workdir)
    return job.finish(f"{len(embeddings)} frames x {embeddings.features.shape[1]} features of {job.model.source}: "
                      f"{path}", moved)  # fmt: skip


@exclusive_workdir
def run_select(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """Embeds `config.input`, chooses frames by `config.strategy` (`apply/selection.py`: spread over videos,
    neighbours of a chosen frame skipped) up to `config.budget` in all, and adds them to `workdir/to_label/` as PNGs
    and rows of labels.csv; writes the embeddings and `selection.csv` (every chosen frame in the order of choice) to
    `workdir`. Frames chosen before in the workdir (selection.csv) stay chosen and are not chosen again."""
    job = _open(config, workdir, _backbone(config), SELECT_GROWS)
    done = job.outputs.up_to_date()
    if done:
        return done
    moved = job.outputs.make_room(config.overwrite)
    before = read_selection(job.workdir)
    to_add = config.budget - len(before)
    if to_add < 0:
        raise UserError(
            f"config.budget = {config.budget}: {job.workdir} holds {len(before)} frames chosen before (selection.csv), "
            f"which are never unchosen (their labels are kept); give a budget >= {len(before)} to add frames, a new "
            f"--workdir, or --config.overwrite=True to move this selection into {job.workdir / PREVIOUS}/<time>/"
        )
    if to_add == 0:
        return (f"nothing to add: the {len(before)} frames of budget {config.budget} were chosen before "
                f"({job.workdir / 'to_label' / LABELS_CSV}); raise config.budget to choose more")  # fmt: skip
    job.outputs.start(job.data)
    return job.finish(_choose(job, before, to_add), moved)


def _choose(job: _Job, before: list[tuple[str, int]], to_add: int) -> str:
    """Chooses `to_add` frames besides those chosen `before` and adds them to the labelling set; the line to print."""
    from fetalssl_jax.apply import select

    config, data = job.config, job.data
    embeddings = _embed(job)
    embeddings.save(job.workdir)
    patients = data.patients(config.patient_folder) if config.get("patient_folder", 0) else None
    labelled = [r for r in rows_of(embeddings, before) if r is not None]
    chosen = select(embeddings, to_add, strategy=config.strategy, min_gap=config.min_gap, seed=config.seed,
                    patients=patients, labelled=np.asarray(labelled, np.int64))  # fmt: skip
    frames = [(str(embeddings.source_ids[r]), int(embeddings.frame_index[r])) for r in chosen]
    blocks = data.blocks(job.model.image_size, config.frame_skip, config.batch_size)
    csv_path = export_for_labelling(blocks, embeddings, chosen, job.workdir / "to_label", patients)
    write_selection(job.workdir, before + frames, embeddings)
    sources = embeddings.source_ids[chosen].tolist()
    videos = f"{len(set(sources))} videos"
    if patients is not None:
        videos += f" of {len({patients[s] for s in sources})} patients"
    # the planes are built with the fit the frames were chosen with (the PNGs keep the recording's geometry)
    build_config = "csv"
    if config.fit != "stretch":
        build_config = "'" + json.dumps({"name": f"csv_{config.fit}", "fit": config.fit}) + "'"
    chose = f"chose {len(chosen)} of {len(embeddings)} frames from {videos}"
    if before:
        chose += (f" besides the {len(before)} chosen before ({len(before) + len(chosen)} of budget {config.budget}; "
                  "the new rows are at the end, the classes filled in are kept)")  # fmt: skip
    return (f"{chose}; label them in {csv_path} (fill in `class`), then build: tfds build "
            f"data_builders/fetal_cardiac_planes --config {build_config} --manual_dir {csv_path.parent}")  # fmt: skip


@exclusive_workdir
def run_predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """`config.classifier` on `config.input`: predictions.csv for images and datasets; for videos, per video the
    frame probabilities, best frames (PNG), a timeline plot and summary.json (in `workdir/<source_id>/` when the
    input holds several videos); with the classifier's known-frame rule, every frame's score and whether it is a
    known plane (`apply/planes.py`). With `config.stream`, one live video frame by frame (`apply/stream.py`)."""
    if config.stream:
        from fetalssl_jax.apply.stream import run_stream

        validate(config)
        return run_stream(config, workdir)
    job = _open(config, workdir, lambda: load_classifier(config.classifier))
    done = job.outputs.up_to_date()
    if done:
        return done
    moved = job.outputs.make_room(config.overwrite)
    job.outputs.start(job.data)
    message = predict_input(job.model, job.data, job.workdir, config)
    job.check_some_read()
    return job.finish(message, moved)


def predict_input(
    classifier: PlaneClassifier, data: Input | SkippingInput, workdir: pathlib.Path, config: ml_collections.ConfigDict
) -> str:
    """The reports of `run_predict` for a loaded classifier; `config` holds the predict config's keys."""
    if data.class_names:
        check_class_names(classifier, data.class_names, data.description)
    outputs = planes.outputs_fn(classifier, config.batch_size)
    blocks = map_blocks(outputs, data.blocks(classifier.image_size, config.frame_skip, config.batch_size),
                        config.batch_size, config.progress_bar)  # fmt: skip
    blocks = ((block, out[:, :-1], out[:, -1], planes.known_frames(classifier, out[:, -1], block.doppler))
              for block, out in blocks)  # fmt: skip
    if not data.is_video:
        return _image_predictions(blocks, classifier.class_names, workdir / "predictions.csv")
    summaries = []
    for block, probs, scores, known in blocks:
        out = workdir / block.source_ids[0] if len(data.videos) > 1 else workdir
        summaries.append(_video_report(config, classifier.class_names, block, probs, out, scores, known))
    found = sorted({name for s in summaries for name in s["planes_found"]})
    if len(data.videos) > 1:
        write_json(workdir / "summary.json", {"videos": summaries})
    not_known = sum(s.get("frames_not_known", 0) for s in summaries)
    unknown = f" ({not_known} frames not a known plane)" if not_known else ""
    return f"{len(summaries)} video(s); planes found: {found or 'none'}{unknown}; reports in {workdir}"


def _known_columns(scores: np.ndarray, known: np.ndarray | None, i: int) -> list[str]:
    """The `ood_score` and `known` cells of row `i` (none for a classifier without a known-frame rule)."""
    return [] if known is None else [f"{scores[i]:.6f}", str(bool(known[i])).lower()]


def _image_predictions(blocks, class_names: tuple[str, ...], path: pathlib.Path) -> str:
    rows, correct, labelled, not_known, has_rule = [], 0, 0, 0, False
    for block, probs, scores, known in blocks:
        has_rule = known is not None
        not_known += 0 if known is None else int(np.sum(~known))
        for i, p in enumerate(probs):
            label = int(block.labels[i])
            prediction = int(np.argmax(p))
            labelled += label != NO_LABEL
            correct += label == prediction
            rows.append([block.source_ids[i], class_names[label] if label != NO_LABEL else "",
                         class_names[prediction], *(f"{x:.6f}" for x in p),
                         *_known_columns(scores, known, i)])  # fmt: skip
    write_csv(path, ["source_id", "label", "prediction", *(f"p_{n}" for n in class_names),
                     *(KNOWN_COLUMNS if has_rule else ())], rows)  # fmt: skip
    accuracy = f"; accuracy {correct / labelled:.3f} on {labelled} labelled images" if labelled else ""
    unknown = f"; {not_known} not a known plane (known = false)" if has_rule else ""
    return f"{len(rows)} images{accuracy}{unknown}: {path}"


def _video_report(
    config: ml_collections.ConfigDict, class_names: tuple[str, ...], block, probs: np.ndarray, out: pathlib.Path,
    scores: np.ndarray, known: np.ndarray | None,
) -> dict[str, Any]:  # fmt: skip
    """frames.csv, best-frame PNGs (known frames only), timeline.png and summary.json of one video in `out`; the
    summary."""
    out.mkdir(parents=True, exist_ok=True)
    smoothed = planes.smooth(probs, config.smooth_window)
    found = planes.best_frames(smoothed, block.frame_index, config.threshold, config.top_k, config.min_separation,
                               known)  # fmt: skip
    files = []
    for name, frames in zip(class_names, found, strict=True):
        files.append([])
        for rank, f in enumerate(frames, start=1):
            file = f"best_{planes.file_safe(name)}_{rank}_frame{f.frame:06d}_p{f.probability:.2f}.png"
            save_png(out / file, block.originals[f.row], {"plane": name, "probability": f"{f.probability:.6f}",
                                                          "frame": str(f.frame)})  # fmt: skip
            files[-1].append(file)
    write_csv(out / "frames.csv", ["frame_index", *(f"p_{n}" for n in class_names),
                                   *(f"smoothed_{n}" for n in class_names),
                                   *(KNOWN_COLUMNS if known is not None else ())],
              [[int(i), *(f"{x:.6f}" for x in p), *(f"{x:.6f}" for x in s), *_known_columns(scores, known, row)]
               for row, (i, p, s) in enumerate(zip(block.frame_index, probs, smoothed, strict=True))])  # fmt: skip
    title = f"{block.source_ids[0]}: plane probabilities (smoothing {config.smooth_window} frames)"
    planes.plot_timeline(smoothed, block.frame_index, class_names, found, config.threshold, out / "timeline.png", title,
                         known)  # fmt: skip
    settings = {"source_id": str(block.source_ids[0]), "frames": len(block), "frame_skip": config.frame_skip,
                "smooth_window": config.smooth_window, "threshold": config.threshold,
                "top_k": config.top_k}  # fmt: skip
    if known is not None:
        settings["frames_not_known"] = int(np.sum(~known))
    summary = planes.summarise(class_names, found, files, settings)
    write_json(out / "summary.json", summary)
    return summary
