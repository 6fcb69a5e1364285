"""What `embed`, `predict` and `select` read: a video file, a folder (recursively: every format of
`data/build/readers.py`), image files, or a built TFDS dataset, as a stream of `FrameBlock`s.

A block is one video (so memory holds one decoded video at a time, whatever the corpus) or a chunk of images or
records. Video frames are prepared as the TFDS builder prepares them (`readers.prepare_video`: every
`frame_skip`-th frame, gray, resized to the network's input size); image files as the plane builder does (gray,
resized); records of a built dataset are used as stored. The network's own preprocessing (`preprocess_eval`)
then resizes whatever size it gets, as in evaluation: frames of another size are resized, never refused. A DICOM of
several frames or image regions is a video (one per region) wherever it is given.

Pixels are de-identified as the builders do (`deidentify`, default on; `readers.read_video`): DICOM image regions
cropped out, everything else blanked outside the scan sector, before a frame is embedded or kept as an original for
the PNGs of select and predict. Colour-Doppler frames are converted to gray.

Rows carry a salted id of their source (`readers.salted_hash` of the path relative to the input folder, salt
`readers.id_salt`: $FETALSSL_ID_SALT, `<folder>/.id_salt` or the installation's salt), never a file name; TFDS
records carry their own ids.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Sequence

import numpy as np

from fetalssl_jax.data.build import readers, sector
from fetalssl_jax.errors import DataError
from fetalssl_jax.validation import Checks

INPUT_TYPES = ("auto", "videos", "images")
TFDS_PREFIX = "tfds:"
IMAGE_FILE_SUFFIXES = readers.IMAGE_SUFFIXES + readers.DICOM_SUFFIXES
NO_LABEL = -1


def check_keys(c: Checks) -> None:
    """Adds the problems of the keys that say what to read and how (`presets.input_keys`) to `c`."""
    c.text("input", "a video or image file, a folder or tfds:<name>")
    c.one_of("input_type", INPUT_TYPES)
    c.one_of("fit", readers.FITS)
    c.boolean("deidentify_pixels")
    for key in ("frame_skip", "batch_size"):
        c.integer(key)
    c.boolean("progress_bar")


@dataclasses.dataclass(frozen=True)
class FrameBlock:
    """Rows of one video, or a chunk of images / records, ready for the network.

    frames: uint8 [n, S, S, 1]; source_ids: [n] salted ids of the video / image / record; frame_index: int32 [n]
    (the frame's number in the decoded video, 0 for an image); labels: int32 [n] (NO_LABEL without one); originals:
    the gray frames before resizing (uint8 [H, W] each), for the PNGs a user looks at; video: the video's name
    relative to the input ("" for a chunk of images or records); doppler: bool [n], the frames that were colour
    Doppler before they became gray (`sector.colour_doppler`; None: none can be, e.g. built records).
    """

    frames: np.ndarray
    source_ids: np.ndarray
    frame_index: np.ndarray
    labels: np.ndarray
    originals: Sequence[np.ndarray]
    video: str = ""
    doppler: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


@dataclasses.dataclass(frozen=True)
class Input:
    """A resolved input: its kind ('video' files and folders, 'images', 'tfds'), what it lists, and its class
    names (a labelled dataset's; empty otherwise)."""

    kind: str
    description: str
    videos: tuple[readers.VideoRef, ...] = ()
    images: tuple[pathlib.Path, ...] = ()
    root: pathlib.Path | None = None
    salt: str = ""
    tfds_name: str = ""
    data_dir: str = ""
    split: str = ""
    class_names: tuple[str, ...] = ()
    fit: str = "stretch"  # how a video frame or image becomes a square: as the builders' `fit`
    deidentify: bool = True  # blank everything outside the image: as the builders' `deidentify_pixels`

    @property
    def is_video(self) -> bool:
        return self.kind == "video"

    def sources(self) -> list[tuple[str, str]]:
        """(salted id, path relative to the input) of every video or image: the local key to the outputs' ids."""
        if self.kind == "video":
            return [(readers.salted_hash(ref.name, self.salt), ref.name) for ref in self.videos]
        if self.kind == "images":
            return [(self._image_id(p), self._relative(p)) for p in self.images]
        return []

    def patients(self, depth: int) -> dict[str, str]:
        """{salted source id: salted patient id} of every video or image, the patient being the folder `depth` levels
        below the input folder (`readers.patient_folder`; 0: every source is its own patient). A built dataset's
        records name their videos only: there it is an error."""
        if self.kind == "tfds":
            raise ValueError(
                f"patient_folder = {depth}: {self.description} is a built dataset, whose records name their "
                "videos only; use patient_folder = 0 or give the folder of files"
            )
        names = [ref.relpath for ref in self.videos] if self.kind == "video" else []
        names += [self._relative(p) for p in self.images]
        ids = [sid for sid, _ in self.sources()]
        if depth == 0:
            return {sid: sid for sid in ids}
        return {sid: readers.salted_hash(readers.patient_folder(name, depth), self.salt)
                for sid, name in zip(ids, names, strict=True)}  # fmt: skip

    def blocks(self, image_size: int, frame_skip: int = 5, chunk: int = 256) -> Iterator[FrameBlock]:
        """The input as FrameBlocks: one per video, or chunks of `chunk` images / records."""
        if self.kind == "video":
            for ref in self.videos:
                yield video_block(readers.read_video(ref, self.deidentify), ref.name,
                                  readers.salted_hash(ref.name, self.salt), image_size, frame_skip,
                                  self.fit)  # fmt: skip
        elif self.kind == "images":
            for start in range(0, len(self.images), chunk):
                yield self._image_block(self.images[start : start + chunk], image_size)
        else:
            yield from self._record_blocks(chunk)

    def _relative(self, path: pathlib.Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _image_id(self, path: pathlib.Path) -> str:
        return readers.salted_hash(self._relative(path), self.salt)

    def _image_block(self, paths: Sequence[pathlib.Path], image_size: int) -> FrameBlock:
        stored = [readers.read_image_file(p, self._relative(p), grayscale=False, deidentify=self.deidentify)
                  for p in paths]  # fmt: skip
        doppler = np.array([bool(sector.colour_doppler(image[None])[0]) for image in stored], bool)
        originals = [readers.to_grayscale(image[None])[0] for image in stored]
        n = len(paths)
        return FrameBlock(
            resize_images(originals, image_size, self.fit), np.array([self._image_id(p) for p in paths]),
            np.zeros(n, np.int32), np.full(n, NO_LABEL, np.int32), originals, doppler=doppler,
        )  # fmt: skip

    def _record_blocks(self, chunk: int) -> Iterator[FrameBlock]:
        from fetalssl_jax.data.tfds_source import data_source, load_builder

        builder = load_builder(self.tfds_name, self.data_dir)
        source = data_source(builder, self.split, self.tfds_name)
        field = "image" if "image" in builder.info.features else "frame1"
        for start in range(0, len(source), chunk):
            records = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
            frames = np.stack([r[field] for r in records]).astype(np.uint8)
            ids = [r.get("video_id", r.get("image_id", b"")) for r in records]
            index = [r.get("frame_index", r.get("frame_index1", 0)) for r in records]
            labels = [r.get("label", NO_LABEL) for r in records]
            yield FrameBlock(
                frames, np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids]),
                np.asarray(index, np.int32), np.asarray(labels, np.int32), list(frames[..., 0]),
            )  # fmt: skip


def video_block(
    raw: np.ndarray, name: str, source_id: str, image_size: int, frame_skip: int, fit: str = "stretch"
) -> FrameBlock:
    """The FrameBlock of one decoded video: `readers.prepare_video` frames, the kept frames in gray, and which of
    them were colour Doppler."""
    frames, kept = readers.prepare_video(raw, name, image_size, frame_skip, fit)
    n = len(kept)
    stored = readers.check_frames(raw, name)[kept]
    return FrameBlock(frames, np.full(n, source_id), kept, np.full(n, NO_LABEL, np.int32),
                      list(readers.to_grayscale(stored)), name, sector.colour_doppler(stored))  # fmt: skip


def resize_images(images: Sequence[np.ndarray], image_size: int, fit: str = "stretch") -> np.ndarray:
    """uint8 [N, S, S, 1] from images of any sizes (gray or RGB): gray by BT.601 luma, made square as the plane
    builder does with the same `fit` (`readers.resize_frames`)."""
    return np.stack([readers.resize_frames(readers.to_grayscale(np.asarray(im)[None]), image_size, fit)[0]
                     for im in images])[..., None]  # fmt: skip


def _image_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_FILE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))  # fmt: skip


def open_input(
    spec: str,
    input_type: str = "auto",
    data_dir: str = "",
    split: str = "train",
    fit: str = "stretch",
    deidentify: bool = True,
) -> Input:
    """Resolves `spec`: a video or image file, a folder, or `tfds:<name>` (a built fetal_us_video with frame or
    pair records, or a built fetal_cardiac_planes dataset: `split` of it, in `data_dir`). Files are made square
    by `fit` (`readers.resize_frames`; use the one the training data was built with) and de-identified with
    `deidentify` (the module docstring); built records are used as stored.

    `input_type` 'auto' reads a folder as videos when it holds any (video files, folders of frames), else as
    images, and a DICOM file of several frames or image regions as videos; 'videos' / 'images' say which. An empty
    folder, one with neither, or a file name that is not UTF-8 is a DataError naming it."""
    data = _open_files(spec, input_type, data_dir, split, fit)
    for name in [ref.name for ref in data.videos] + [data._relative(p) for p in data.images]:
        readers.check_name(name)  # sources.csv lists them
    return dataclasses.replace(data, deidentify=bool(deidentify))


def _open_files(spec: str, input_type: str, data_dir: str, split: str, fit: str) -> Input:
    spec = str(spec).strip()
    if spec.startswith(TFDS_PREFIX):
        return _tfds_input(spec[len(TFDS_PREFIX) :], data_dir, split)
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"input {spec!r}: no such file or folder (or give a built dataset as tfds:<name>)")
    salt_dir = path if path.is_dir() else path.parent
    salt = readers.id_salt(salt_dir)
    if path.is_file():
        suffix = path.suffix.lower()
        as_image = input_type == "images" or (input_type == "auto" and suffix in IMAGE_FILE_SUFFIXES)
        if as_image and input_type == "auto" and suffix in readers.DICOM_SUFFIXES:
            regions, frames = readers.dicom_parts(path, path.name)
            as_image = frames == 1 and regions == [0]  # a cine loop, or several regions: videos
        if as_image:
            return Input("images", str(path), images=(path,), root=path.parent, salt=salt, fit=fit)
        if suffix not in readers.VIDEO_SUFFIXES:
            raise readers.DataError(f"{path}: not a video ({', '.join(readers.VIDEO_SUFFIXES)}) or image file "
                                    f"({', '.join(IMAGE_FILE_SUFFIXES)})")  # fmt: skip
        return Input(
            "video",
            str(path),
            videos=tuple(readers.videos_in_file(path, path.parent)),
            root=path.parent,
            salt=salt,
            fit=fit,
        )
    if input_type != "images":
        try:
            return Input("video", str(path), videos=tuple(readers.list_videos(path)), root=path, salt=salt, fit=fit)
        except readers.DataError:
            if input_type == "videos":
                raise
    images = tuple(_image_files(path))
    if not images:
        raise readers.DataError(
            f"no videos and no images in {path} (looked for {', '.join(readers.VIDEO_SUFFIXES)}, folders of frame "
            f"images, and {', '.join(IMAGE_FILE_SUFFIXES)} files, in every sub-folder)"
            if input_type == "auto"
            else f"no images in {path} (looked for {', '.join(IMAGE_FILE_SUFFIXES)} files, in every sub-folder)"
        )
    return Input("images", str(path), images=images, root=path, salt=salt, fit=fit)


def _tfds_input(name: str, data_dir: str, split: str) -> Input:
    from fetalssl_jax.data.tfds_source import load_builder

    builder = load_builder(name, data_dir)
    features = builder.info.features
    if "image" not in features and "frame1" not in features:
        raise DataError(f"TFDS dataset {name!r} has features {sorted(features.keys())}: embed reads frame records "
                         "('image') or pair records ('frame1'); build fetal_us_video with record 'frames' or 'pairs'"
                         )  # fmt: skip
    names = tuple(features["label"].names) if "label" in features else ()
    return Input("tfds", f"{TFDS_PREFIX}{name} ({split})", tfds_name=name, data_dir=data_dir, split=split,
                 class_names=names)  # fmt: skip
