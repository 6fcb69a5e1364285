"""The TFDS builders on real-format fixtures: mp4/avi/DICOM/HDF5/npy videos, CSV and class-folder planes; no
patient data in any written file; Beam (DirectRunner) == in-process; bad inputs raise or are counted."""

import csv
import pathlib
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image
from us_fixtures import PATIENT_ID, PATIENT_NAME, moving_frames, write_dicom, write_hdf5, write_png, write_video

from fetalssl_jax.data.build import readers
from fetalssl_jax.data.build.readers import DataError

sys.path.insert(0, str(REPO / "data_builders"))
tfds = pytest.importorskip("tensorflow_datasets")
from fetal_cardiac_planes.fetal_cardiac_planes_dataset_builder import (  # noqa: E402
    FetalCardiacPlanes,
    FetalCardiacPlanesConfig,
)
from fetal_us_video.fetal_us_video_dataset_builder import FetalUsVideo, FetalUsVideoConfig  # noqa: E402

LENGTHS = {"a.mp4": 9, "b.avi": 7, "scan.dcm": 6, "many.h5::v1": 5, "many.h5::v2": 8, "c.npy": 4}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "a.mp4", moving_frames(9, 40, 48, seed=1))
    write_video(d / "sub" / "b.avi", moving_frames(7, 32, 32, seed=2))
    write_dicom(d / "scan.dcm", moving_frames(6, 36, 36, seed=3), jpeg=True)
    write_hdf5(
        d / "many.h5", {"v1": moving_frames(5, 32, 32, seed=4), "v2": moving_frames(8, 32, 32, seed=5, channels=3)}
    )
    np.save(d / "c.npy", moving_frames(4, 30, 30, seed=6))
    return d


def build(builder_cls, config, manual_dir, data_dir, beam=False):
    dl = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    if beam:
        import apache_beam as beam_lib

        dl.beam_runner = beam_lib.runners.DirectRunner()
    builder = builder_cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(download_config=dl)
    return builder


def all_records(builder):
    """{split: [record]} with text features as str (the data source gives bytes)."""
    out = {}
    for s in builder.info.splits:
        records = builder.as_data_source(split=s).__getitems__(list(range(builder.info.splits[s].num_examples)))
        out[s] = [{k: v.decode() if isinstance(v, bytes) else v for k, v in r.items()} for r in records]
    return out


def test_pairs_from_every_format_split_by_video_without_patient_data(videos, tmp_path):
    config = FetalUsVideoConfig(name="t_pairs", image_size=24, frame_skip=2, max_gap=1, validation_fraction=0.34)
    builder = build(FetalUsVideo, config, videos, tmp_path / "data")
    records = all_records(builder)
    kept = {name: (n + 1) // 2 for name, n in LENGTHS.items()}
    assert sum(len(r) for r in records.values()) == sum(kept.values())
    ids = {s: {r["video_id"] for r in rs} for s, rs in records.items()}
    assert len(ids["train"] | ids["validation"]) == 6 and not ids["train"] & ids["validation"]  # by video
    # lossless sources: every record equals the reader's independent decode + preprocess
    salt = readers.id_salt(videos)
    for name, key, source in (("many.h5", "v2", moving_frames(8, 32, 32, seed=5, channels=3)),
                              ("c.npy", "", moving_frames(4, 30, 30, seed=6))):  # fmt: skip
        vid = readers.salted_hash(f"{name}::{key}" if key else name, salt)
        # independent: PIL's gray conversion and bilinear resize of every 2nd source frame (within rounding)
        expected = [np.asarray(Image.fromarray(f).convert("L").resize((24, 24), Image.BILINEAR)) for f in source[::2]]
        mine = [r for rs in records.values() for r in rs if r["video_id"] == vid]
        assert len(mine) == len(expected)
        for r in mine:
            i1, i2 = int(r["frame_index1"]), int(r["frame_index2"])
            assert i1 % 2 == 0 and abs(i1 - i2) <= 2  # at most max_gap = 1 kept frame apart
            assert np.abs(r["frame1"][..., 0].astype(int) - expected[i1 // 2]).max() <= 1
            assert np.abs(r["frame2"][..., 0].astype(int) - expected[i2 // 2]).max() <= 1
    # no patient data anywhere in what was written (records, dataset_info, metadata)
    needles = [s.encode() for s in (PATIENT_NAME, PATIENT_ID, "Secretname", "93417", "St Example", "scan.dcm")]
    files = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert len(files) >= 5
    for p in files:
        data = p.read_bytes()
        assert not [n for n in needles if n in data], p


def test_patient_folders_keep_a_patients_videos_in_one_split(tmp_path):
    # 6 patients with 2 videos each, in <site>/<patient>/ folders; a video left at the site level has no patient
    manual = tmp_path / "manual"
    for p in range(6):
        for v in range(2):
            path = manual / f"site{p % 2}" / f"P{p}" / f"v{v}.npy"
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, moving_frames(2, 16, 16, seed=10 * p + v))
    salt = readers.id_salt(manual)
    patient_of = {readers.salted_hash(f"site{p % 2}/P{p}/v{v}.npy", salt): p for p in range(6) for v in range(2)}
    split_patients = []
    for seed in range(4):
        config = FetalUsVideoConfig(name=f"by_patient{seed}", record="frames", image_size=16, frame_skip=1,
                                    validation_fraction=0.5, split_seed=seed, patient_folder=2)  # fmt: skip
        records = all_records(build(FetalUsVideo, config, manual, tmp_path / "data"))
        patients = {s: {patient_of[r["video_id"]] for r in rs} for s, rs in records.items()}
        assert patients["train"].isdisjoint(patients["validation"]) and len(patients["validation"]) == 3
        assert sum(len(rs) for rs in records.values()) == 24  # every video, 2 frames each
        split_patients.append(patients["validation"])
    by_video = FetalUsVideoConfig(name="by_video", record="frames", image_size=16, frame_skip=1,
                                  validation_fraction=0.5, split_seed=0)  # fmt: skip
    records = all_records(build(FetalUsVideo, by_video, manual, tmp_path / "data"))
    patients = {s: {patient_of[r["video_id"]] for r in rs} for s, rs in records.items()}
    assert not patients["train"].isdisjoint(patients["validation"])  # split by video, patients straddle the splits
    np.save(manual / "site0" / "loose.npy", moving_frames(2, 16, 16, seed=99))
    config = FetalUsVideoConfig(name="loose", record="frames", image_size=16, frame_skip=1, patient_folder=2)
    with pytest.raises(DataError, match=r"site0/loose\.npy: patient_folder = 2"):
        build(FetalUsVideo, config, manual, tmp_path / "data")


def test_beam_direct_runner_writes_the_same_records(videos, tmp_path):
    config = FetalUsVideoConfig(name="t_clips", record="clips", image_size=16, frame_skip=1, clip_length=3,
                                clip_stride=2, validation_fraction=0.34)  # fmt: skip
    local = all_records(build(FetalUsVideo, config, videos, tmp_path / "local"))
    beam = all_records(build(FetalUsVideo, config, videos, tmp_path / "beam", beam=True))
    span = (3 - 1) * 2 + 1
    assert sum(len(r) for r in local.values()) == sum(max(n - span + 1, 0) for n in LENGTHS.values())

    def key(r):
        return r["video_id"], tuple(r["frame_indices"].tolist()), r["clip"].tobytes()

    for split in local:
        assert sorted(map(key, local[split])) == sorted(map(key, beam[split]))
        for r in local[split]:
            np.testing.assert_array_equal(np.diff(r["frame_indices"]), [2, 2])


def test_bad_video_raises_naming_it_or_is_counted_when_lenient(videos, tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("a.mp4", "c.npy"):
        (manual / name).write_bytes((videos / name).read_bytes())
    data = (videos / "a.mp4").read_bytes()
    (manual / "broken.mp4").write_bytes(data[: len(data) // 3])
    strict = FetalUsVideoConfig(name="t_strict", record="frames", image_size=16, validation_fraction=0.0)
    with pytest.raises(DataError, match="broken.mp4: unreadable or truncated video"):
        build(FetalUsVideo, strict, manual, tmp_path / "d1")
    lenient = FetalUsVideoConfig(name="t_lenient", record="frames", image_size=16, frame_skip=1,
                                 validation_fraction=0.0, on_error="skip")  # fmt: skip
    builder = build(FetalUsVideo, lenient, manual, tmp_path / "d2")
    assert builder.info.splits["train"].num_examples == 9 + 4
    assert builder.info.metadata["skipped_videos_train"] == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssertionError, match="empty does not exist or is empty"):  # TFDS checks this one
        build(FetalUsVideo, strict, tmp_path / "empty", tmp_path / "d3")
    (tmp_path / "empty" / "notes.txt").write_text("no videos here")
    with pytest.raises(DataError, match="no videos found in .*empty"):
        build(FetalUsVideo, strict, tmp_path / "empty", tmp_path / "d3")


def write_planes(root: pathlib.Path, rows, num_patients=6, per_patient=5):
    rng = np.random.default_rng(0)
    classes = ["3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart"]
    for p in range(num_patients):
        for k in range(per_patient):
            name = f"img_{p}_{k}.png"
            cls = classes[(p + k) % 5]
            write_png(root / cls.replace("/", "_") / name, rng.integers(0, 256, (20, 24), dtype=np.uint8))
            rows.append({"image_name": name, "class": cls, "patient_id": f"patient-{p}"})


def test_planes_from_csv_split_by_patient(tmp_path):
    root, rows = tmp_path / "planes", []
    write_planes(root, rows)
    rows[3]["image_name"] = f"{rows[3]['class'].replace('/', '_')}/{rows[3]['image_name']}"  # path from the root
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image_name", "class", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    config = FetalCardiacPlanesConfig(name="t_csv", image_size=16)
    records = all_records(build(FetalCardiacPlanes, config, root, tmp_path / "data"))
    assert sum(len(r) for r in records.values()) == 30
    patients = {s: {r["patient_id"] for r in rs} for s, rs in records.items()}
    assert all(len(p) >= 1 for p in patients.values())
    assert not (patients["train"] & patients["validation"] or patients["train"] & patients["test"]
                or patients["validation"] & patients["test"])  # fmt: skip
    for rs in records.values():
        for r in rs:
            assert r["image"].shape == (16, 16, 1) and 0 <= r["label"] < 5
            assert "patient-" not in r["patient_id"] and len(r["patient_id"]) == 16  # a salted hash


def test_planes_bad_rows_and_class_folders(tmp_path):
    root, rows = tmp_path / "planes", []
    write_planes(root, rows, num_patients=3, per_patient=5)
    bad = [*rows, {"image_name": "missing.png", "class": "4CH", "patient_id": "patient-0"},
           {"image_name": rows[0]["image_name"], "class": "5CH", "patient_id": "patient-0"}]  # fmt: skip

    def write_csv(rows_, name="labels.csv"):
        with open(root / name, "w", newline="") as f:
            w = csv.DictWriter(f, ["image_name", "class", "patient_id"])
            w.writeheader()
            w.writerows(rows_)

    write_csv(bad)
    strict = FetalCardiacPlanesConfig(name="t_strict", image_size=16)
    with pytest.raises(DataError, match=r"labels.csv line 17: image file 'missing.png' not found"):
        build(FetalCardiacPlanes, strict, root, tmp_path / "d1")
    write_csv(bad[:15] + bad[16:])
    with pytest.raises(DataError, match=r"labels.csv line 17: unknown class '5CH'"):
        build(FetalCardiacPlanes, strict, root, tmp_path / "d1")
    write_csv(bad)
    lenient = FetalCardiacPlanesConfig(name="t_lenient", image_size=16, on_error="skip")
    builder = build(FetalCardiacPlanes, lenient, root, tmp_path / "d2")
    assert sum(s.num_examples for s in builder.info.splits.values()) == 15
    assert builder.info.metadata["skipped_rows"] == 2
    (tmp_path / "secret.png").write_bytes((root / "4CH" / rows[1]["image_name"]).read_bytes())
    write_csv([*rows, {"image_name": "../secret.png", "class": "4CH", "patient_id": "patient-1"}])
    with pytest.raises(DataError, match=r"'../secret.png' escapes the data folder"):
        build(FetalCardiacPlanes, lenient, root, tmp_path / "d3")  # even in the lenient mode
    (root / "labels.csv").unlink()
    folders = FetalCardiacPlanesConfig(name="t_folders", layout="folders", image_size=16)
    records = all_records(build(FetalCardiacPlanes, folders, root, tmp_path / "d4"))
    labels = sorted(int(r["label"]) for rs in records.values() for r in rs)
    assert labels == sorted(readers.class_index(r["class"], FetalCardiacPlanesConfig.classes) for r in rows)


def test_a_screen_capture_and_a_square_export_of_one_scan_build_alike(tmp_path):
    """Invariance: the same sweep as a 4:3 screen capture (black bands, a caption) and as a square mp4 gives the
    same frames with fit='crop_pad' (content crop + pad); the default stretch (the reference's) makes them differ."""
    from fetalssl_jax.data import synthetic

    scan = synthetic.generate_video(0, 6, 48, seed=3, frame_skip=1).frames
    capture = np.pad(scan, ((0, 0), (0, 0), (8, 8)))
    capture[:, 2:5, 1:6] = 255  # a caption at the top left, as scanners print the patient's details
    manual = tmp_path / "manual"
    write_video(manual / "square" / "scan.mp4", scan)
    write_video(manual / "capture" / "scan.mp4", capture)
    salt = readers.id_salt(manual)
    ids = {readers.salted_hash(f"{kind}/scan.mp4", salt): kind for kind in ("square", "capture")}

    def frames(fit):
        config = FetalUsVideoConfig(name=f"t_{fit}", record="frames", image_size=32, frame_skip=1,
                                    validation_fraction=0.0, fit=fit)  # fmt: skip
        records = all_records(build(FetalUsVideo, config, manual, tmp_path / fit))["train"]
        out = {kind: [] for kind in ids.values()}
        for r in sorted(records, key=lambda r: int(r["frame_index"])):
            out[ids[r["video_id"]]].append(r["image"][..., 0].astype(float))
        return {kind: np.stack(v) for kind, v in out.items()}

    cropped, stretched = frames("crop_pad"), frames("stretch")
    # codec error only (MPEG-4: a grey level or two on average) against ten levels and more when stretched
    assert np.abs(cropped["capture"] - cropped["square"]).mean() < 2
    assert np.abs(stretched["capture"] - stretched["square"]).mean() > 8
    with pytest.raises(ValueError, match="fit must be one of .*'squash'"):
        build(FetalUsVideo, FetalUsVideoConfig(name="t_bad_fit", fit="squash"), manual, tmp_path / "bad")
