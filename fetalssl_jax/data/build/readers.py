"""Format readers and preprocessing shared by the TFDS builders in `data_builders/` (no TFDS needed here).

Videos: .mp4/.avi/.mov/.mkv (PyAV), DICOM multi-frame cine loops (pydicom; JPEG transfer syntaxes through the
pylibjpeg plugins; `dicom.py` says how the pixel values become frames), HDF5 in the paper's layout (every dataset
of the file is one video, frames on axis 0, [T, H, W] or [T, H, W, C]), .npy (one video) and .npz (one video per
array), and folders of frame images (one video, frames in name order). Labelled images: PNG/JPEG/BMP/TIFF, .npy,
DICOM (every frame of every image region). A DICOM that declares several image regions (SequenceOfUltrasoundRegions)
is one video per region.

Pixels are de-identified by default (`deidentify=True`): a DICOM with image regions is cropped to them, every other
video or image is blanked (set to 0) outside its scan sector (`sector.py`), so the text scanners print around the
image (institution, names, dates, ids) is gone before a frame is stored, embedded or written as a PNG.

Every problem with an input file raises `DataError` with the file's path relative to the data folder (and the
dataset key inside an HDF5/.npz file): the builders either stop on it or, in their lenient mode, skip the file
and count it. Nothing here ever returns a partially decoded video.

Identifiers: records carry `salted_hash(relative path)` and never a file name, patient name or DICOM tag; the salt
(`id_salt`) is secret: a random one is made for the installation on first use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pathlib
import secrets
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from fetalssl_jax.data.build import dicom, sector
from fetalssl_jax.data.build.sector import CONTENT_THRESHOLD, content_box  # noqa: F401 (public here, as before)
from fetalssl_jax.errors import DataError

log = logging.getLogger("fetalssl_jax.data")


def printable(name: str) -> str:
    """`name` as it can be printed and logged: a file name that is not UTF-8 (Python keeps its bytes as
    surrogates) with those bytes as \\xNN escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


VIDEO_CONTAINER_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
DICOM_SUFFIXES = (".dcm", ".dicom")
HDF5_SUFFIXES = (".h5", ".hdf5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = VIDEO_CONTAINER_SUFFIXES + DICOM_SUFFIXES + HDF5_SUFFIXES + (".npy", ".npz")

# ITU-R BT.601 luma, what PIL's convert("L") and OpenCV use for RGB -> gray.
_LUMA = np.array([0.299, 0.587, 0.114], np.float64)


@dataclasses.dataclass(frozen=True, order=True)
class VideoRef:
    """One video in the data folder: a file, a dataset/array inside an HDF5/.npz file, a folder of frames, or one
    image region of a DICOM that has several."""

    relpath: str  # POSIX path relative to the data folder
    key: str = ""  # dataset name inside an HDF5 file / array name inside an .npz file; "" otherwise
    root: str = dataclasses.field(default="", compare=False)
    region: int = 0  # k >= 1: the k-th image region (left to right) of a DICOM with several; 0: the whole file

    @property
    def name(self) -> str:
        """How errors, logs and ids name this video: `relpath`, `relpath::key` or `relpath::region<k>`."""
        name = f"{self.relpath}::{self.key}" if self.key else self.relpath
        return f"{name}::region{self.region}" if self.region else name

    @property
    def path(self) -> pathlib.Path:
        return pathlib.Path(self.root) / self.relpath


# --------------------------------------------------------------------------------------------------------------
# Identifiers and splits
# --------------------------------------------------------------------------------------------------------------


def salted_hash(text: str, salt: str, length: int = 16) -> str:
    """Hex SHA-256 of salt and text: a stable pseudonymous id that does not reveal `text` without the salt (a file
    name that is not UTF-8 is hashed as its bytes)."""
    if not salt:
        raise ValueError("an empty salt would make ids reversible by hashing guessed paths; give a salt")
    return hashlib.sha256(f"{salt}\0{text}".encode("utf-8", "surrogateescape")).hexdigest()[:length]


SALT_ENV = "FETALSSL_ID_SALT"  # the salt itself
SALT_FILE_ENV = "FETALSSL_ID_SALT_FILE"  # where the installation's salt file is
CONFIG_DIR_ENV = "FETALSSL_CONFIG_DIR"  # the folder of the installation's salt file (`id_salt` in it)
_ANNOUNCED: set[str] = set()


def id_salt(manual_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> str:
    """The secret salt of the id hashes: $FETALSSL_ID_SALT, else the first line of `<manual_dir>/.id_salt`, else
    this installation's salt (`installation_salt`: a random one, created on first use)."""
    env = os.environ if env is None else env
    if env.get(SALT_ENV):
        return env[SALT_ENV]
    if manual_dir is not None:
        salt_file = pathlib.Path(manual_dir) / ".id_salt"
        if salt_file.is_file():
            return _first_line(salt_file)
    return installation_salt(env)


def installation_salt_file(env: Mapping[str, str] | None = None) -> pathlib.Path:
    """$FETALSSL_ID_SALT_FILE, else `id_salt` in $FETALSSL_CONFIG_DIR, in $XDG_CONFIG_HOME/fetalssl_jax, or in
    ~/.config/fetalssl_jax."""
    env = os.environ if env is None else env
    if env.get(SALT_FILE_ENV):
        return pathlib.Path(env[SALT_FILE_ENV]).expanduser()
    if env.get(CONFIG_DIR_ENV):
        return pathlib.Path(env[CONFIG_DIR_ENV]).expanduser() / "id_salt"
    base = pathlib.Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else pathlib.Path.home() / ".config"
    return base / "fetalssl_jax" / "id_salt"


def installation_salt(env: Mapping[str, str] | None = None) -> str:
    """The salt in `installation_salt_file`; on first use a random one (`secrets.token_hex`) is written there with
    permissions 0600, and a warning says where it is and that it must be kept secret and backed up."""
    path = installation_salt_file(env)
    if not path.is_file() and _create_salt_file(path):
        log.warning("created this installation's random id salt in %s (permissions 0600): video, image and patient "
                    "ids are hashes salted with it, which nobody can reverse without it. Keep it secret, and back it "
                    "up: the ids stay the same only with it ($%s or <data folder>/.id_salt take precedence)",
                    path, SALT_ENV)  # fmt: skip
    elif str(path) not in _ANNOUNCED:
        log.info("ids salted with this installation's salt in %s", path)
        if path.stat().st_mode & 0o077:
            log.warning("%s is readable by other users: `chmod 600 %s` (whoever reads it can reverse ids)", path, path)
    _ANNOUNCED.add(str(path))
    return _first_line(path)


def _create_salt_file(path: pathlib.Path) -> bool:
    """Writes a random salt to `path`, never over one another process wrote meanwhile; True if this call made it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    salt = secrets.token_hex(32) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(salt)
    try:
        os.link(tmp, path)  # atomic and never replaces: a complete file or none
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: create it exclusively and write it
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(salt)
            return True
        except FileExistsError:
            return False
    finally:
        tmp.unlink()


def _first_line(salt_file: pathlib.Path) -> str:
    salt = salt_file.read_text().strip().splitlines()
    if not salt or not salt[0].strip():
        raise DataError(f"{salt_file} is empty; write a secret salt on its first line or delete it")
    return salt[0].strip()


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
    """The videos of one video file under `root`: the file itself, one per dataset / array of an HDF5 / .npz
    file, or one per image region of a DICOM that declares several."""
    root = pathlib.Path(root)
    rel = path.relative_to(root).as_posix()
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return [VideoRef(rel, key, str(root)) for key in _hdf5_keys(path, rel)]
    if suffix == ".npz":
        return [VideoRef(rel, key, str(root)) for key in _npz_keys(path, rel)]
    if suffix in DICOM_SUFFIXES:
        return [VideoRef(rel, "", str(root), k) for k in dicom_parts(path, rel)[0]]
    return [VideoRef(rel, "", str(root))]


def dicom_parts(path: pathlib.Path, name: str) -> tuple[list[int], int]:
    """([1, ..., K] for a DICOM with K >= 2 image regions, else [0]; its number of frames), from its header. An
    unreadable header gives ([0], 1): reading the file then says what is wrong, where a lenient build skips it."""
    try:
        ds = dicom.read_header(path, name)
    except DataError:
        return [0], 1
    count = len(dicom.image_regions(ds))
    return (list(range(1, count + 1)) if count >= 2 else [0]), dicom.num_frames(ds)


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


def check_name(name: str) -> None:
    """A DataError for a file name that is not UTF-8 (Python keeps its bytes as surrogates, which no UTF-8 log,
    message or CSV can hold), naming it with the bytes escaped."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{printable(name)}: the file name is not UTF-8 (bytes {printable(name[e.start : e.end])}, e.g. a Latin-1 "
            "name); rename it in UTF-8 (e.g. `convmv -f latin1 -t utf-8 -r --notest <folder>`)"
        ) from None


def read_video(ref: VideoRef, deidentify: bool = True) -> np.ndarray:
    """All frames of one video as uint8 [T, H, W] or [T, H, W, C] (C = 1, 3 or 4), T >= 1.

    A DICOM with image regions is cropped to the region `ref.region` (its only one when it has one). With
    `deidentify`, any other video is blanked outside its scan sector (`sector.deidentify`; a DICOM read whole
    despite several regions, outside them)."""
    check_name(ref.name)
    path, suffix = ref.path, pathlib.Path(ref.relpath).suffix.lower()
    if not path.exists():
        raise DataError(f"{ref.name}: file not found")
    regions: list[dicom.Box] = []
    if path.is_dir():
        frames = _read_frame_folder(path, ref.name)
    elif suffix in VIDEO_CONTAINER_SUFFIXES:
        frames = _read_container(path, ref.name)
    elif suffix in DICOM_SUFFIXES:
        frames, regions = dicom.read_frames(path, ref.name)
    elif suffix in HDF5_SUFFIXES:
        frames = _read_hdf5(path, ref.key, ref.name)
    elif suffix == ".npy":
        frames = _load_npy(path, ref.name)
    elif suffix == ".npz":
        frames = _read_npz(path, ref.key, ref.name)
    else:
        raise DataError(f"{ref.name}: unsupported video format {suffix!r}; use one of {VIDEO_SUFFIXES}")
    return image_part(check_frames(frames, ref.name), regions, ref.region, ref.name, deidentify)


def image_part(
    frames: np.ndarray, regions: Sequence[dicom.Box], region: int, name: str, deidentify: bool
) -> np.ndarray:
    """The image of checked `frames` [T, H, W(, C)]: image region `region` (>= 1) or the only one, cropped; else
    the whole frames, blanked outside the regions or the scan sector with `deidentify`."""
    if region > len(regions):
        raise DataError(f"{name}: image region {region} asked for, but the file declares {len(regions)}")
    if region or len(regions) == 1:
        top, bottom, left, right = regions[max(region, 1) - 1]
        return frames[:, top:bottom, left:right]
    if not deidentify:
        return frames
    if regions:
        return sector.blank_outside(frames, sector.box_mask(frames.shape[1:3], regions))
    return sector.deidentify(frames)


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
    for f in files:  # de-identified as one video by read_video
        frames.append(read_image_file(f, f"{name}/{f.name}", grayscale=False, deidentify=False))
    shapes = sorted({fr.shape for fr in frames})
    if len(shapes) > 1:
        odd = next(f for f, fr in zip(files, frames, strict=True) if fr.shape != frames[0].shape)
        raise DataError(f"{name}/{odd.name}: frames of differing sizes {shapes} in one video folder")
    return _stack_same_size(frames, name)


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


def read_image_file(path: str | os.PathLike, name: str, grayscale: bool = True, deidentify: bool = True) -> np.ndarray:
    """One image as uint8 [H, W] (grayscale) or [H, W] / [H, W, C] (as stored): PNG/JPEG/BMP/TIFF, .npy, or a
    DICOM of one frame and at most one image region (`read_images`, which says what `deidentify` does). A DICOM of
    several frames or regions is a DataError here: read it as a video or with `read_images`."""
    parts = read_images(path, name, deidentify)
    if len(parts) > 1:
        raise DataError(f"{name}: a DICOM of {len(parts)} images (frames or image regions), not one image; read it "
                        "as a video (input_type 'auto' or 'videos')")  # fmt: skip
    image = parts[0][1]
    return to_grayscale(image[None])[0] if grayscale else image


def read_images(path: str | os.PathLike, name: str, deidentify: bool = True) -> list[tuple[str, np.ndarray]]:
    """Every image of one image file as (part, uint8 [H, W] or [H, W, C] as stored): [('', image)] for
    PNG/JPEG/BMP/TIFF/.npy and for a DICOM of one frame and at most one image region; for a DICOM of several, one
    per frame of every region, `part` naming it ('::frame<t>' from 0, '::region<k>' from 1, or both).

    A DICOM's image regions are cropped out; with `deidentify` any other image is blanked outside its scan sector
    (`sector.deidentify`; the frames of one DICOM share one sector)."""
    check_name(name)
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    if suffix in DICOM_SUFFIXES:
        frames, regions = dicom.read_frames(path, name)
        frames = check_frames(frames, name)
        parts = []
        for k in range(1, len(regions) + 1) if len(regions) >= 2 else [0]:
            video = image_part(frames, regions, k, name, deidentify)
            region = f"::region{k}" if k else ""
            parts += [(region + (f"::frame{t}" if len(video) > 1 else ""), image) for t, image in enumerate(video)]
        return parts
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
    else:
        raise DataError(f"{name}: unsupported image format {suffix!r}; use one of {IMAGE_SUFFIXES + ('.npy', '.dcm')}")
    image = check_frames(np.asarray(image)[None], name)
    return [("", (sector.deidentify(image) if deidentify else image)[0])]


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
# What becomes of a colour-Doppler frame (`sector.colour_doppler`): converted to gray like any colour frame, or left out
DOPPLER = ("gray", "skip")


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
    frames: np.ndarray, name: str, image_size: int, frame_skip: int, fit: str = "stretch", doppler: str = "gray"
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [T', image_size, image_size, 1], int32 [T'] original frame numbers): every `frame_skip`-th frame
    (0, k, 2k, ...), grayscale, made square by `fit` (`resize_frames`) with one box for the whole video.
    `doppler` 'skip' leaves colour-Doppler frames out (`sector.colour_doppler`; T' may then be 0), 'gray' keeps
    them in gray."""
    if frame_skip < 1:
        raise ValueError(f"frame_skip must be >= 1, got {frame_skip}")
    if doppler not in DOPPLER:
        raise ValueError(f"doppler={doppler!r}; choose one of {DOPPLER}")
    frames = check_frames(frames, name)
    kept = np.arange(0, len(frames), frame_skip, dtype=np.int32)
    if doppler == "skip":
        kept = kept[~sector.colour_doppler(frames[kept])]
    if not len(kept):
        return np.zeros((0, image_size, image_size, 1), np.uint8), kept
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
    problems of skipped rows ('skip') - a missing file, an unknown class or an image listed twice raises DataError
    naming the CSV row and the file otherwise. `image_name` is relative to `root` or to `root/<class>` (the
    reference's class folders). A path escaping `root` is always an error, and so is a table that is not UTF-8."""
    import csv
    import io

    root = pathlib.Path(root)
    text = _decode_table((root / csv_name).read_bytes(), csv_name)
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
    images, problems, seen = [], [], {}
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
            relpath = path.relative_to(root.resolve()).as_posix()
            if relpath in seen:
                raise DataError(f"{where}: image {row['image_name']!r} is already on line {seen[relpath]}; list "
                                "every image once (two rows could give it two classes)")  # fmt: skip
            seen[relpath] = line
            images.append(LabelledImage(relpath, label, row.get("patient_id", "")))
        except DataError as e:
            if on_error == "raise" or "escapes the data folder" in str(e):
                raise
            problems.append(str(e))
    if not images:
        raise DataError(f"{csv_name}: no usable rows")
    return images, problems


def _decode_table(data: bytes, csv_name: str) -> str:
    """A labels table's text: UTF-8, with or without the byte-order mark spreadsheets write. Anything else is a
    DataError naming the line and byte: a byte outside UTF-8 cannot tell Windows-1252 from Latin-1, Mac Roman or a
    DOS code page, and a wrong guess would silently change class names and patient ids."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataError(f"{csv_name}: a UTF-16 table (a spreadsheet's 'Unicode text'); save it as 'CSV UTF-8'")
    try:
        return data.decode("utf-8-sig")  # -sig: the byte-order mark would otherwise join the first column's name
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{csv_name} line {line}: byte 0x{data[e.start]:02x} (byte {e.start} of the file) is not UTF-8, as in a "
            "Latin-1 / Windows-1252 export; save the table as UTF-8 (spreadsheets: 'CSV UTF-8')"
        ) from None


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
