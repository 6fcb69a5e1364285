"""Format readers, preprocessing, ids and splits of fetalssl_jax.data.build.readers, on fixtures made here."""

import numpy as np
import pytest
from PIL import Image
from us_fixtures import moving_frames, write_dicom, write_hdf5, write_png, write_video

from fetalssl_jax.data.build import readers
from fetalssl_jax.data.build.readers import DataError, VideoRef


def ref(tmp_path, rel, key=""):
    return VideoRef(rel, key, str(tmp_path))


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_container_video_decodes_close_to_the_original(tmp_path, suffix):
    frames = moving_frames(12, 32, 48)
    write_video(tmp_path / f"v{suffix}", frames)
    decoded = readers.read_video(ref(tmp_path, f"v{suffix}"))
    assert decoded.shape == (12, 32, 48, 3) and decoded.dtype == np.uint8
    # lossy MPEG-4 at a high bit rate: small mean error, gray stays gray
    assert np.abs(readers.to_grayscale(decoded).astype(float) - frames).mean() < 3.0


def test_dicom_uncompressed_jpeg_and_16_bit(tmp_path):
    frames = moving_frames(5, 24, 20, seed=1)
    write_dicom(tmp_path / "raw.dcm", frames)
    np.testing.assert_array_equal(readers.read_video(ref(tmp_path, "raw.dcm")), frames)
    write_dicom(tmp_path / "jpeg.dcm", frames, jpeg=True)  # decoded by the pylibjpeg-libjpeg plugin
    jpeg = readers.read_video(ref(tmp_path, "jpeg.dcm"))
    assert jpeg.shape == frames.shape and np.abs(jpeg.astype(float) - frames).mean() < 2.0
    wide = frames.astype(np.uint16) * 16  # 12 bits stored: [0, 4095] -> [0, 255]
    write_dicom(tmp_path / "wide.dcm", wide, bits=12)
    expected = np.round(wide * (255 / 4095)).astype(np.uint8)
    np.testing.assert_array_equal(readers.read_video(ref(tmp_path, "wide.dcm")), expected)
    write_dicom(tmp_path / "inv.dcm", frames, monochrome1=True)
    np.testing.assert_array_equal(readers.read_video(ref(tmp_path, "inv.dcm")), 255 - frames)


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.5"])
def test_dicom_lossless_compressions_decode_exactly(tmp_path, syntax):
    """JPEG 2000, JPEG-LS and RLE lossless cine loops (the data extra's decoders) give back the frames bit for bit."""
    frames = moving_frames(4, 32, 40, seed=2)
    write_dicom(tmp_path / "c.dcm", frames, syntax=syntax)
    np.testing.assert_array_equal(readers.read_video(ref(tmp_path, "c.dcm")), frames)


def test_dicom_colour_jpeg_is_read_as_rgb_not_as_ycbcr(tmp_path):
    """A colour scanner's YBR_FULL_422 JPEG loop of a gray scan reads back as that gray scan: read as if its Y, Cb,
    Cr planes were R, G, B, the gray would be 0.587 x 128 + ... of the chroma planes, far from the scan."""
    frames = moving_frames(4, 32, 24, seed=3)
    write_dicom(tmp_path / "colour.dcm", np.repeat(frames[..., None], 3, axis=-1), jpeg=True, rgb=True)
    gray = readers.to_grayscale(readers.read_video(ref(tmp_path, "colour.dcm")))
    assert gray.shape == frames.shape and np.abs(gray.astype(float) - frames).mean() < 2.0


def test_list_videos_expands_hdf5_and_npz_and_finds_frame_folders(tmp_path):
    a, b = moving_frames(4, 16, 16), moving_frames(3, 16, 16, channels=3)
    write_hdf5(tmp_path / "scans" / "all.h5", {"vid_b": b, "vid_a": a})
    np.savez(tmp_path / "more.npz", x=a)
    np.save(tmp_path / "one.npy", a)
    for i, f in enumerate(a):
        write_png(tmp_path / "framesdir" / f"{i:03d}.png", f)
    (tmp_path / "notes.txt").write_text("ignored")
    refs = readers.list_videos(tmp_path)
    assert [r.name for r in refs] == ["framesdir", "more.npz::x", "one.npy", "scans/all.h5::vid_a",
                                      "scans/all.h5::vid_b"]  # fmt: skip
    for r in refs:
        expected = b if r.key == "vid_b" else a
        np.testing.assert_array_equal(readers.read_video(r), expected)


def test_preprocessing_skip_grayscale_resize():
    rgb = np.random.default_rng(0).integers(0, 256, (11, 20, 30, 3), dtype=np.uint8)
    out, kept = readers.prepare_video(rgb, "x", image_size=16, frame_skip=5)  # default: the reference's stretch
    np.testing.assert_array_equal(kept, [0, 5, 10])
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.uint8
    # independent: PIL's own RGB -> L conversion (BT.601) and bilinear resize, within rounding
    for i, k in enumerate(kept):
        gray = Image.fromarray(rgb[k]).convert("L")
        np.testing.assert_allclose(np.asarray(gray), readers.to_grayscale(rgb[k : k + 1])[0], atol=1)
        expected = np.asarray(gray.resize((16, 16), Image.BILINEAR)).astype(int)
        assert np.abs(out[i, ..., 0].astype(int) - expected).max() <= 1


def _screen_capture(rng, frames: int = 3, side: int = 30, band: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(capture [T, side, side + 2 band], scan [T, side, side]): a square scan of bright texture between black
    bands, with a caption of bright text in the left band and compression-like noise below the threshold."""
    scan = rng.integers(40, 256, (frames, side, side), dtype=np.uint8)
    capture = rng.integers(0, readers.CONTENT_THRESHOLD + 1, (frames, side, side + 2 * band), dtype=np.uint8)
    capture[:, :, band : band + side] = scan
    capture[:, 2:4, 1:3] = 250  # a caption: a small bright region in the band, 5 px from the scan
    return capture, scan


def test_crop_pad_keeps_the_scan_and_drops_the_bands_of_a_screen_capture():
    capture, scan = _screen_capture(np.random.default_rng(1))
    # at the scan's own size: the square scan, untouched
    np.testing.assert_array_equal(readers.resize_frames(capture, 30, fit="crop_pad"), scan)
    # independent: PIL's resize of the scan alone
    for i, frame in enumerate(readers.resize_frames(capture, 15, fit="crop_pad")):
        expected = np.asarray(Image.fromarray(scan[i]).resize((15, 15), Image.BILINEAR)).astype(int)
        assert np.abs(frame.astype(int) - expected).max() <= 1
    # 'pad' keeps the bands: 8 black rows above and below the 30 x 46 capture, then the resize
    padded = readers.resize_frames(capture, 23, fit="pad")
    for i, frame in enumerate(padded):
        square = np.zeros((46, 46), np.uint8)
        square[8:38] = capture[i]
        expected = np.asarray(Image.fromarray(square).resize((23, 23), Image.BILINEAR)).astype(int)
        assert np.abs(frame.astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="fit='squash'.*crop_pad"):
        readers.resize_frames(capture, 20, fit="squash")


def test_crop_pad_uses_one_box_per_video_and_pads_a_wide_sector_to_a_centred_square():
    # a sector 12 rows high and 20 wide that moves: frame 0 lights columns 4..13, frame 1 columns 14..23
    frames = np.zeros((2, 24, 28), np.uint8)
    frames[0, 6:18, 4:14] = 200
    frames[1, 6:18, 14:24] = 100
    assert readers.content_box(frames.max(axis=0)) == (6, 18, 4, 24)
    out = readers.resize_frames(frames, 20, fit="crop_pad")  # box 12 x 20 -> 4 black rows above and below -> 20 x 20
    expected = np.zeros((2, 20, 20), np.uint8)
    expected[0, 4:16, 0:10] = 200
    expected[1, 4:16, 10:20] = 100
    np.testing.assert_array_equal(out, expected)
    # nothing above the threshold: the whole frame, padded
    dark = np.full((1, 10, 20), readers.CONTENT_THRESHOLD, np.uint8)
    assert readers.content_box(dark[0]) == (0, 10, 0, 20)
    np.testing.assert_array_equal(readers.resize_frames(dark, 20, fit="crop_pad")[0, 5:15], dark[0])


def test_prepare_video_crops_every_frame_of_a_capture_alike():
    capture, scan = _screen_capture(np.random.default_rng(2), frames=6)
    out, kept = readers.prepare_video(capture, "capture.mp4", image_size=30, frame_skip=2, fit="crop_pad")
    np.testing.assert_array_equal(kept, [0, 2, 4])
    np.testing.assert_array_equal(out[..., 0], scan[::2])


def test_salted_hash_and_salt_sources(tmp_path):
    h = readers.salted_hash("patient_smith/scan1.mp4", "s1")
    assert len(h) == 16 and "smith" not in h
    assert (
        h
        == readers.salted_hash("patient_smith/scan1.mp4", "s1")
        != readers.salted_hash("patient_smith/scan1.mp4", "s2")
    )
    assert readers.id_salt(tmp_path, env={"FETALSSL_ID_SALT": "abc"}) == "abc"
    (tmp_path / ".id_salt").write_text("secret\n")
    assert readers.id_salt(tmp_path, env={}) == "secret"


def test_split_groups_is_disjoint_deterministic_and_proportional():
    groups = [f"v{i % 23}" for i in range(100)]  # frames of 23 videos
    split = readers.split_groups(groups, {"train": 0.6, "valid": 0.2, "test": 0.2}, seed=3)
    assert set(split) == set(groups)  # every group in exactly one split (a dict)
    counts = {s: sum(1 for v in split.values() if v == s) for s in ("train", "valid", "test")}
    assert counts == {"train": 14, "valid": 5, "test": 4} or counts == {"train": 14, "valid": 4, "test": 5}
    assert split == readers.split_groups(list(reversed(groups)), {"train": 0.6, "valid": 0.2, "test": 0.2}, seed=3)
    small = readers.split_groups(["a", "b", "c"], {"train": 0.9, "validation": 0.1})
    assert sorted(small.values()) == ["train", "train", "validation"]


def test_patient_folder_is_the_folder_at_the_given_depth():
    assert readers.patient_folder("site/P1/exam/a.mp4", 2) == "site/P1"
    assert readers.patient_folder("P1/a.mp4", 1) == "P1"
    assert readers.patient_folder("P1/sweep_frames", 1) == "P1"  # a folder of frames is a video like a file
    assert readers.patient_folder("P1/a.mp4", 0) == "P1/a.mp4"  # every video its own patient
    with pytest.raises(DataError, match=r"a\.mp4: patient_folder = 1 .* this file is 0 level\(s\) deep"):
        readers.patient_folder("a.mp4", 1)
    with pytest.raises(DataError, match=r"P1/a\.mp4: patient_folder = 2 .* 1 level\(s\) deep"):
        readers.patient_folder("P1/a.mp4", 2)
    with pytest.raises(ValueError, match=r"patient_folder = -1: must be an integer >= 0"):
        readers.patient_folder("P1/a.mp4", -1)


def test_bad_inputs_name_the_file(tmp_path):
    write_video(tmp_path / "good.mp4", moving_frames(30, 32, 32))
    data = (tmp_path / "good.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.avi").write_bytes(b"not a video at all" * 50)
    np.save(tmp_path / "empty.npy", np.zeros((0, 16, 16), np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((3, 16, 16), np.float32))
    write_dicom(tmp_path / "nopixels.dcm", None)
    write_png(tmp_path / "mixed" / "000.png", np.zeros((16, 16), np.uint8))
    write_png(tmp_path / "mixed" / "001.png", np.zeros((20, 16), np.uint8))
    cases = {
        "cut.mp4": "cut.mp4: unreadable or truncated video",
        "junk.avi": "junk.avi: unreadable or truncated video",
        "empty.npy": "empty.npy: the video has zero frames",
        "float.npy": "float.npy: frames of dtype float32",
        "nopixels.dcm": "nopixels.dcm: DICOM file without pixel data",
        "mixed": "mixed/001.png: frames of differing sizes",
    }
    for name, message in cases.items():
        with pytest.raises(DataError, match=message):
            readers.read_video(ref(tmp_path, name))
    (tmp_path / "void").mkdir()
    with pytest.raises(DataError, match="no videos found in .*void"):
        readers.list_videos(tmp_path / "void")


@pytest.mark.parametrize(
    ("encoding", "delimiter", "header"),
    [("utf-8-sig", ",", ["Image_Name", "Class", "Patient_ID"]),  # Excel's "CSV UTF-8": a byte-order mark
     ("utf-8", ";", ["image_name", "class", "patient_id"]),  # a decimal-comma locale's spreadsheet
     ("utf-8", "\t", [" image_name ", "CLASS", "patient_id"])],
)  # fmt: skip
def test_label_csv_from_spreadsheets_reads_as_the_plain_one(tmp_path, encoding, delimiter, header):
    classes = ["3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart"]
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    lines = [delimiter.join(header), delimiter.join(["a.png", "4CH", "p1"]), delimiter.join(["b.png", "3VT", "p2"]),
             delimiter.join(["c.png", "non_heart", "p 3"])]  # fmt: skip
    (tmp_path / "labels.csv").write_text("\r\n".join(lines) + "\r\n", encoding=encoding)
    images, problems = readers.read_label_csv(tmp_path, "labels.csv", classes, readers.DEFAULT_CLASS_ALIASES)
    assert problems == []
    assert [(i.relpath, i.label, i.patient) for i in images] == [("a.png", 1, "p1"), ("b.png", 0, "p2"),
                                                                  ("c.png", 4, "p 3")]  # fmt: skip


def test_label_csv_without_the_columns_says_what_it_needs(tmp_path):
    (tmp_path / "labels.csv").write_text("file,label\na.png,4CH\n")
    with pytest.raises(DataError, match=r"labels.csv: missing column\(s\) \['class', 'image_name'\]; found \['file', "
                                        r"'label'\] \(columns image_name, class"):  # fmt: skip
        readers.read_label_csv(tmp_path, "labels.csv", ["4CH"])


def test_an_installation_salt_is_made_once_kept_secret_and_announced(tmp_path, caplog):
    """No configured salt: a random one per installation, in a 0600 file, announced once with where it is; the
    environment and <folder>/.id_salt keep priority. (The suite's own lives in a temporary folder: conftest.)"""
    import logging
    import pathlib
    import stat

    assert pathlib.Path.home() not in readers.installation_salt_file().parents  # never the real home in tests
    env = {"FETALSSL_CONFIG_DIR": str(tmp_path / "config")}
    with caplog.at_level(logging.INFO, "fetalssl_jax.data"):
        salt = readers.id_salt(tmp_path, env=env)
    path = tmp_path / "config" / "id_salt"
    assert path.read_text() == salt + "\n" and len(salt) == 64 and int(salt, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(path) in warning and "secret" in warning and "back it up" in warning
    caplog.clear()
    with caplog.at_level(logging.INFO, "fetalssl_jax.data"):
        assert readers.id_salt(tmp_path, env=env) == salt  # kept: the ids stay the same
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert readers.id_salt(None, env={"FETALSSL_CONFIG_DIR": str(tmp_path / "elsewhere")}) != salt  # random
    file_env = {"FETALSSL_ID_SALT_FILE": str(tmp_path / "keys" / "salt")}
    assert readers.id_salt(None, env=file_env) == (tmp_path / "keys" / "salt").read_text().strip()
    assert readers.id_salt(tmp_path, env={**env, "FETALSSL_ID_SALT": "abc"}) == "abc"
    (tmp_path / ".id_salt").write_text("mine\n")
    assert readers.id_salt(tmp_path, env=env) == "mine"
    # the folder name of a patient cannot be tried out against the ids
    guess = readers.salted_hash("Doe_Jane_1234/scan.mp4", "fetalssl_jax-default-salt")
    assert readers.salted_hash("Doe_Jane_1234/scan.mp4", salt) != guess


def _tiny_pngs(root, names):
    for name in names:
        write_png(root / name, np.zeros((4, 4), np.uint8))


def test_a_label_csv_that_is_not_utf8_names_the_line_and_the_byte(tmp_path):
    _tiny_pngs(tmp_path, ["a.png", "b.png"])
    text = "image_name,class,patient_id\na.png,4CH,p1\nb.png,4CH,Müller\n"
    (tmp_path / "labels.csv").write_bytes(text.encode("cp1252"))  # a Windows spreadsheet's "CSV"
    # the ü is byte 52: 28 bytes of header line, 13 of the first row, then "b.png,4CH,M"
    message = r"^labels.csv line 3: byte 0xfc \(byte 52 of the file\) is not UTF-8.*save the table as UTF-8"
    with pytest.raises(DataError, match=message):
        readers.read_label_csv(tmp_path, "labels.csv", ["4CH"])
    (tmp_path / "labels.csv").write_bytes(text.encode("utf-16"))
    with pytest.raises(DataError, match=r"^labels.csv: a UTF-16 table .* 'CSV UTF-8'"):
        readers.read_label_csv(tmp_path, "labels.csv", ["4CH"])


def test_an_image_listed_twice_is_named_with_both_lines(tmp_path):
    _tiny_pngs(tmp_path, ["a.png", "b.png", "4CH/c.png"])
    rows = ["image_name,class", "a.png,4CH", "b.png,LVOT", "a.png,LVOT", "c.png,4CH", "4CH/c.png,4CH"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"^labels.csv line 4: image 'a.png' is already on line 2; list every image"):
        readers.read_label_csv(tmp_path, "labels.csv", ["4CH", "LVOT"])
    images, problems = readers.read_label_csv(tmp_path, "labels.csv", ["4CH", "LVOT"], on_error="skip")
    assert [(i.relpath, i.label) for i in images] == [("a.png", 0), ("b.png", 1), ("4CH/c.png", 0)]
    assert [p.split(":")[0] for p in problems] == ["labels.csv line 4", "labels.csv line 6"]  # c.png in its class


def test_a_file_name_that_is_not_utf8_is_named_in_one_printable_line(tmp_path):
    import os

    name = os.fsdecode(b"Doe_J\xe9r\xf4me.npy")  # a Latin-1 name: Python keeps the bytes as surrogates
    np.save(tmp_path / name, moving_frames(2, 8, 8))
    (ref,) = readers.list_videos(tmp_path)
    assert len(readers.salted_hash(ref.name, "s")) == 16  # ids are made from the bytes, without a crash
    with pytest.raises(DataError, match=r"^Doe_J\\xe9r\\xf4me\.npy: the file name is not UTF-8 .*rename it") as error:
        readers.read_video(ref)
    str(error.value).encode("utf-8")  # the message itself prints
