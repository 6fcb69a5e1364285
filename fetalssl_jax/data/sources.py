"""Where training and evaluation frames come from, chosen by `config.data.source`."""

from __future__ import annotations

import ml_collections

from fetalssl_jax.data import synthetic
from fetalssl_jax.data.pipeline import FrameDataset

SOURCES = ("synthetic",)


def _check_source(data: ml_collections.ConfigDict) -> None:
    if data.source not in SOURCES:
        raise ValueError(f"unknown data source {data.source!r} (config.data.source); choose one of {SOURCES}")


def pretraining_frames(config: ml_collections.ConfigDict) -> FrameDataset:
    """Unlabelled frames for self-supervised pretraining."""
    data = config.data
    _check_source(data)
    videos = synthetic.generate_videos(
        num_videos=data.num_videos,
        num_frames=data.frames_per_video,
        image_size=data.stored_size,
        seed=data.seed,
        frame_skip=data.frame_skip,
    )
    return FrameDataset.from_videos(videos)


def labelled_splits(config: ml_collections.ConfigDict) -> dict[str, synthetic.LabelledFrames]:
    """Labelled plane images split by patient into 'train', 'valid', 'test' (for monitoring and evaluation)."""
    _check_source(config.data)
    return synthetic.generate_labelled_frames(
        num_patients=config.eval.num_patients,
        frames_per_patient=config.eval.frames_per_patient,
        image_size=config.data.stored_size,
        seed=config.data.seed,
    )
