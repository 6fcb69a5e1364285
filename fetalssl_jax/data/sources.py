"""Where training and evaluation frames come from, chosen by `config.data.source` and `config.eval.dataset`."""

from __future__ import annotations

import ml_collections

from fetalssl_jax.data import synthetic, tfds_source
from fetalssl_jax.data.pipeline import FrameDataset
from fetalssl_jax.data.types import LabelledFrames

SOURCES = ("synthetic", "tfds")


def _check_source(data: ml_collections.ConfigDict) -> None:
    if data.source not in SOURCES:
        raise ValueError(f"unknown data source {data.source!r} (config.data.source); choose one of {SOURCES}")
    if data.source == "tfds" and not data.name:
        raise ValueError("config.data.source is 'tfds' but config.data.name is empty; e.g. 'fetal_us_video/synthetic'")


def pretraining_frames(
    config: ml_collections.ConfigDict, example_mode: str = "frames"
) -> FrameDataset | tfds_source.RecordDataset:
    """Unlabelled frames for self-supervised pretraining: generated in memory, or the records of a built
    fetal_us_video dataset (`config.data.name`, `data_dir`, `split`) holding `example_mode` examples."""
    data = config.data
    _check_source(data)
    if data.source == "tfds":
        return tfds_source.open_pretraining_records(
            data.name, data.data_dir, data.split, example_mode, data.clip_length
        )
    videos = synthetic.generate_videos(
        num_videos=data.num_videos,
        num_frames=data.frames_per_video,
        image_size=data.stored_size,
        seed=data.seed,
        frame_skip=data.frame_skip,
    )
    return FrameDataset.from_videos(videos)


def class_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """Plane names of the labelled data, in label order: the embedded set's, or the built dataset's label names."""
    e = config.eval
    if e.dataset != "synthetic":
        return tuple(tfds_source.load_builder(e.dataset, e.data_dir).info.features["label"].names)
    return synthetic.PLANES


def labelled_splits(config: ml_collections.ConfigDict) -> dict[str, LabelledFrames]:
    """Labelled plane images split by patient into 'train', 'valid', 'test' (for monitoring and evaluation):
    generated (`config.eval.dataset` 'synthetic') or a built fetal_cardiac_planes dataset."""
    e = config.eval
    if e.dataset != "synthetic":
        return tfds_source.labelled_splits_from_tfds(e.dataset, e.data_dir)
    return synthetic.generate_labelled_frames(
        num_patients=e.num_patients,
        frames_per_patient=e.frames_per_patient,
        image_size=config.data.stored_size,
        seed=config.data.seed,
    )
