"""The two kinds of data every source provides (embedded synthetic, TFDS-built real data): unlabelled videos
for pretraining and labelled plane images for evaluation."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Video:
    """One unlabelled scan video.

    Attributes:
        frames: uint8 ``[T, H, W]`` grayscale frames.
        planes: int32 ``[T]`` index of the dominant plane of each frame (into the class names, `synthetic.PLANES`
            for the embedded data); never to be used by self-supervised methods, only for analysis.
        patient_id: e.g. ``"P0007"``; several videos share a patient.
        video_id: unique within one dataset, e.g. ``"P0007-v1"``.
    """

    frames: np.ndarray
    planes: np.ndarray
    patient_id: str
    video_id: str


@dataclasses.dataclass(frozen=True)
class LabelledFrames:
    """Labelled plane images of one split.

    Attributes:
        images: uint8 ``[N, H, W]``.
        labels: int32 ``[N]``, index into the dataset's class names.
        patient_ids: array of str ``[N]`` (e.g. ``"L0003"``).
    """

    images: np.ndarray
    labels: np.ndarray
    patient_ids: np.ndarray
