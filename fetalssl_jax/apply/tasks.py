"""The command-line tasks `embed`, `predict` and `select` (configs/embed.py, predict.py, select.py): a config and a
workdir in, files in the workdir out; each returns the line the command prints.

Every run writes `config.json` (the resolved config) and `sources.csv` (salted id -> path of every video or image
read: the local key to the ids in the other files, which never name a file; keep it with your scans).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from fetalssl_jax import config_lib
from fetalssl_jax.apply import planes
from fetalssl_jax.apply.embedding import embed_input, map_blocks
from fetalssl_jax.apply.files import save_png, write_csv
from fetalssl_jax.apply.inputs import NO_LABEL, Input, open_input
from fetalssl_jax.apply.labelling import export_for_labelling
from fetalssl_jax.apply.loading import Backbone, PlaneClassifier, check_class_names, load_backbone, load_classifier
from fetalssl_jax.apply.selection import STRATEGIES
from fetalssl_jax.downstream.report import write_json
from fetalssl_jax.runtime.sharding import enable_compilation_cache


def _start(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, load: Callable[[], Any]):
    """Validates the config, opens its input and loads its model (`load()`), all before anything is written; then
    writes config.json and sources.csv. (workdir, input, model)."""
    config_lib.validate_tool(config, {"strategy": tuple(STRATEGIES)})
    data = open_input(config.input, config.input_type, config.data_dir, config.split, config.fit)
    model = load()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config_lib.config_json(config))
    if data.sources():
        write_csv(workdir / "sources.csv", ("source_id", "path"), data.sources())
    enable_compilation_cache(config.compilation_cache_dir)
    return workdir, data, model


def _backbone(config: ml_collections.ConfigDict) -> Callable[[], Backbone]:
    return lambda: load_backbone(config.backbone, arch=config.model.arch or None, width=config.model.width or None,
                                 image_size=config.image_size or None)  # fmt: skip


def run_embed(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """Frozen features of every frame of `config.input` -> embeddings.npz / embeddings.csv in `workdir`."""
    workdir, data, backbone = _start(config, workdir, _backbone(config))
    embeddings = embed_input(backbone, data, config.frame_skip, config.batch_size, config.progress_bar)
    path = embeddings.save(workdir)
    return f"{len(embeddings)} frames x {embeddings.features.shape[1]} features of {backbone.source}: {path}"


def run_select(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """Embeds `config.input`, chooses `config.budget` frames by `config.strategy` (`apply/selection.py`: spread
    over videos, neighbours of a chosen frame skipped) and writes them to `workdir/to_label/` as PNGs and
    labels.csv, the embeddings and `selection.csv` (rows in the order of choice) to `workdir`."""
    from fetalssl_jax.apply import select

    workdir, data, backbone = _start(config, workdir, _backbone(config))
    embeddings = embed_input(backbone, data, config.frame_skip, config.batch_size, config.progress_bar)
    embeddings.save(workdir)
    patients = data.patients(config.patient_folder) if config.get("patient_folder", 0) else None
    chosen = select(embeddings, config.budget, strategy=config.strategy, min_gap=config.min_gap, seed=config.seed,
                    patients=patients)  # fmt: skip
    write_csv(workdir / "selection.csv", ("order", "row", "source_id", "frame_index"),
              [(k, int(r), embeddings.source_ids[r], int(embeddings.frame_index[r])) for k, r in
               enumerate(chosen)])  # fmt: skip
    blocks = data.blocks(backbone.image_size, config.frame_skip, config.batch_size)
    csv_path = export_for_labelling(blocks, embeddings, chosen, workdir / "to_label", patients)
    sources = embeddings.source_ids[chosen].tolist()
    videos = f"{len(set(sources))} videos"
    if patients is not None:
        videos += f" of {len({patients[s] for s in sources})} patients"
    # the planes are built with the fit the frames were chosen with (the PNGs keep the recording's geometry)
    build_config = "csv"
    if config.fit != "stretch":
        build_config = "'" + json.dumps({"name": f"csv_{config.fit}", "fit": config.fit}) + "'"
    return (f"chose {len(chosen)} of {len(embeddings)} frames from {videos}; label them in {csv_path} "
            f"(fill in `class`), then build: tfds build data_builders/fetal_cardiac_planes --config {build_config} "
            f"--manual_dir {csv_path.parent}")  # fmt: skip


def run_predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """`config.classifier` on `config.input`: predictions.csv for images and datasets; for videos, per video the
    frame probabilities, best frames (PNG), a timeline plot and summary.json (in `workdir/<source_id>/` when the
    input holds several videos). With `config.stream`, one live video frame by frame (`apply/stream.py`)."""
    if config.get("stream", False):
        from fetalssl_jax.apply.stream import run_stream

        return run_stream(config, workdir)
    workdir, data, classifier = _start(config, workdir, lambda: load_classifier(config.classifier))
    return predict_input(classifier, data, workdir, config)


def predict_input(
    classifier: PlaneClassifier, data: Input, workdir: pathlib.Path, config: ml_collections.ConfigDict
) -> str:
    """The reports of `run_predict` for a loaded classifier; `config` holds the predict config's keys."""
    if data.class_names:
        check_class_names(classifier, data.class_names, data.description)
    probabilities = planes.probabilities_fn(classifier, config.batch_size)
    blocks = map_blocks(probabilities, data.blocks(classifier.image_size, config.frame_skip, config.batch_size),
                        config.batch_size, config.progress_bar)  # fmt: skip
    if not data.is_video:
        return _image_predictions(blocks, classifier.class_names, workdir / "predictions.csv")
    summaries = []
    for block, probs in blocks:
        out = workdir / block.source_ids[0] if len(data.videos) > 1 else workdir
        summaries.append(_video_report(config, classifier.class_names, block, probs, out))
    found = sorted({name for s in summaries for name in s["planes_found"]})
    if len(summaries) > 1:
        write_json(workdir / "summary.json", {"videos": summaries})
    return f"{len(summaries)} video(s); planes found: {found or 'none'}; reports in {workdir}"


def _image_predictions(blocks, class_names: tuple[str, ...], path: pathlib.Path) -> str:
    rows, correct, labelled = [], 0, 0
    for block, probs in blocks:
        for i, p in enumerate(probs):
            label = int(block.labels[i])
            prediction = int(np.argmax(p))
            labelled += label != NO_LABEL
            correct += label == prediction
            rows.append([block.source_ids[i], class_names[label] if label != NO_LABEL else "",
                         class_names[prediction], *(f"{x:.6f}" for x in p)])  # fmt: skip
    write_csv(path, ["source_id", "label", "prediction", *(f"p_{n}" for n in class_names)], rows)
    accuracy = f"; accuracy {correct / labelled:.3f} on {labelled} labelled images" if labelled else ""
    return f"{len(rows)} images{accuracy}: {path}"


def _video_report(
    config: ml_collections.ConfigDict, class_names: tuple[str, ...], block, probs: np.ndarray, out: pathlib.Path
) -> dict[str, Any]:
    """frames.csv, best-frame PNGs, timeline.png and summary.json of one video in `out`; the summary."""
    out.mkdir(parents=True, exist_ok=True)
    smoothed = planes.smooth(probs, config.smooth_window)
    found = planes.best_frames(smoothed, block.frame_index, config.threshold, config.top_k, config.min_separation)
    files = []
    for name, frames in zip(class_names, found, strict=True):
        files.append([])
        for rank, f in enumerate(frames, start=1):
            file = f"best_{planes.file_safe(name)}_{rank}_frame{f.frame:06d}_p{f.probability:.2f}.png"
            save_png(out / file, block.originals[f.row], {"plane": name, "probability": f"{f.probability:.6f}",
                                                          "frame": str(f.frame)})  # fmt: skip
            files[-1].append(file)
    write_csv(out / "frames.csv", ["frame_index", *(f"p_{n}" for n in class_names),
                                   *(f"smoothed_{n}" for n in class_names)],
              [[int(i), *(f"{x:.6f}" for x in p), *(f"{x:.6f}" for x in s)]
               for i, p, s in zip(block.frame_index, probs, smoothed, strict=True)])  # fmt: skip
    title = f"{block.source_ids[0]}: plane probabilities (smoothing {config.smooth_window} frames)"
    planes.plot_timeline(smoothed, block.frame_index, class_names, found, config.threshold, out / "timeline.png", title)
    settings = {"source_id": str(block.source_ids[0]), "frames": len(block), "frame_skip": config.frame_skip,
                "smooth_window": config.smooth_window, "threshold": config.threshold,
                "top_k": config.top_k}  # fmt: skip
    summary = planes.summarise(class_names, found, files, settings)
    write_json(out / "summary.json", summary)
    return summary
