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
    out, kept = readers.prepare_video(rgb, "x", image_size=16, frame_skip=5)
    np.testing.assert_array_equal(kept, [0, 5, 10])
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.uint8
    # independent: PIL's own RGB -> L conversion (BT.601) and bilinear resize, within rounding
    for i, k in enumerate(kept):
        gray = Image.fromarray(rgb[k]).convert("L")
        np.testing.assert_allclose(np.asarray(gray), readers.to_grayscale(rgb[k : k + 1])[0], atol=1)
        expected = np.asarray(gray.resize((16, 16), Image.BILINEAR)).astype(int)
        assert np.abs(out[i, ..., 0].astype(int) - expected).max() <= 1


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
