"""select end to end: videos of several formats -> embeddings -> k-center greedy -> a folder to label whose
labels.csv, once the classes are filled in, is what the fetal_cardiac_planes builder's csv reader accepts."""

import csv

import numpy as np
import pytest
from apply_fixtures import random_backbone
from conftest import REPO
from PIL import Image
from us_fixtures import moving_frames, write_png, write_video

from fetalssl_jax.apply import Embeddings, select
from fetalssl_jax.apply.tasks import run_select
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data.build import readers
from fetalssl_jax.data.synthetic import PLANES, generate_videos


def _select_config(**overrides):
    config = load_config(f"{REPO / 'configs' / 'select.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Generated videos as .npy (lossless) in patient folders, an mp4, and a folder of frame PNGs."""
    root = tmp_path_factory.mktemp("scans")
    videos = generate_videos(4, 12, 48, seed=0, frame_skip=1)
    for v in videos[:3]:
        (root / v.patient_id).mkdir(exist_ok=True)
        np.save(root / v.patient_id / f"{v.video_id}.npy", v.frames)
    write_video(root / "clip.mp4", moving_frames(10, 32, 40))
    for t, frame in enumerate(videos[3].frames[:8]):
        write_png(root / "frames" / f"{t:03d}.png", frame)
    exported = root.parent / f"{root.name}-backbone"
    return root, {v.video_id: v for v in videos}, random_backbone(1, exported).source


def test_select_exports_frames_and_a_labels_csv_the_plane_builder_reads(scans, tmp_path, monkeypatch):
    monkeypatch.setenv("FETALSSL_ID_SALT", "salt")
    root, videos, backbone = scans
    config = _select_config(backbone=backbone, input=str(root), budget=8, frame_skip=2, min_gap=2)
    message = run_select(config, tmp_path)
    assert "chose 8 of" in message
    embeddings = Embeddings.load(tmp_path)
    # 3 npy videos of 12 frames, a 10-frame mp4 and an 8-frame folder, every 2nd frame kept
    assert len(embeddings) == 3 * 6 + 5 + 4
    with open(tmp_path / "selection.csv") as f:
        selection = list(csv.DictReader(f))
    chosen = np.array([int(r["row"]) for r in selection])
    np.testing.assert_array_equal(chosen, select(embeddings, 8, min_gap=2, seed=0))  # the API's choice
    assert len(set(embeddings.source_ids[chosen])) >= 4  # spread over the videos
    to_label = tmp_path / "to_label"
    with open(to_label / "labels.csv", newline="") as f:
        header = next(csv.reader(f))
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert header == ["image_name", "class", "patient_id"]
    assert len(rows) == 8 and all(r["class"] == "" for r in rows)
    assert [r["patient_id"] for r in rows] == list(embeddings.source_ids[chosen])
    assert sorted(p.name for p in to_label.glob("*.png")) == sorted(r["image_name"] for r in rows)
    with open(tmp_path / "sources.csv") as f:
        sources = dict(csv.reader(f))
    for r, row in zip(rows, chosen, strict=True):
        name = sources[embeddings.source_ids[row]]
        frame = int(embeddings.frame_index[row])
        if name.endswith(".npy"):  # lossless: the PNG is the recorded frame, at its recorded size
            video = videos[name.split("/")[1][:-4]]
            np.testing.assert_array_equal(np.asarray(Image.open(to_label / r["image_name"])), video.frames[frame])
        assert readers.salted_hash(name, "salt") == r["patient_id"]
    with pytest.raises(readers.DataError, match="unknown class ''"):  # not labelled yet
        readers.read_label_csv(to_label, "labels.csv", PLANES)
    for i, r in enumerate(rows):  # the labeller fills in the classes
        r["class"] = PLANES[i % len(PLANES)]
    with open(to_label / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["image_name", "class", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    images, problems = readers.read_label_csv(to_label, "labels.csv", PLANES)
    assert problems == [] and [im.label for im in images] == [i % len(PLANES) for i in range(8)]
    assert [im.patient for im in images] == [r["patient_id"] for r in rows]


def test_patient_folders_spread_the_choice_over_patients_and_name_them_in_labels_csv(scans, tmp_path, monkeypatch):
    monkeypatch.setenv("FETALSSL_ID_SALT", "salt")
    root, _, backbone = scans
    # P0000 holds two videos, P0001 one: by video the 3 videos are 3 groups, by patient 2
    config = _select_config(backbone=backbone, input=str(root), budget=6, frame_skip=2, min_gap=2, patient_folder=1)
    with pytest.raises(readers.DataError, match=r"clip\.mp4: patient_folder = 1"):  # a video outside any folder
        run_select(config, tmp_path / "root")
    inside = tmp_path / "scans"
    for name in ("P0000", "P0001"):
        (inside / name).mkdir(parents=True)
        for f in (root / name).glob("*.npy"):
            (inside / name / f.name).write_bytes(f.read_bytes())
    message = run_select(_select_config(backbone=backbone, input=str(inside), budget=6, frame_skip=2, min_gap=2,
                                        patient_folder=1), tmp_path / "run")  # fmt: skip
    assert "of 2 patients" in message
    embeddings = Embeddings.load(tmp_path / "run")
    with open(tmp_path / "run" / "sources.csv") as f:
        patient = {sid: readers.salted_hash(path.split("/")[0], "salt") for sid, path in list(csv.reader(f))[1:]}
    with open(tmp_path / "run" / "to_label" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    with open(tmp_path / "run" / "selection.csv") as f:
        chosen = [int(r["row"]) for r in csv.DictReader(f)]
    assert [r["patient_id"] for r in rows] == [patient[embeddings.source_ids[c]] for c in chosen]
    assert sorted({r["patient_id"] for r in rows}) == sorted(set(patient.values()))
    # the picks spread over the two patients (the groups), with min_gap per video (test_selection.py checks both)
    assert chosen == select(embeddings, 6, min_gap=2, seed=0, patients=patient).tolist()
    # min_gap acts within a video only: frames of P0000's two videos may share a frame number
    for i, a in enumerate(chosen):
        for b in chosen[i + 1 :]:
            if embeddings.source_ids[a] == embeddings.source_ids[b]:
                assert abs(int(embeddings.frame_index[a]) - int(embeddings.frame_index[b])) > 2


def test_a_budget_larger_than_the_frames_is_an_error(scans, tmp_path):
    root, _, backbone = scans
    # P0000 holds two videos of 12 frames: 12 rows at frame skip 2
    config = _select_config(backbone=backbone, input=str(root / "P0000"), budget=13, frame_skip=2)
    with pytest.raises(ValueError, match=r"budget = 13: the input has only 12 frames; choose a budget <= 12"):
        run_select(config, tmp_path)
    config = _select_config(backbone=backbone, input=str(root / "P0000"), budget=7, frame_skip=2, min_gap=10)
    with pytest.raises(ValueError, match=r"budget 7 is more than the 2 frames that can be chosen .*min_gap=10"):
        run_select(config, tmp_path)  # one frame per video: all others are within 10 frame numbers of it
    with pytest.raises(ValueError, match=r"budget must be at least 1 frame, got 0"):
        select(np.zeros((3, 2)), 0)


def test_the_strategy_is_chosen_by_name_and_checked_with_the_other_keys(scans, tmp_path):
    from fetalssl_jax.apply.selection import k_center_greedy
    from fetalssl_jax.validation import ConfigError

    root, _, backbone = scans
    config = _select_config(backbone=backbone, input=str(root), budget=5, frame_skip=2, strategy="k-center")
    run_select(config, tmp_path / "k")
    embeddings = Embeddings.load(tmp_path / "k")
    with open(tmp_path / "k" / "selection.csv") as f:
        chosen = [int(r["row"]) for r in csv.DictReader(f)]
    expected = k_center_greedy(embeddings.features, 5, groups=embeddings.source_ids, positions=embeddings.frame_index,
                               min_gap=config.min_gap, seed=0)  # fmt: skip
    assert chosen == list(expected)
    bad = _select_config(backbone=backbone, input=str(root), strategy="best", budget=0)
    with pytest.raises(ConfigError) as error:
        run_select(bad, tmp_path / "bad")
    assert sorted(error.value.problems) == [
        "config.budget = 0: must be a positive integer",
        "config.strategy = 'best': must be one of 'typical', 'k-center', 'random'",
    ]
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="strategy = 'best': must be one of 'typical', 'k-center', 'random'"):
        select(embeddings, 3, strategy="best")


def test_the_pngs_to_label_carry_no_pixel_of_burned_in_text(scans, tmp_path, monkeypatch):
    """Sweeps with a patient's name and ids burned into their header band: every PNG written for labelling is the
    recorded frame with that band black, pixel for pixel; deidentify_pixels=False (the opt-out) keeps the text."""
    from us_fixtures import BAND, burn_text

    monkeypatch.setenv("FETALSSL_ID_SALT", "salt")
    _, _, backbone = scans
    root = tmp_path / "scans"
    root.mkdir()
    clean = {}
    for v in generate_videos(3, 10, 64, seed=5, frame_skip=1):
        texted, _ = burn_text(v.frames)
        np.save(root / f"{v.video_id}.npy", texted)
        clean[readers.salted_hash(f"{v.video_id}.npy", "salt")] = np.pad(v.frames, ((0, 0), (BAND, 0), (0, 0)))
    for deidentify in (True, False):
        out = tmp_path / f"run_{deidentify}"
        run_select(_select_config(backbone=backbone, input=str(root), budget=6, frame_skip=1, min_gap=2,
                                  deidentify_pixels=deidentify), out)  # fmt: skip
        with open(out / "to_label" / "labels.csv") as f:
            names = [r["image_name"] for r in csv.DictReader(f)]
        assert len(names) == 6
        for name in names:
            source, frame = name[:-4].rsplit("_", 1)
            png = np.asarray(Image.open(out / "to_label" / name))
            if deidentify:
                np.testing.assert_array_equal(png, clean[source][int(frame)])
            else:
                assert png[:BAND].max() == 255
