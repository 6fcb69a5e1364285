"""Where training and evaluation frames come from, chosen by `config.data.source` and `config.eval.dataset`."""

from __future__ import annotations

import ml_collections

from fetalssl_jax.data import synthetic, tfds_source
from fetalssl_jax.data.pipeline import FrameDataset
from fetalssl_jax.data.types import LabelledFrames
from fetalssl_jax.validation import Checks

SOURCES = ("synthetic", "tfds")


def check_config(c: Checks) -> None:
    """Adds the problems of the pretraining data keys (`data.*`) to `c`."""
    c.one_of("data.source", SOURCES)
    if c.get("data.source") == "tfds":
        c.text("data.name", "a built dataset when data.source is 'tfds', e.g. 'fetal_us_video/pairs'")
    for key in ("data.num_videos", "data.frames_per_video", "data.frame_skip"):
        c.integer(key)
    for key in ("data.max_gap", "data.prefetch"):
        c.integer(key, 0)
    check_labelled(c)


def check_labelled(c: Checks, key: str = "eval") -> None:
    """Adds the problems of the keys that size the images and the labelled set (`labelled_splits`) to `c`."""
    c.integer("data.stored_size", 16, "the embedded data is rendered at 16 px or more")
    c.integer("data.seed", 0)
    c.text(f"{key}.dataset", "'synthetic' or a built fetal_cardiac_planes dataset")
    c.integer(f"{key}.num_patients", 3, "patients are split into train, validation and test")
    c.integer(f"{key}.frames_per_patient", 5, "every patient gives a frame of each of the 5 planes")


def pretraining_frames(
    config: ml_collections.ConfigDict, example_mode: str = "frames"
) -> FrameDataset | tfds_source.RecordDataset:
    """Unlabelled frames for self-supervised pretraining: generated in memory, or the records of a built
    fetal_us_video dataset (`config.data.name`, `data_dir`, `split`) holding `example_mode` examples."""
    data = config.data
    if data.source == "tfds":
        return tfds_source.open_pretraining_records(
            data.name, data.data_dir, data.split, example_mode, data.get("clip_length", 0)
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
