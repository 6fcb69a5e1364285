"""Writers of small real-format fixtures (mp4/avi, DICOM, HDF5, PNG, CSV), made on the fly by the tests."""

from __future__ import annotations

import pathlib

import numpy as np

PATIENT_NAME = "Doe^Janet Secretname"
PATIENT_ID = "PID-93417-XQ"
BAND = 20  # rows of the header band that `burn_text` puts above a scan


def moving_frames(num_frames: int, height: int, width: int, seed: int = 0, channels: int = 0) -> np.ndarray:
    """Smooth uint8 frames (a bright blob moving over a gradient): codecs keep them close to the original."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    out = []
    for t in range(num_frames):
        blob = 180 * np.exp(-((yy - cy - t) ** 2 + (xx - cx + t) ** 2) / (0.05 * height * width))
        out.append(np.clip(40 + 60 * yy / height + blob, 0, 255))
    frames = np.stack(out).astype(np.uint8)
    if channels:
        frames = np.stack([frames] * channels, axis=-1)
    return frames


def write_video(path: pathlib.Path, frames: np.ndarray, fps: int = 25) -> pathlib.Path:
    """An .mp4 or .avi (MPEG-4 part 2) of uint8 [T, H, W] frames."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for f in frames:
            rgb = np.repeat(f[..., None], 3, axis=-1) if f.ndim == 2 else f
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dicom(
    path: pathlib.Path,
    frames: np.ndarray | None,
    jpeg: bool = False,
    bits: int = 8,
    monochrome1: bool = False,
    syntax: str | None = None,
    rgb: bool = False,
    signed: bool = False,
    photometric: str | None = None,
    **tags,
) -> pathlib.Path:
    """A multi-frame ultrasound DICOM with PatientName/PatientID set; JPEG baseline frames if `jpeg` (YBR_FULL_422
    colour frames, as colour scanners write, if `rgb`: `frames` [T, H, W, 3]), frames compressed by pydicom with
    transfer syntax `syntax` (a UID) if given, no pixel data if `frames` is None. `signed`: PixelRepresentation 1
    (`frames` as signed integers); `photometric`: PhotometricInterpretation of native colour frames ('RGB',
    'YBR_FULL': `frames` already in that space); `tags`: more attributes (WindowCenter=..., RescaleSlope=...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.InstitutionName = "St Example Hospital"
    ds.Modality = "US"
    if frames is not None:
        colour = rgb or photometric is not None
        # YBR_FULL_422: what a baseline JPEG of colour frames holds
        photometric = photometric or ("YBR_FULL_422" if rgb else "MONOCHROME1" if monochrome1 else "MONOCHROME2")
        _set_pixels(ds, frames, jpeg, bits, syntax, colour, signed, photometric, tags)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _set_pixels(ds, frames, jpeg, bits, syntax, colour, signed, photometric, tags) -> None:
    """The image attributes and pixel data of `write_dicom`."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate

    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if jpeg:
        encoded = []
        for f in frames:
            buffer = io.BytesIO()
            Image.fromarray(f).save(buffer, format="JPEG", quality=95)
            encoded.append(buffer.getvalue())
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        stored = frames.astype(np.dtype(f"{'i' if signed else 'u'}{1 if bits == 8 else 2}"))
        ds.PixelData = stored.tobytes()
        if syntax is not None:
            ds.compress(syntax, stored)


def write_hdf5(path: pathlib.Path, videos: dict[str, np.ndarray]) -> pathlib.Path:
    """The paper's layout: one dataset per video, frames on axis 0."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for name, frames in videos.items():
            f.create_dataset(name, data=frames, compression="gzip")
    return path


def write_png(path: pathlib.Path, image: np.ndarray) -> pathlib.Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def burn_text(frames: np.ndarray, band: int = BAND) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, H, W] with a black header band of `band` rows on top and a patient's name, id, date and
    hospital burned into it by PIL, bool mask [band, W] of the text's pixels): a scanner's screen as exported."""
    from PIL import Image, ImageDraw

    out = np.pad(frames, ((0, 0), (band, 0), (0, 0)))
    text = Image.new("L", (out.shape[2], band))
    ImageDraw.Draw(text).text((2, 3), "DOE^JANE 1234567 12/03/2024 ST EXAMPLE", fill=255)
    mask = np.asarray(text) > 0
    out[:, :band][:, mask] = 255
    return out, mask
