"""De-identified pixels: text burned into a scan's header band vanishes, the scan itself is untouched; the GE
scanner files' header text is blanked while their image equals the stored bytes; colour Doppler is found."""

import pathlib

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut
from us_fixtures import BAND, burn_text, write_png, write_video

from fetalssl_jax.data import synthetic
from fetalssl_jax.data.build import readers, sector
from fetalssl_jax.data.build.readers import VideoRef


def scan(index: int, size: int = 96, frames: int = 12) -> np.ndarray:
    return synthetic.generate_video(index, frames, size, seed=2, frame_skip=5).frames


@pytest.mark.parametrize("size", [64, 96, 160])
def test_the_generators_scans_are_untouched(size):
    """Videos: de-identification changes no pixel of a generated scan (its fan and everything in it). A frame
    read alone is only blanked, never altered, and keeps most of its echoes (pixels above 8): without other frames
    to tell speckle from burned-in marks, the dim fluid at the fan's side of a scan whose tissue is split by fluid
    is left out of the sector (`sector.scan_sector`)."""
    for index in range(4):
        video = scan(index, size)
        np.testing.assert_array_equal(sector.deidentify(video), video)
        for frame in video[:3]:
            alone = sector.deidentify(frame[None])[0]
            changed = alone != frame
            assert (alone[changed] == 0).all()  # blanked, never altered
            assert ((alone > 8) & (frame > 8)).sum() >= 0.8 * (frame > 8).sum()


@pytest.mark.parametrize("size", [96, 160])
def test_text_burned_into_the_header_band_vanishes_and_the_scan_stays(tmp_path, size):
    for index in range(3):
        clean = scan(index, size)
        texted, text = burn_text(clean)
        assert texted[:, :BAND][:, text].min() == 255  # the text is there
        np.save(tmp_path / "v.npy", texted)
        got = readers.read_video(VideoRef("v.npy", "", str(tmp_path)))
        np.testing.assert_array_equal(got[:, BAND:], clean)  # the scan, every pixel
        assert got[:, :BAND].max() == 0  # no pixel of the band, so none of the text
        np.testing.assert_array_equal(readers.read_video(VideoRef("v.npy", "", str(tmp_path)), False), texted)
        write_png(tmp_path / "f.png", texted[0])  # a labelled image: the same text gone
        image = readers.read_image_file(tmp_path / "f.png", "f.png")
        assert image[:BAND].max() == 0 and (image[BAND:] == clean[0])[clean[0] > 8].mean() >= 0.8


def test_text_is_blanked_in_a_compressed_capture(tmp_path):
    """MPEG-4 noise around the text and the fan: the band is still blanked in every frame."""
    for index in range(2):
        texted, _ = burn_text(scan(index, 128))
        write_video(tmp_path / "v.mp4", texted)
        raw = readers.read_video(VideoRef("v.mp4", "", str(tmp_path)), deidentify=False)
        assert raw[:, :BAND].max() > 200
        assert readers.read_video(VideoRef("v.mp4", "", str(tmp_path)))[:, :BAND].max() == 0


def test_the_ge_files_lose_their_header_text_and_keep_their_image():
    """US1_UNCR: the institution, ids and dates in rows 20..103 and the labels below the image (rows 360..) are
    blanked; the image (rows 108..337 by eye) equals the stored bytes."""
    path = pathlib.Path(get_testdata_file("US1_UNCR.dcm"))
    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns, 3)
    assert stored[20:104].max() == 255 and stored[360:].max() == 255  # text there
    (got,) = readers.read_video(VideoRef(path.name, "", str(path.parent)))
    assert got[:104].max() == 0 and got[345:].max() == 0
    np.testing.assert_array_equal(got[110:336, 15:626], stored[110:336, 15:626])


def test_colour_doppler_is_found_on_the_ge_files_and_not_on_gray_or_palette_scans():
    for name in ("US1_UNCR.dcm", "US1_J2KI.dcm"):  # power Doppler over the B-mode image
        path = pathlib.Path(get_testdata_file(name))
        frames = readers.read_video(VideoRef(path.name, "", str(path.parent)))
        assert sector.colour_doppler(frames).tolist() == [True]
        assert readers.prepare_video(frames, name, 32, 1, doppler="skip")[1].size == 0
        assert readers.prepare_video(frames, name, 32, 1, doppler="gray")[1].tolist() == [0]
    ds = pydicom.dcmread(get_testdata_file("gdcm-US-ALOKA-16.dcm"))  # a bluish palette and green marks: no Doppler
    rgb = np.round(apply_color_lut(ds.pixel_array, ds) / 257.0).astype(np.uint8)
    assert sector.colour_doppler(rgb[None, 24:416, 32:336]).tolist() == [False]
    gray = scan(0, 64)
    assert not sector.colour_doppler(np.repeat(gray[..., None], 3, axis=-1)).any()
    # a gray scan with a colour box of flow painted in 5 % of it: Doppler
    painted = np.repeat(gray[..., None], 3, axis=-1)
    painted[2:, 30:40, 27:37] = (230, 120, 20)
    assert sector.colour_doppler(painted).tolist() == [False, False] + [True] * (len(gray) - 2)
