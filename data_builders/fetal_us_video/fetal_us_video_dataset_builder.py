"""fetal_us_video: unlabelled fetal ultrasound scan videos as frame-pair, clip or frame records.

  tfds build data_builders/fetal_us_video --config synthetic --data_dir ~/tensorflow_datasets
  tfds build data_builders/fetal_us_video --config pairs --manual_dir /path/to/videos
  tfds build data_builders/fetal_us_video --manual_dir /path/to/videos \\
      --config '{"name": "pairs_gap4_128", "record": "pairs", "max_gap": 4, "image_size": 128, "on_error": "skip"}'

The manual folder holds videos in any of the formats of `fetalssl_jax.data.build.readers` (mp4/avi, DICOM cine loops,
HDF5 with one dataset per video, .npy/.npz, folders of frame images), in any sub-folders. Every `frame_skip`-th
frame is kept, converted to one gray channel and resized to `image_size` squared (`fit`: stretched as the
reference does, or cropped to the scan's content and padded, for screen captures; `readers.resize_frames`).
Videos (never frames) are split into train and validation. Records carry a salted hash of the video's relative path
as `video_id`, never a file name or a DICOM tag (salt: $FETALSSL_ID_SALT, else `<manual_dir>/.id_salt`, else this
installation's random salt, `readers.id_salt`).

Pixels are de-identified (`deidentify_pixels`, default on): a DICOM that declares its image regions is cropped to
them (one video per region), every other video is blanked outside its scan sector, so the names, dates and ids
that scanners print around the image never reach a record. Colour-Doppler frames are left out (`doppler`).
`metadata.json` reports per split what was left out: unreadable videos (on_error 'skip'), videos too short for one
record (`skipped_short_videos_<split>`), colour-Doppler frames (`skipped_doppler_frames_<split>`).

Screen captures (black bands, captions) beside plane images exported without them:
  tfds build data_builders/fetal_us_video --manual_dir DIR --config '{"name": "pairs_crop", "fit": "crop_pad"}'
and build the planes with the same fit.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fetalssl_jax.data import synthetic
from fetalssl_jax.data.build import readers
from fetalssl_jax.data.build.tfds_build import BeamOrLocalBuilder, Made, SkipItem, SkippingExamples

RECORDS = ("pairs", "clips", "frames")


@dataclasses.dataclass(eq=False)
class FetalUsVideoConfig(tfds.core.BuilderConfig):
    """What records are made and how frames are prepared.

    record: 'pairs' (frame1, frame2: a frame and a frame of the same video at most `max_gap` kept frames away,
        0 = the same frame), 'clips' (`clip_length` kept frames `clip_stride` apart, for the reorder pretext)
        or 'frames' (single frames).
    synthetic: write the embedded generated videos instead of reading the manual folder.
    on_error: 'raise' stops at the first bad video, naming it; 'skip' logs it and counts it in metadata.json.
        A video with fewer kept frames than one record needs (a clip) is always left out and counted.
    fit: how a frame becomes a square (`readers.resize_frames`): 'stretch' (the reference's resize), 'crop_pad'
        (the content box, then black padding: aspect kept, capture margins dropped) or 'pad'. Build the labelled
        planes with the same fit.
    patient_folder: which folder level below the manual folder names the patient, so that all of a patient's
        videos land in one split: 1 for `<patient>/<video>`, 2 for `<site>/<patient>/<video>`; 0 (the default):
        every video is its own patient.
    deidentify_pixels: blank everything outside the image (the DICOM's image regions, else the scan sector);
        False keeps the frames as decoded (a DICOM's image regions are still cropped out).
    doppler: 'skip' (the default) leaves colour-Doppler frames out: the models are B-mode, and a colour overlay turned
        gray is a bright blob that is no echo and hides the tissue under it; 'gray' keeps them in gray.
    """

    record: str = "pairs"
    image_size: int = 256
    frame_skip: int = 5
    max_gap: int = 0
    clip_length: int = 4
    clip_stride: int = 1
    validation_fraction: float = 0.1
    split_seed: int = 0
    on_error: str = "raise"
    fit: str = "stretch"
    patient_folder: int = 0
    deidentify_pixels: bool = True
    doppler: str = "skip"
    synthetic: bool = False
    synthetic_videos: int = 48
    synthetic_frames: int = 64  # kept frames per generated video (frame skip already applied when rendering)


def _check_config(c: FetalUsVideoConfig) -> None:
    if c.record not in RECORDS:
        raise ValueError(f"fetal_us_video config {c.name!r}: record must be one of {RECORDS}, got {c.record!r}")
    for key, minimum in (("image_size", 8), ("frame_skip", 1), ("max_gap", 0), ("clip_length", 2),
                         ("clip_stride", 1), ("synthetic_videos", 2), ("synthetic_frames", 1),
                         ("patient_folder", 0)):  # fmt: skip
        if int(getattr(c, key)) < minimum:
            raise ValueError(f"fetal_us_video config {c.name!r}: {key} must be >= {minimum}, got {getattr(c, key)}")
    if c.fit not in readers.FITS:
        raise ValueError(f"fetal_us_video config {c.name!r}: fit must be one of {readers.FITS}, got {c.fit!r}")
    if c.doppler not in readers.DOPPLER:
        raise ValueError(
            f"fetal_us_video config {c.name!r}: doppler must be one of {readers.DOPPLER}, got {c.doppler!r}"
        )
    if not isinstance(c.deidentify_pixels, bool):
        raise ValueError(f"fetal_us_video config {c.name!r}: deidentify_pixels must be true or false, got "
                         f"{c.deidentify_pixels!r}")  # fmt: skip
    if not 0.0 <= c.validation_fraction < 1.0:
        raise ValueError(f"fetal_us_video config {c.name!r}: validation_fraction must be in [0, 1)")


def min_frames(c: FetalUsVideoConfig) -> int:
    """Kept frames a video needs for one record: a clip's span for clips, else 1."""
    return (c.clip_length - 1) * c.clip_stride + 1 if c.record == "clips" else 1


def records_of_video(
    frames: np.ndarray, kept: np.ndarray, video_id: str, c: FetalUsVideoConfig
) -> list[tuple[str, dict]]:
    """(key, example) records of one prepared video (uint8 [T, S, S, 1], original frame numbers [T]).

    Pairs: one record per kept frame i, partner j = clip(i + d, 0, T - 1) with d uniform in [-max_gap, max_gap]
    from a generator seeded by the video id, so records do not depend on the runner or the worker.
    Clips: one record per start i in [0, T - span], span = (clip_length - 1) * clip_stride + 1.
    """
    n = len(frames)
    out = []
    if c.record == "pairs":
        rng = np.random.default_rng([int(video_id[:15], 16), 11])
        partner = np.clip(np.arange(n) + rng.integers(-c.max_gap, c.max_gap + 1, size=n), 0, n - 1)
        for i, j in enumerate(partner):
            out.append((f"{video_id}_{i:06d}", {"frame1": frames[i], "frame2": frames[j], "video_id": video_id,
                                                 "frame_index1": kept[i], "frame_index2": kept[j]}))  # fmt: skip
    elif c.record == "clips":
        span = (c.clip_length - 1) * c.clip_stride + 1
        offsets = c.clip_stride * np.arange(c.clip_length)
        for i in range(n - span + 1):
            out.append((f"{video_id}_{i:06d}", {"clip": frames[i + offsets], "video_id": video_id,
                                                 "frame_indices": kept[i + offsets]}))  # fmt: skip
    else:
        for i in range(n):
            out.append((f"{video_id}_{i:06d}", {"image": frames[i], "video_id": video_id, "frame_index": kept[i]}))
    return out


def _real_video_records(item: tuple[readers.VideoRef, str], c: FetalUsVideoConfig) -> Made:
    ref, video_id = item
    raw = readers.read_video(ref, c.deidentify_pixels)
    frames, kept = readers.prepare_video(raw, ref.name, c.image_size, c.frame_skip, c.fit, c.doppler)
    doppler = len(range(0, len(raw), c.frame_skip)) - len(kept)
    _check_length(ref.name, len(kept), doppler, c)
    return Made(records_of_video(frames, kept, video_id, c), {"doppler_frames": doppler})


def _check_length(name: str, kept: int, doppler: int, c: FetalUsVideoConfig) -> None:
    """SkipItem for a video with fewer kept frames than one record needs, saying why."""
    if kept < min_frames(c):
        why = f" after leaving out {doppler} colour-Doppler frame(s)" if doppler else ""
        raise SkipItem("short_videos", f"{name}: {kept} kept frame(s){why} (frame_skip {c.frame_skip}); a {c.record} "
                                       f"record needs {min_frames(c)}", also={"doppler_frames": doppler})  # fmt: skip


def _synthetic_video_records(item: tuple[int, str], c: FetalUsVideoConfig) -> Made:
    index, video_id = item
    video = synthetic.generate_video(index, c.synthetic_frames, c.image_size, seed=0, frame_skip=c.frame_skip)
    frames = video.frames[..., None]
    kept = np.arange(len(frames), dtype=np.int32) * c.frame_skip
    _check_length(f"synthetic/{index}", len(kept), 0, c)
    return Made(records_of_video(frames, kept, video_id, c))


class FetalUsVideo(BeamOrLocalBuilder):
    """Unlabelled fetal ultrasound videos -> frame pairs / clips / frames, split by video."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Pixels de-identified (deidentify_pixels): DICOM image regions cropped (one video each), other videos "
        "blanked outside the scan sector; colour-Doppler frames left out (doppler); DICOM read through its "
        "palette, modality and VOI LUTs and signed values; videos too short for one record counted as skipped.",
    }
    BUILDER_CONFIGS = [
        FetalUsVideoConfig(name="pairs", description="Frame pairs of the manual folder's videos (max_gap 0)."),
        FetalUsVideoConfig(name="clips", record="clips", description="Clips of 4 kept frames, for reorder."),
        FetalUsVideoConfig(name="frames", record="frames", description="Single frames."),
        FetalUsVideoConfig(name="synthetic", synthetic=True, image_size=64, max_gap=2,
                           description="The embedded generated videos (48 x 64 frames, 64 px) as pairs "
                                       "up to 2 kept frames apart: no files needed."),
        FetalUsVideoConfig(name="synthetic_clips", record="clips", synthetic=True, image_size=64,
                           description="The embedded generated videos as clips of 4 frames."),
    ]  # fmt: skip
    DEFAULT_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the scan videos (mp4/avi, DICOM cine loops, HDF5 with one dataset per video, .npy/.npz, or folders of
    frame images) in a folder, in any sub-folders, and pass it as --manual_dir. The video ids are salted with
    this installation's random salt (made on first use; keep it secret and backed up), or with the first line of
    <manual_dir>/.id_salt, or $FETALSSL_ID_SALT.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        _check_config(c)
        image = tfds.features.Image(shape=(c.image_size, c.image_size, 1), dtype=np.uint8, encoding_format="png")
        if c.record == "pairs":
            features = {"frame1": image, "frame2": image, "frame_index1": np.int32, "frame_index2": np.int32}
        elif c.record == "clips":
            features = {
                "clip": tfds.features.Tensor(shape=(c.clip_length, c.image_size, c.image_size, 1), dtype=np.uint8,
                                             encoding=tfds.features.Encoding.ZLIB),
                "frame_indices": tfds.features.Tensor(shape=(c.clip_length,), dtype=np.int32),
            }  # fmt: skip
        else:
            features = {"image": image, "frame_index": np.int32}
        features["video_id"] = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            metadata=tfds.core.MetadataDict(
                record=c.record,
                image_size=c.image_size,
                frame_skip=c.frame_skip,
                max_gap=c.max_gap,
                clip_length=c.clip_length,
                clip_stride=c.clip_stride,
            ),  # fmt: skip
            homepage="https://github.com/fetalssl/fetalssl_jax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        c = self.builder_config
        fractions = {"train": 1.0 - c.validation_fraction, "validation": c.validation_fraction}
        if c.synthetic:
            items = [(i, readers.salted_hash(f"synthetic/{i}", "synthetic")) for i in range(c.synthetic_videos)]
            # patients own 2 consecutive videos (generate_videos): split by patient, stricter than by video
            split = readers.split_groups([str(i // 2) for i, _ in items], fractions, c.split_seed)
            by_split = {s: [it for it in items if split[str(it[0] // 2)] == s] for s in fractions}
            make = functools.partial(_synthetic_video_records, c=c)
        else:
            root = pathlib.Path(dl_manager.manual_dir)
            salt = readers.id_salt(root)
            refs = readers.list_videos(root)
            items = [(r, readers.salted_hash(r.name, salt)) for r in refs]
            depth = int(c.patient_folder)
            patients = [vid if depth == 0 else readers.salted_hash(readers.patient_folder(r.relpath, depth), salt)
                        for r, vid in items]  # fmt: skip
            split = readers.split_groups(patients, fractions, c.split_seed)
            by_split = {s: [it for it, p in zip(items, patients, strict=True) if split[p] == s] for s in fractions}
            make = functools.partial(_real_video_records, c=c)
        reasons = ("short_videos",) if c.synthetic else ("short_videos", "doppler_frames")
        return {
            s: self._generate_examples(items, SkippingExamples(make, c.on_error, "videos", reasons), s)
            for s, items in by_split.items()
            if items
        }

    def _generate_examples(self, items, examples: SkippingExamples, split: str):
        return self._emit(items, examples, split)
