"""Format readers and preprocessing shared by the TFDS builders in `data_builders/` (no TFDS needed here).

Videos: .mp4/.avi/.mov/.mkv (PyAV), DICOM multi-frame cine loops (pydicom; JPEG transfer syntaxes through the
pylibjpeg plugins), HDF5 in the paper's layout (every dataset of the file is one video, frames on axis 0,
[T, H, W] or [T, H, W, C]), .npy (one video) and .npz (one video per array), and folders of frame images (one
video, frames in name order). Labelled images: PNG/JPEG/BMP/TIFF, .npy, single-frame DICOM.

Every problem with an input file raises `DataError` with the file's path relative to the data folder (and the
dataset key inside an HDF5/.npz file): the builders either stop on it or, in their lenient mode, skip the file
and count it. Nothing here ever returns a partially decoded video.

Identifiers: records carry `salted_hash(relative path)` and never a file name, patient name or DICOM tag.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

VIDEO_CONTAINER_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
DICOM_SUFFIXES = (".dcm", ".dicom")
HDF5_SUFFIXES = (".h5", ".hdf5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = VIDEO_CONTAINER_SUFFIXES + DICOM_SUFFIXES + HDF5_SUFFIXES + (".npy", ".npz")

# ITU-R BT.601 luma, what PIL's convert("L") and OpenCV use for RGB -> gray.
_LUMA = np.array([0.299, 0.587, 0.114], np.float64)


class DataError(ValueError):
    """An input file that cannot become records; the message names the file."""


@dataclasses.dataclass(frozen=True, order=True)
class VideoRef:
    """One video in the data folder: a file, a dataset/array inside an HDF5/.npz file, or a folder of frames."""

    relpath: str  # POSIX path relative to the data folder
    key: str = ""  # dataset name inside an HDF5 file / array name inside an .npz file; "" otherwise
    root: str = dataclasses.field(default="", compare=False)

    @property
    def name(self) -> str:
        """How errors and logs name this video: `relpath` or `relpath::key`."""
        return f"{self.relpath}::{self.key}" if self.key else self.relpath

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.root) / self.relpath


# --------------------------------------------------------------------------------------------------------------
# Identifiers and splits
# --------------------------------------------------------------------------------------------------------------


def salted_hash(text: str, salt: str, length: int = 16) -> str:
    """Hex SHA-256 of salt and text: a stable pseudonymous id that does not reveal `text` without the salt."""
    if not salt:
        raise ValueError("an empty salt would make ids reversible by hashing guessed paths; give a salt")
    return hashlib.sha256(f"{salt}\0{text}".encode()).hexdigest()[:length]


def id_salt(manual_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str:
    """The salt of the id hashes: $FETALSSL_ID_SALT, else the first line of `<manual_dir>/.id_salt`, else a
    fixed project salt (ids are then stable but reversible by anyone who can guess the file paths)."""
    env = os.environ if env is None else env
    if env.get("FETALSSL_ID_SALT"):
        return env["FETALSSL_ID_SALT"]
    if manual_dir is not None:
        salt_file = pathlib.Path(manual_dir) / ".id_salt"
        if salt_file.is_file():
            salt = salt_file.read_text().strip().splitlines()
            if not salt or not salt[0].strip():
                raise DataError(f"{salt_file} is empty; write a secret salt on its first line or delete it")
            return salt[0].strip()
    return "fetalssl_jax-default-salt"


def split_groups(groups: Sequence[str], fractions: Mapping[str, float], seed: int = 0) -> dict[str, str]:
    """Assigns every distinct group (video, patient) to one split: {group: split name}.

    Groups are sorted, permuted with `seed`, and cut in the proportions of `fractions` (largest remainders get the
    rounding; every split with a positive fraction gets at least one group when there are enough groups). A
    group is never in two splits, so neither are its frames.
    """
    names = list(fractions)
    weights = np.array([float(fractions[n]) for n in names], np.float64)
    if np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"split fractions must be >= 0 and not all 0, got {dict(fractions)}")
    weights = weights / weights.sum()
    unique = sorted(set(groups))
    n = len(unique)
    raw = weights * n
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # a validation/test split with a positive fraction but no group would silently disappear: take one from the
    # largest split while that leaves it non-empty
    for i in np.flatnonzero((weights > 0) & (counts == 0)):
        largest = int(np.argmax(counts))
        if counts[largest] > 1:
            counts[largest] -= 1
            counts[i] += 1
    order = np.random.default_rng([seed, 7]).permutation(n)
    assignment = {}
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for k, name in enumerate(names):
        for i in order[bounds[k] : bounds[k + 1]]:
            assignment[unique[i]] = name
    return assignment


def patient_folder(relpath: str, depth: int) -> str:
    """The patient of a video or image at `relpath` (relative to the data folder): the folder `depth` levels below
    the data folder, as its path (`site/P0001/exam/sweep.mp4`, depth 2 -> 'site/P0001'); `relpath` itself when
    `depth` is 0 (every video its own patient). A file not that deep is a DataError naming it."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"patient_folder = {depth!r}: must be an integer >= 0 (0: every video is its own patient)")
    if depth == 0:
        return relpath
    folders = pathlib.PurePosixPath(relpath).parts[:-1]
    if len(folders) < depth:
        raise DataError(
            f"{relpath}: patient_folder = {depth} takes the patient from the folder {depth} level(s) below the data "
            f"folder, but this file is {len(folders)} level(s) deep; put every patient's files in their own folder, "
            "or use patient_folder = 0 (every video its own patient)"
        )
    return "/".join(folders[:depth])


# --------------------------------------------------------------------------------------------------------------
# Finding videos
# --------------------------------------------------------------------------------------------------------------


def _is_frame_folder(path: pathlib.Path) -> bool:
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    return bool(entries) and all(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in entries)


def list_videos(root: str | os.PathLike) -> list[VideoRef]:
    """Every video under `root`, sorted: files with a video suffix (HDF5 and .npz expanded into their
    datasets/arrays) and folders that hold only frame images. Raises DataError when there is none."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist or is not a folder")
    refs: list[VideoRef] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = pathlib.Path(dirpath)
        for d in list(dirnames):
            if _is_frame_folder(here / d):
                refs.append(VideoRef((here / d).relative_to(root).as_posix(), "", str(root)))
                dirnames.remove(d)
        for f in sorted(filenames):
            path = here / f
            suffix = path.suffix.lower()
            if f.startswith(".") or suffix not in VIDEO_SUFFIXES:
                continue
            refs += videos_in_file(path, root)
    if not refs:
        raise DataError(
            f"no videos found in {root} (looked for {', '.join(VIDEO_SUFFIXES)} files and folders of frame images)"
        )
    return sorted(refs)


def videos_in_file(path: pathlib.Path, root: str | os.PathLike) -> list[VideoRef]:
    """The videos of one video file under `root`: the file itself, or one per dataset / array of an HDF5 / .npz
    file."""
    root = pathlib.Path(root)
    rel = path.relative_to(root).as_posix()
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return [VideoRef(rel, key, str(root)) for key in _hdf5_keys(path, rel)]
    if suffix == ".npz":
        return [VideoRef(rel, key, str(root)) for key in _npz_keys(path, rel)]
    return [VideoRef(rel, "", str(root))]


def _hdf5_keys(path: pathlib.Path, rel: str) -> list[str]:
    import h5py

    keys: list[str] = []
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: keys.append(name) if isinstance(obj, h5py.Dataset) else None)
    except OSError as e:
        raise DataError(f"{rel}: not a readable HDF5 file ({e})") from e
    if not keys:
        raise DataError(f"{rel}: HDF5 file without datasets (expected one dataset per video, frames on axis 0)")
    return sorted(keys)


def _npz_keys(path: pathlib.Path, rel: str) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.files)
    except Exception as e:  # a zip error, a truncated file: name the file
        raise DataError(f"{rel}: not a readable .npz file ({e})") from e
    if not keys:
        raise DataError(f"{rel}: .npz file without arrays")
    return sorted(keys)


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


def read_video(ref: VideoRef) -> np.ndarray:
    """All frames of one video as uint8 [T, H, W] or [T, H, W, C] (C = 1, 3 or 4), T >= 1."""
    path, suffix = ref.path, pathlib.Path(ref.relpath).suffix.lower()
    if not path.exists():
        raise DataError(f"{ref.name}: file not found")
    if path.is_dir():
        frames = _read_frame_folder(path, ref.name)
    elif suffix in VIDEO_CONTAINER_SUFFIXES:
        frames = _read_container(path, ref.name)
    elif suffix in DICOM_SUFFIXES:
        frames = _read_dicom(path, ref.name, multi_frame=True)
    elif suffix in HDF5_SUFFIXES:
        frames = _read_hdf5(path, ref.key, ref.name)
    elif suffix == ".npy":
        frames = _load_npy(path, ref.name)
    elif suffix == ".npz":
        frames = _read_npz(path, ref.key, ref.name)
    else:
        raise DataError(f"{ref.name}: unsupported video format {suffix!r}; use one of {VIDEO_SUFFIXES}")
    return check_frames(frames, ref.name)


def check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    """Validates decoded frames: [T, H, W] or [T, H, W, C<=4], T >= 1, H, W >= 1, 8-bit values."""
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] not in (1, 3, 4):
        raise DataError(f"{name}: frames of shape {frames.shape[1:]}: the last axis must be 1, 3 or 4 channels")
    if frames.ndim not in (3, 4):
        raise DataError(f"{name}: expected frames [T, H, W] or [T, H, W, C], got an array of shape {frames.shape}")
    if frames.shape[0] == 0:
        raise DataError(f"{name}: the video has zero frames")
    if min(frames.shape[1:3]) == 0:
        raise DataError(f"{name}: frames of size {frames.shape[1:3]}")
    return to_uint8(frames, name)


def to_uint8(frames: np.ndarray, name: str) -> np.ndarray:
    """uint8 as is; other integer types must already lie in [0, 255] (no guessing of a scale)."""
    if frames.dtype == np.uint8:
        return frames
    if np.issubdtype(frames.dtype, np.integer) or frames.dtype == np.bool_:
        lo, hi = int(frames.min()), int(frames.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{name}: {frames.dtype} values in [{lo}, {hi}] do not fit 8 bits; store uint8 frames")
        return frames.astype(np.uint8)
    raise DataError(
        f"{name}: frames of dtype {frames.dtype}; store uint8 frames (a float scale, [0, 1] or [0, 255], is ambiguous)"
    )


def _read_container(path: pathlib.Path, name: str) -> np.ndarray:
    return _stack_same_size([frame for frame, _ in decode_container(str(path), name)], name)


def decode_container(source: str, name: str, av_format: str | None = None) -> Iterator[tuple[np.ndarray, float | None]]:
    """The frames of a video file (or a capture device, `av_format` e.g. 'v4l2') one at a time, as PyAV decodes
    them: (uint8 RGB [H, W, 3], its time in seconds or None without timestamps). Errors are DataErrors naming it."""
    import av

    try:
        with av.open(source, format=av_format) as container:
            if not container.streams.video:
                raise DataError(f"{name}: the file has no video stream")
            for frame in container.decode(container.streams.video[0]):
                yield frame.to_ndarray(format="rgb24"), frame.time
    except DataError:
        raise
    except Exception as e:  # FFmpeg errors (truncated, not a video) come in many types: all name the file
        raise DataError(f"{name}: unreadable or truncated video ({type(e).__name__}: {e})") from e


def _stack_same_size(frames: list[np.ndarray], name: str) -> np.ndarray:
    if not frames:
        raise DataError(f"{name}: the video has zero frames")
    shapes = sorted({f.shape for f in frames})
    if len(shapes) > 1:
        first = next(i for i, f in enumerate(frames) if f.shape != frames[0].shape)
        raise DataError(f"{name}: frames of differing sizes {shapes} (frame {first} differs from frame 0)")
    return np.stack(frames)


def _read_frame_folder(path: pathlib.Path, name: str) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    frames = []
    for f in files:
        frames.append(read_image_file(f, f"{name}/{f.name}", grayscale=False))
    shapes = sorted({fr.shape for fr in frames})
    if len(shapes) > 1:
        odd = next(f for f, fr in zip(files, frames, strict=True) if fr.shape != frames[0].shape)
        raise DataError(f"{name}/{odd.name}: frames of differing sizes {shapes} in one video folder")
    return _stack_same_size(frames, name)


def _read_dicom(path: pathlib.Path, name: str, multi_frame: bool) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DataError(f"{name}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{name}: DICOM file without pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt compressed stream: name the file and the syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataError(f"{name}: cannot decode the DICOM pixel data (transfer syntax {syntax}): {e}") from e
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames == 1 and multi_frame:
        pixels = pixels[None]
    if not multi_frame and frames > 1:
        pixels = pixels[0]  # a cine loop given as a labelled image: its first frame
    # pydicom 3 returns YBR colour frames already converted to RGB
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    bits = int(getattr(ds, "BitsStored", 8) or 8)
    if pixels.dtype != np.uint8 and bits > 8 and np.issubdtype(pixels.dtype, np.integer):
        # > 8-bit grayscale: map the stored range [0, 2^bits - 1] onto [0, 255]
        pixels = np.round(pixels.astype(np.float64) * (255.0 / (2**bits - 1))).clip(0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":  # 0 is white: invert so that bright echoes are bright as everywhere else
        pixels = 255 - to_uint8(pixels, name)
    return pixels


def _read_hdf5(path: pathlib.Path, key: str, name: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{name}: no dataset {key!r} in the HDF5 file")
            return np.asarray(f[key][()])
    except DataError:
        raise
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"{name}: cannot read the HDF5 dataset ({e})") from e


def _load_npy(path: pathlib.Path, name: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # truncated files raise ValueError/EOFError/UnpicklingError: name the file
        raise DataError(f"{name}: not a readable .npy file ({type(e).__name__}: {e})") from e


def _read_npz(path: pathlib.Path, key: str, name: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as f:
            return f[key]
    except Exception as e:
        raise DataError(f"{name}: cannot read the array from the .npz file ({type(e).__name__}: {e})") from e


def read_image_file(path: str | os.PathLike, name: str, grayscale: bool = True) -> np.ndarray:
    """One image as uint8 [H, W] (grayscale) or [H, W] / [H, W, C] (as stored): PNG/JPEG/BMP/TIFF, .npy, DICOM."""
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGB")
                image = np.asarray(im)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(f"{name}: unreadable or truncated image ({e})") from e
    elif suffix == ".npy":
        image = _load_npy(path, name)
    elif suffix in DICOM_SUFFIXES:
        image = _read_dicom(path, name, multi_frame=False)
    else:
        raise DataError(f"{name}: unsupported image format {suffix!r}; use one of {IMAGE_SUFFIXES + ('.npy', '.dcm')}")
    image = check_frames(np.asarray(image)[None], name)[0]
    return to_grayscale(image[None])[0] if grayscale else image


# --------------------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------------------


def to_grayscale(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W] from [T, H, W] or [T, H, W, C]: one channel kept, RGB(A) by BT.601 luma (alpha dropped)."""
    if frames.ndim == 3:
        return frames
    if frames.shape[-1] == 1:
        return frames[..., 0]
    rgb = frames[..., :3].astype(np.float64)
    return np.clip(np.rint(rgb @ _LUMA), 0, 255).astype(np.uint8)


FITS = ("stretch", "crop_pad", "pad")
# A pixel brighter than this (of 255) is image content; compressed black bands of screen captures stay below it.
CONTENT_THRESHOLD = 8


def content_box(image: np.ndarray, threshold: int = CONTENT_THRESHOLD) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the bounding box of the image's content in a gray
    uint8 [H, W] image (for a video: its maximum over frames, so every frame gets the same box).

    Content is the pixels above `threshold` in the large connected regions: the scan sector. Small regions (text,
    calipers, logos in the black bands of a screen capture) are ignored: a region counts when its area, after
    joining pixels two apart, is at least a fifth of the largest one's. An image without content, or whose
    content covers less than 5 % of it, gets the whole image.
    """
    from scipy import ndimage

    h, w = image.shape
    mask = image > threshold
    # Speckle and dark chambers break the sector into pieces: join pixels two apart before labelling.
    joined = ndimage.binary_dilation(mask, iterations=2)
    labels, count = ndimage.label(joined, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0, h, 0, w
    areas = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(areas >= 0.2 * areas.max()) + 1
    rows, cols = np.nonzero(mask & np.isin(labels, keep))
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if (bottom - top) * (right - left) < 0.05 * h * w:
        return 0, h, 0, w
    return int(top), int(bottom), int(left), int(right)


def resize_frames(frames: np.ndarray, size: int, fit: str = "stretch") -> np.ndarray:
    """uint8 [T, size, size] from grayscale uint8 [T, H, W]: PIL bilinear (antialiased when shrinking).

    `fit` says how a frame that is not a square of content becomes one:
    - 'stretch' (default): resize to the square, as the reference does and as code that only resizes a PNG does;
      videos and plane images of one geometry match (a 4:3 frame's anatomy becomes 25 % narrower in both);
    - 'crop_pad': crop to the content box of the frames' maximum (`content_box`: the black bands and text
      margins of a screen capture go), pad the shorter side with black to a centred square, resize. The anatomy
      keeps its aspect and fills the image alike whatever the export's margins: for videos and planes exported
      with different geometries (a screen-captured mp4 beside cropped plane images);
    - 'pad': pad to a centred square with black, resize (aspect kept, margins kept).
    """
    if fit not in FITS:
        raise ValueError(f"fit={fit!r}; choose one of {FITS}")
    if fit == "crop_pad":
        top, bottom, left, right = content_box(frames.max(axis=0))
        frames = frames[:, top:bottom, left:right]
    if fit in ("crop_pad", "pad"):
        h, w = frames.shape[1:]
        side = max(h, w)
        dh, dw = side - h, side - w
        frames = np.pad(frames, ((0, 0), (dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)))
    if frames.shape[1:] == (size, size):
        return frames
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def prepare_video(
    frames: np.ndarray, name: str, image_size: int, frame_skip: int, fit: str = "stretch"
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [T', image_size, image_size, 1], int32 [T'] original frame numbers): every `frame_skip`-th frame
    (0, k, 2k, ...), grayscale, made square by `fit` (`resize_frames`) with one box for the whole video."""
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    frames = check_frames(frames, name)
    kept = np.arange(0, len(frames), frame_skip, dtype=np.int32)
    gray = resize_frames(to_grayscale(frames[kept]), image_size, fit)
    return gray[..., None], kept


# --------------------------------------------------------------------------------------------------------------
# Labelled images: a CSV (image_name, class[, patient_id]) or class sub-folders
# --------------------------------------------------------------------------------------------------------------

# Folder names cannot hold "/": "3VV", "3VT", "3VV_3VT" all name the class 3VV/3VT.
DEFAULT_CLASS_ALIASES = {"3vv": "3VV/3VT", "3vt": "3VV/3VT", "3vv3vt": "3VV/3VT", "3vvt": "3VV/3VT"}


def _canon(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def class_index(name: str, classes: Sequence[str], aliases: Mapping[str, str] | None = None) -> int | None:
    """Index of class `name` in `classes`, compared without case and punctuation ("non_heart" = "non-heart"),
    through `aliases` (canonical alias -> class); None if unknown."""
    canon = {_canon(c): i for i, c in enumerate(classes)}
    key = _canon(name)
    if key in canon:
        return canon[key]
    target = {_canon(k): v for k, v in (aliases or {}).items()}.get(key)
    return canon.get(_canon(target)) if target is not None else None


@dataclasses.dataclass(frozen=True)
class LabelledImage:
    """One labelled image: its path relative to the data folder, class index and patient ('' if unknown)."""

    relpath: str
    label: int
    patient: str


def inside(root: pathlib.Path, name: str, what: str) -> pathlib.Path:
    """`root / name` resolved; a path that leaves `root` (absolute, "..", a symlink out) is a DataError."""
    candidate = pathlib.Path(name)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root.resolve()):
        raise DataError(f"{what}: image path {name!r} escapes the data folder {root}; paths must stay inside it")
    return resolved


def read_label_csv(
    root: str | os.PathLike,
    csv_name: str,
    classes: Sequence[str],
    aliases: Mapping[str, str] | None = None,
    on_error: str = "raise",
) -> tuple[list[LabelledImage], list[str]]:
    """Rows of `root/csv_name` (columns image_name, class, optional patient_id) as LabelledImages, and the
    problems of skipped rows ('skip') - a missing file or an unknown class raises DataError naming the CSV row
    and the file otherwise. `image_name` is relative to `root` or to `root/<class>` (the reference's class
    folders). A path escaping `root` is always an error."""
    import csv
    import io

    root = pathlib.Path(root)
    table = root / csv_name
    # utf-8-sig: spreadsheet programs start a UTF-8 CSV with a byte-order mark, which would join the first header.
    with open(table, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    # Spreadsheets in many locales write ";" (the decimal comma takes ","), and some tools write tabs.
    header = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=header.count)
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    # Header names are matched without case or surrounding space ("Image_Name", " class").
    columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
    missing = {"image_name", "class"} - set(columns)
    if missing:
        raise DataError(
            f"{csv_name}: missing column(s) {sorted(missing)}; found {list(reader.fieldnames or [])} "
            f"(columns image_name, class and optionally patient_id, separated by ',', ';' or tabs)"
        )
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    images, problems = [], []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{csv_name} line {line}"
        try:
            label = class_index(row["class"], classes, aliases)
            if label is None:
                raise DataError(f"{where}: unknown class {row['class']!r} for {row['image_name']!r}; "
                                f"classes: {list(classes)}")  # fmt: skip
            if not row["image_name"]:
                raise DataError(f"{where}: empty image_name")
            direct = inside(root, row["image_name"], where)
            in_class = inside(root, str(pathlib.Path(row["class"].replace("/", "_")) / row["image_name"]), where)
            path = direct if direct.is_file() else in_class if in_class.is_file() else None
            if path is None:
                raise DataError(f"{where}: image file {row['image_name']!r} not found in {root}")
            images.append(LabelledImage(path.relative_to(root.resolve()).as_posix(), label, row.get("patient_id", "")))
        except DataError as e:
            if on_error == "raise" or "escapes the data folder" in str(e):
                raise
            problems.append(str(e))
    if not images:
        raise DataError(f"{csv_name}: no usable rows")
    return images, problems


def list_class_folders(
    root: str | os.PathLike, classes: Sequence[str], aliases: Mapping[str, str] | None = None
) -> list[LabelledImage]:
    """Images in class sub-folders `root/<class>/...` (no patient ids). A sub-folder that names no class is a
    DataError (a typo would silently drop a class)."""
    root = pathlib.Path(root)
    images = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        label = class_index(folder.name, classes, aliases)
        if label is None:
            raise DataError(f"{folder.name}/: a sub-folder that names no class; classes: {list(classes)}")
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES + (".npy",) + DICOM_SUFFIXES:
                images.append(LabelledImage(path.relative_to(root).as_posix(), label, ""))
    if not images:
        raise DataError(f"no labelled images in {root}: expected a CSV or class sub-folders {list(classes)}")
    return images
