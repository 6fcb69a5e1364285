"""DICOM read as the scanner shows it: real ultrasound files of pydicom-data (GE RGB and JPEG 2000, ALOKA 16-bit
palette colour with two image regions) against independent decodes (the stored bytes by numpy, Pillow's JPEG 2000
decoder, pydicom's own `apply_color_lut`), and small DICOMs written here for signed values, MONOCHROME1, windows and
rescale, and colour in every transfer syntax of the data extra, against numpy formulas."""

import io
import pathlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.pixels import apply_color_lut
from us_fixtures import moving_frames, write_dicom

from fetalssl_jax.data.build import readers
from fetalssl_jax.data.build.readers import VideoRef

# The 2D image regions of the ALOKA files, as their headers give them (RegionLocationMinY0..MaxY1, MinX0..MaxX1,
# inclusive), typed here: rows 24..415, columns 32..335 and 336..639. The third region is a gray bar.
ALOKA_REGIONS = ((slice(24, 416), slice(32, 336)), (slice(24, 416), slice(336, 640)))


def real(name: str) -> tuple[pathlib.Path, VideoRef]:
    path = pathlib.Path(get_testdata_file(name))
    return path, VideoRef(path.name, "", str(path.parent))


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "US1_UNCI.dcm"])
def test_ge_rgb_frames_are_the_stored_bytes(name):
    path, ref = real(name)
    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, np.uint8).reshape(1, ds.Rows, ds.Columns, 3)  # interleaved RGB
    np.testing.assert_array_equal(readers.read_video(ref, deidentify=False), stored)


@pytest.mark.parametrize("name", ["US1_J2KR.dcm", "US1_J2KI.dcm"])  # lossless (YBR_RCT), lossy (YBR_ICT)
def test_ge_jpeg2000_frames_are_pillows_decode_of_the_codestream(name):
    path, ref = real(name)
    ds = pydicom.dcmread(path)
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    expected = np.asarray(Image.open(io.BytesIO(codestream)).convert("RGB"))
    np.testing.assert_array_equal(readers.read_video(ref, deidentify=False), expected[None])


@pytest.mark.parametrize(("name", "dtype"), [("gdcm-US-ALOKA-16.dcm", "<u2"), ("gdcm-US-ALOKA-16_big.dcm", ">u2")])
def test_aloka_palette_colour_through_its_lookup_table_one_video_per_image_region(name, dtype):
    path, _ = real(name)
    ds = pydicom.dcmread(path)
    indices = np.frombuffer(ds.PixelData, dtype).reshape(ds.Rows, ds.Columns)  # the stored palette indices
    colour = apply_color_lut(indices, ds)  # pydicom's own lookup, 16-bit entries
    expected = np.round(colour / 257.0).astype(np.uint8)  # [0, 65535] -> [0, 255]
    assert expected[:24].max() > 200  # the header band above the regions holds bright text (the institution)
    refs = readers.videos_in_file(path, path.parent)
    assert [r.name for r in refs] == [f"{name}::region1", f"{name}::region2"]
    for ref, (rows, cols) in zip(refs, ALOKA_REGIONS, strict=True):
        for deidentify in (False, True):  # a region is the image: cropped either way, nothing around it
            np.testing.assert_array_equal(readers.read_video(ref, deidentify), expected[None, rows, cols])
    whole = readers.read_video(VideoRef(path.name, "", str(path.parent)))  # read whole: blanked outside the regions
    assert whole.shape == (1, 480, 640, 3) and whole[0, :24].max() == 0 and whole[0, 416:].max() == 0
    np.testing.assert_array_equal(whole[0, 24:416, 32:], expected[24:416, 32:])


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_signed_values_map_from_their_whole_range(tmp_path, bits):
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    rng = np.random.default_rng(bits)
    frames = rng.integers(lo, hi + 1, (3, 16, 20))
    frames[0, 0, :2] = lo, hi
    write_dicom(tmp_path / "s.dcm", frames, bits=bits, signed=True)
    expected = np.round((frames - lo) * (255 / (hi - lo))).astype(np.uint8)
    np.testing.assert_array_equal(readers.read_video(VideoRef("s.dcm", "", str(tmp_path)), deidentify=False), expected)


def test_monochrome1_16_bit_is_inverted_after_the_scaling(tmp_path):
    frames = np.random.default_rng(0).integers(0, 65536, (2, 12, 10))
    write_dicom(tmp_path / "m.dcm", frames, bits=16, monochrome1=True)
    expected = 255 - np.round(frames * (255 / 65535)).astype(np.uint8)
    np.testing.assert_array_equal(readers.read_video(VideoRef("m.dcm", "", str(tmp_path)), deidentify=False), expected)


@pytest.mark.parametrize("rescale", [False, True])
def test_a_window_is_applied_as_a_viewer_shows_it(tmp_path, rescale):
    """PS3.3 C.11.2.1.2.1 (LINEAR) by hand, on 12-bit values; with a rescale, the window is in rescaled units."""
    x = np.random.default_rng(1).integers(0, 4096, (2, 10, 12)).astype(np.float64)
    tags = {"WindowCenter": 1000, "WindowWidth": 800}
    slope, intercept = 1.0, 0.0
    if rescale:
        slope, intercept = 2.0, -1000.0
        tags.update(RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=1000, WindowWidth=2001)
    write_dicom(tmp_path / "w.dcm", x.astype(np.uint16), bits=12, **tags)
    y_lo, y_hi = sorted((0 * slope + intercept, 4095 * slope + intercept))  # the output range: the rescaled range
    v = x * slope + intercept
    c, w = tags["WindowCenter"] - 0.5, tags["WindowWidth"] - 1
    y = np.where(v <= c - w / 2, y_lo, np.where(v > c + w / 2, y_hi, ((v - c) / w + 0.5) * (y_hi - y_lo) + y_lo))
    expected = np.round((y - y_lo) * 255 / (y_hi - y_lo)).astype(np.uint8)
    got = readers.read_video(VideoRef("w.dcm", "", str(tmp_path)), deidentify=False)
    np.testing.assert_array_equal(got, expected)
    assert (got == 0).mean() > 0.1 and (got == 255).mean() > 0.1  # the window clips both ends


@pytest.mark.parametrize(
    ("photometric", "syntax"),
    [("YBR_FULL", None), ("YBR_FULL", "1.2.840.10008.1.2.5"),  # native and RLE YBR, converted to RGB
     ("RGB", "1.2.840.10008.1.2.4.80"), ("RGB", "1.2.840.10008.1.2.4.90")],  # JPEG-LS and JPEG 2000 lossless
)  # fmt: skip
def test_colour_in_every_lossless_syntax_reads_back_as_its_rgb(tmp_path, photometric, syntax):
    rgb = np.stack([moving_frames(2, 40, 48, seed=s) for s in (1, 2, 3)], axis=-1)
    stored = rgb
    if photometric == "YBR_FULL":  # PS3.3 C.7.6.3.1.2, by hand
        r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
        ybr = [0.299 * r + 0.587 * g + 0.114 * b, -0.168736 * r - 0.331264 * g + 0.5 * b + 128,
               0.5 * r - 0.418688 * g - 0.081312 * b + 128]  # fmt: skip
        stored = np.clip(np.round(np.stack(ybr, axis=-1)), 0, 255).astype(np.uint8)
    write_dicom(tmp_path / "c.dcm", stored, photometric=photometric, syntax=syntax)
    got = readers.read_video(VideoRef("c.dcm", "", str(tmp_path)), deidentify=False)
    assert got.shape == rgb.shape
    assert np.abs(got.astype(int) - rgb).max() <= (2 if photometric == "YBR_FULL" else 0)  # YBR rounding


def test_a_real_jpeg_lossless_colour_file_is_its_uncompressed_twins_bytes():
    """SC_rgb_jpeg_gdcm (JPEG lossless, process 14) holds the frame SC_rgb stores uncompressed."""
    plain = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    stored = np.frombuffer(plain.PixelData, np.uint8).reshape(1, plain.Rows, plain.Columns, 3)
    _, ref = real("SC_rgb_jpeg_gdcm.dcm")
    np.testing.assert_array_equal(readers.read_video(ref, deidentify=False), stored)
