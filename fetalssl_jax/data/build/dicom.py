"""DICOM pixel data as the frames an ultrasound user sees on the scanner: uint8 frames [T, H, W] (gray) or
[T, H, W, 3] (colour), bright echoes bright, and the image regions the file declares.

pydicom decodes every transfer syntax of the `data` extra (native, deflate, RLE, JPEG baseline / extended /
lossless, JPEG-LS, JPEG 2000) and gives YBR colour frames (YBR_FULL, YBR_FULL_422, YBR_ICT, YBR_RCT) as RGB. Then:
- PALETTE COLOR: through the file's lookup tables (`pydicom.pixels.apply_color_lut`);
- MONOCHROME1/2: the Modality LUT (rescale slope and intercept, or a LUT) and then the first VOI LUT or window
  where the file has them, as a DICOM viewer shows the frame; MONOCHROME1 is inverted so that echoes are bright;
- values are mapped linearly from the range the data can take onto [0, 255]: [0, 2^BitsStored - 1] unsigned,
  [-2^(BitsStored-1), 2^(BitsStored-1) - 1] signed (PixelRepresentation 1), that range through the rescale, or
  the output range of the LUT applied last. 8-bit unsigned data without LUTs is kept as stored. Never a per-file
  min/max stretch: a dark loop stays dark and every frame of a loop gets the same mapping (so data filling only
  part of its BitsStored range without a window keeps that part's low contrast).

Image regions: the 2D regions (RegionSpatialFormat 1: tissue or colour flow) of SequenceOfUltrasoundRegions, as
(top, bottom, left, right) boxes with bottom/right exclusive, left to right; a region inside another one (a colour
box declared within the tissue region) is part of it. Waveforms, spectra and gray/colour bars are not image regions.
"""

from __future__ import annotations

import pathlib

import numpy as np

from fetalssl_jax.errors import DataError

Box = tuple[int, int, int, int]  # top, bottom, left, right; bottom and right exclusive
REGION_2D = 1  # RegionSpatialFormat of a 2D (tissue or flow) image region


def read_header(path: pathlib.Path, name: str):
    """The file's dataset without its pixel data (cheap: for counting frames and regions while listing)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{name}: not a readable DICOM file ({e})") from e


def num_frames(ds) -> int:
    """NumberOfFrames, 1 when absent or empty."""
    try:
        return max(1, int(getattr(ds, "NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def image_regions(ds) -> list[Box]:
    """The 2D image regions of SequenceOfUltrasoundRegions, clipped to the image, left to right; [] without them."""
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    boxes = []
    for region in ds.get("SequenceOfUltrasoundRegions", None) or []:
        try:
            if int(region.get("RegionSpatialFormat", -1)) != REGION_2D:
                continue
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):  # a region without its corners cannot be used
            continue
        box = (max(0, y0), min(rows, y1 + 1), max(0, x0), min(cols, x1 + 1))  # the Max corners are inclusive
        if box[1] > box[0] and box[3] > box[2]:
            boxes.append(box)
    boxes = sorted(set(boxes), key=lambda b: (b[2], b[0], -b[3], -b[1]))
    return [b for b in boxes if not any(o != b and _contains(o, b) for o in boxes)]


def _contains(outer: Box, inner: Box) -> bool:
    return outer[0] <= inner[0] and outer[2] <= inner[2] and inner[1] <= outer[1] and inner[3] <= outer[3]


def read_frames(path: pathlib.Path, name: str) -> tuple[np.ndarray, list[Box]]:
    """(uint8 frames [T, H, W] or [T, H, W, 3] as the module docstring says, the file's image regions)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{name}: not a readable DICOM file ({e})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DataError(f"{name}: DICOM file without pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt compressed stream: name the file and the syntax
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise DataError(f"{name}: cannot decode the DICOM pixel data (transfer syntax {syntax}): {e}") from e
    if num_frames(ds) == 1:
        pixels = pixels[None]
    return to_display(pixels, ds, name), image_regions(ds)


def to_display(pixels: np.ndarray, ds, name: str) -> np.ndarray:
    """Decoded pixel values [T, H, W(, 3)] as uint8 display values (the module docstring's rule)."""
    if not np.issubdtype(pixels.dtype, np.integer):
        raise DataError(f"{name}: DICOM pixel data of dtype {pixels.dtype}; integer pixel data is read")
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    try:
        if photometric == "PALETTE COLOR":
            values = apply_color_lut(pixels, ds)
            return _to_uint8(values, 0, np.iinfo(values.dtype).max)
        lo, hi = _stored_range(ds, pixels)
        if not photometric.startswith("MONOCHROME"):  # RGB, and YBR that the decoders gave as RGB
            return _to_uint8(pixels, lo, hi)
        values = pixels
        if "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds:
            values = apply_modality_lut(values, ds)
            lo, hi = _modality_range(ds, lo, hi)
        if ds.get("VOILUTSequence"):
            values = apply_voi_lut(values, ds, index=0, prefer_lut=True)
            lo, hi = 0, 2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            values = apply_voi_lut(values, ds, index=0)  # windowing keeps the range (pydicom's y_min, y_max)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as e:  # malformed LUT or window values
        raise DataError(f"{name}: cannot apply the DICOM lookup table / window ({type(e).__name__}: {e})") from e
    frames = _to_uint8(values, lo, hi)
    return 255 - frames if photometric == "MONOCHROME1" else frames  # 0 is white in MONOCHROME1


def _stored_range(ds, pixels: np.ndarray) -> tuple[int, int]:
    bits = int(getattr(ds, "BitsStored", 0) or 0) or 8 * pixels.dtype.itemsize
    if int(getattr(ds, "PixelRepresentation", 0) or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _modality_range(ds, lo: float, hi: float) -> tuple[float, float]:
    if ds.get("ModalityLUTSequence"):
        return 0, 2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    return tuple(sorted((lo * slope + intercept, hi * slope + intercept)))


def _to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """`values` in [lo, hi] mapped linearly onto [0, 255] (rounded, clipped); uint8 in [0, 255] as is."""
    if values.dtype == np.uint8 and (lo, hi) == (0, 255):
        return values
    scaled = (values.astype(np.float64) - lo) * (255.0 / max(hi - lo, 1e-12))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)
