"""Work safety of embed / predict / select: outputs tied to the config, model and input files that made them (the
same again is "up to date" and rewrites nothing; another is refused or, with overwrite, moved into previous/),
labels a user filled in never touched (a larger budget adds frames), no input path in config.json, bad files
skipped and listed, and the workdir locked."""

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from apply_fixtures import random_backbone, save_classifier_run
from conftest import REPO
from us_fixtures import moving_frames, write_video

from fetalssl_jax.apply import Embeddings, embed_input, open_input
from fetalssl_jax.apply.selection import k_center_greedy
from fetalssl_jax.apply.tasks import run_embed, run_predict, run_select
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data.build import readers
from fetalssl_jax.errors import UserError
from fetalssl_jax.runtime.workdir_lock import WorkdirBusyError
from fetalssl_jax.train.fingerprint import WorkdirMismatchError

SALT = "pepper"
PATIENT = "Doe_Janet_1970"  # a folder name that must never leave sources.csv


def _config(tool, **overrides):
    config = load_config(f"{REPO / 'configs' / f'{tool}.py'}:tiny")
    defaults = {"frame_skip": 1, "min_gap": 1} if tool == "select" else {"frame_skip": 1}
    for key, value in {**defaults, **overrides}.items():
        set_by_path(config, key, value)
    return config


def _videos(root, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(root / name, rng.integers(0, 256, (6, 32, 32), dtype=np.uint8))
    return root


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("FETALSSL_ID_SALT", SALT)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    first, second = random_backbone(0, root / "first"), random_backbone(1, root / "second")
    return str(root / "first"), str(root / "second"), first, second


def snapshot(directory):
    """Every file (bytes and modification time) but the lock's."""
    return {p.relative_to(directory).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file() and not p.name.startswith(".lock")}  # fmt: skip


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_embed_outputs_belong_to_their_model_and_input(tmp_path, models):
    first, second, *_ = models
    scans = _videos(tmp_path / PATIENT, ["a.npy", "b.npy"])
    out = tmp_path / "out"
    message = run_embed(_config("embed", backbone=first, input=str(scans)), out)
    before = snapshot(out)
    again = run_embed(_config("embed", backbone=first, input=str(scans), progress_bar=True), out)  # cosmetic key
    assert again == f"up to date (same config, model and input files; nothing rewritten): {message}"
    assert snapshot(out) == before
    # another backbone: refused, naming the weights' digest; nothing changes
    with pytest.raises(WorkdirMismatchError, match=r"identity\.model\.weights_sha256: workdir has '[0-9a-f]{16}', "
                                                   r"config has '[0-9a-f]{16}'"):  # fmt: skip
        run_embed(_config("embed", backbone=second, input=str(scans)), out)
    assert snapshot(out) == before
    # overwrite: the old outputs move into previous/<time>/, byte for byte
    message = run_embed(_config("embed", backbone=second, input=str(scans), overwrite=True), out)
    (moved,) = (out / "previous").iterdir()
    assert message.endswith(f"; the earlier outputs are in {moved}")
    assert {k.split("/", 2)[2]: v[0] for k, v in snapshot(out).items() if k.startswith("previous/")} == {
        k: v[0] for k, v in before.items()
    }
    np.testing.assert_array_equal(Embeddings.load(out).features,
                                  embed_input(models[3], open_input(str(scans)), 1, 16, False).features)  # fmt: skip
    # the folder copied elsewhere (new path, new modification times): the same input
    copy = tmp_path / "copy"
    shutil.copytree(scans, copy, copy_function=shutil.copy)
    assert run_embed(_config("embed", backbone=second, input=str(copy)), out).startswith("up to date")
    # a file rewritten in place, same size: another input
    data = bytearray((copy / "b.npy").read_bytes())
    data[-1] ^= 0xFF
    (copy / "b.npy").write_bytes(bytes(data))
    with pytest.raises(WorkdirMismatchError, match=r"identity\.input\.files_sha256: workdir has '[0-9a-f]{16}'"):
        run_embed(_config("embed", backbone=second, input=str(copy)), out)
    # a video added to the input: another input
    _videos(scans, ["c.npy"], seed=1)
    with pytest.raises(WorkdirMismatchError, match=r"identity\.input\.files: workdir has 2, config has 3"):
        run_embed(_config("embed", backbone=second, input=str(scans)), out)


def test_config_json_records_a_salted_hash_of_the_input_path_not_the_path(tmp_path, models):
    scans = _videos(tmp_path / PATIENT / "exam", ["P1/a.npy"])
    out = tmp_path / "out"
    run_embed(_config("embed", backbone=models[0], input=str(scans)), out)
    stored = json.loads((out / "config.json").read_text())
    expected = hashlib.sha256(f"{SALT}\0{scans.resolve()}".encode()).hexdigest()[:16]  # readers.salted_hash, by hand
    assert stored["input"] == f"salted-sha256:{expected}"
    for path in out.rglob("*"):
        if path.is_file() and path.name != "sources.csv":
            assert PATIENT not in path.read_text(errors="replace") and "P1" not in path.read_text(errors="replace")
    assert _rows(out / "sources.csv") == [{"source_id": readers.salted_hash("P1/a.npy", SALT), "path": "P1/a.npy"}]


def _label(path, classes):
    """What a labeller does: fills in the `class` column in a spreadsheet (here: Windows line endings kept)."""
    rows = _rows(path)
    for row, name in zip(rows, classes, strict=False):
        row["class"] = name
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["image_name", "class", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return path.read_bytes()


def test_select_again_is_up_to_date_a_larger_budget_adds_frames_and_labels_are_never_touched(tmp_path, models):
    scans = _videos(tmp_path / "scans", ["P1/a.npy", "P1/b.npy", "P2/c.npy"])
    out = tmp_path / "out"
    config = {"backbone": models[0], "input": str(scans), "strategy": "k-center", "min_gap": 1}
    run_select(_config("select", budget=4, **config), out)
    labels = out / "to_label" / "labels.csv"
    filled = _label(labels, ["4CH", "LVOT", "RVOT", "non-heart"])
    pngs = {p.name: p.read_bytes() for p in (out / "to_label").glob("*.png")}
    before = snapshot(out)
    assert run_select(_config("select", budget=4, **config), out).startswith("up to date")
    assert snapshot(out) == before
    # a smaller budget: refused, nothing changes
    with pytest.raises(UserError, match=r"config.budget = 3: .* holds 4 frames chosen before"):
        run_select(_config("select", budget=3, **config), out)
    assert snapshot(out) == before
    # a larger budget: 4 frames added
    message = run_select(_config("select", budget=8, **config), out)
    assert "chose 4 of 18 frames" in message and "besides the 4 chosen before (8 of budget 8" in message
    new = labels.read_bytes()
    assert new.startswith(filled) and new.count(b"\r\n") == 9  # the filled-in file, byte for byte, then 4 rows
    rows = _rows(labels)
    assert [r["class"] for r in rows] == ["4CH", "LVOT", "RVOT", "non-heart", "", "", "", ""]
    assert sorted(p.name for p in (out / "to_label").glob("*.png")) == sorted(r["image_name"] for r in rows)
    assert all((out / "to_label" / name).read_bytes() == data for name, data in pngs.items())
    # k-center greedy continued from the 4 frames is k-center greedy of 8 frames at once on the same embeddings
    embeddings = Embeddings.load(out)
    one_shot = k_center_greedy(embeddings.features, 8, groups=embeddings.source_ids,
                               positions=embeddings.frame_index, min_gap=1, seed=0)  # fmt: skip
    chosen = [int(r["row"]) for r in _rows(out / "selection.csv")]
    assert chosen == one_shot.tolist()
    assert [r["image_name"] for r in rows] == [
        f"{embeddings.source_ids[r]}_{int(embeddings.frame_index[r]):06d}.png" for r in chosen
    ]
    # a new video and a larger budget: 3 more frames, none chosen before
    labelled = _label(labels, ["4CH", "LVOT", "RVOT", "non-heart", "4CH"])
    _videos(scans, ["P2/d.npy"], seed=1)
    assert "chose 3 of 24 frames" in run_select(_config("select", budget=11, **config), out)
    assert labels.read_bytes().startswith(labelled)
    rows = _rows(labels)
    assert len(rows) == 11 and len({r["image_name"] for r in rows}) == 11  # no frame chosen twice
    assert [int(r["row"]) for r in _rows(out / "selection.csv")][:8] == chosen  # rows 0..17 are the same frames
    assert len(list((out / "to_label").glob("*.png"))) == 11


def test_select_of_another_config_is_refused_and_overwrite_moves_the_labelling_set_aside(tmp_path, models):
    scans = _videos(tmp_path / "scans", ["a.npy", "b.npy"])
    out = tmp_path / "out"
    run_select(_config("select", backbone=models[0], input=str(scans), budget=3), out)
    filled = _label(out / "to_label" / "labels.csv", ["4CH", "LVOT", "RVOT"])
    before = snapshot(out)
    with pytest.raises(WorkdirMismatchError, match=r"seed: workdir has 0, config has 1\n"):
        run_select(_config("select", backbone=models[0], input=str(scans), budget=3, seed=1), out)
    assert snapshot(out) == before
    run_select(_config("select", backbone=models[0], input=str(scans), budget=3, seed=1, overwrite=True), out)
    (moved,) = (out / "previous").iterdir()
    assert (moved / "to_label" / "labels.csv").read_bytes() == filled
    assert len(_rows(out / "to_label" / "labels.csv")) == 3
    assert all(r["class"] == "" for r in _rows(out / "to_label" / "labels.csv"))


def test_a_corrupt_video_is_skipped_and_listed_and_the_good_ones_are_written(tmp_path, models):
    scans = _videos(tmp_path / PATIENT, ["a.npy", "c.npy"])
    write_video(scans / "good.mp4", moving_frames(6, 32, 32))
    (scans / "broken.mp4").write_bytes((scans / "good.mp4").read_bytes()[:200])  # truncated
    broken_id = readers.salted_hash("broken.mp4", SALT)
    out = tmp_path / "embed"
    message = run_embed(_config("embed", backbone=models[0], input=str(scans)), out)
    assert message.endswith(f"; skipped 1 unreadable file(s), listed in {out / 'skipped.csv'}")
    (skipped,) = _rows(out / "skipped.csv")
    assert skipped["source_id"] == broken_id and skipped["reason"].startswith("unreadable or truncated video")
    assert "broken" not in skipped["reason"] and PATIENT not in skipped["reason"]
    embeddings = Embeddings.load(out)
    good = tmp_path / "good"
    for name in ("a.npy", "c.npy", "good.mp4"):
        (good / name).parent.mkdir(parents=True, exist_ok=True)
        (good / name).write_bytes((scans / name).read_bytes())
    alone = embed_input(models[2], open_input(str(good)), 1, 16, False)  # the good videos alone, same ids
    np.testing.assert_array_equal(embeddings.source_ids, alone.source_ids)
    np.testing.assert_allclose(embeddings.features, alone.features, rtol=1e-5, atol=1e-5)
    with pytest.raises(readers.DataError, match=r"^broken\.mp4: unreadable or truncated video"):
        run_embed(_config("embed", backbone=models[0], input=str(scans), on_error="raise"), tmp_path / "raise")
    message = run_select(_config("select", backbone=models[0], input=str(scans), budget=4, min_gap=1), tmp_path / "s")
    assert "chose 4 of 18 frames" in message and "skipped 1 unreadable" in message
    assert broken_id not in (tmp_path / "s" / "to_label" / "labels.csv").read_text()


def test_images_with_an_unreadable_one_are_skipped(tmp_path, models):
    from us_fixtures import write_png

    rng = np.random.default_rng(0)
    for i in range(5):
        write_png(tmp_path / "images" / f"{i}.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    (tmp_path / "images" / "2.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    run_embed(_config("embed", backbone=models[0], input=str(tmp_path / "images"), input_type="images",
                      batch_size=16), out)  # fmt: skip
    ids = [readers.salted_hash(f"{i}.png", SALT) for i in (0, 1, 3, 4)]
    assert list(Embeddings.load(out).source_ids) == ids
    assert [r["source_id"] for r in _rows(out / "skipped.csv")] == [readers.salted_hash("2.png", SALT)]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, models):
    head = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    return str(save_classifier_run(tmp_path_factory.mktemp("classify"), models[2].variables, head, tuple("abcde")))


def test_predict_into_a_used_workdir_is_refused_or_moves_the_old_reports_aside(tmp_path, classifier):
    first = _videos(tmp_path / "first", ["a.npy", "b.npy"])
    second = _videos(tmp_path / "second", ["c.npy", "d.npy"], seed=1)
    write_video(second / "good.mp4", moving_frames(6, 32, 32))
    (second / "broken.mp4").write_bytes((second / "good.mp4").read_bytes()[:200])
    out = tmp_path / "out"
    run_predict(_config("predict", classifier=classifier, input=str(first)), out)
    old = sorted(p.name for p in out.iterdir() if p.is_dir())
    with pytest.raises(WorkdirMismatchError, match=r"identity\.input\.files_sha256"):
        run_predict(_config("predict", classifier=classifier, input=str(second)), out)
    message = run_predict(_config("predict", classifier=classifier, input=str(second), overwrite=True), out)
    assert message.startswith("3 video(s)") and "skipped 1 unreadable" in message  # one corrupt video among 4
    (moved,) = (out / "previous").iterdir()
    assert sorted(p.name for p in moved.iterdir() if p.is_dir()) == old
    videos = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "previous")
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(v["source_id"] for v in summary["videos"]) == videos  # the summary lists what is there
    ids = {readers.salted_hash(n, SALT) for n in ("c.npy", "d.npy", "good.mp4")}
    assert set(videos) == ids


def test_a_tool_is_refused_while_another_process_holds_the_workdir(tmp_path, models):
    from test_workdir_lock import hold

    scans = _videos(tmp_path / "scans", ["a.npy"])
    holder = hold(tmp_path / "out")
    try:
        with pytest.raises(WorkdirBusyError, match=rf"in use by pid {holder.pid} "):
            run_select(_config("select", backbone=models[0], input=str(scans), budget=2), tmp_path / "out")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "out" / "config.json").exists()


def test_the_select_command_again_is_up_to_date_and_another_config_is_one_error(tmp_path, models):
    scans = _videos(tmp_path / "scans", ["a.npy", "b.npy"])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'select.py'}:tiny",
           f"--config.backbone={models[0]}", f"--config.input={scans}", "--config.budget=3", "--config.frame_skip=1",
           "--config.min_gap=1", "--workdir", str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    filled = _label(out / "to_label" / "labels.csv", ["4CH", "LVOT", "RVOT"])
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0 and again.stdout.startswith("up to date (same config, model and input files")
    other = subprocess.run([*cmd, "--config.strategy=random"], capture_output=True, text=True, timeout=300, env=env)
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert f"error: the output in {out} was made by another config; these keys differ" in other.stderr
    assert "  strategy: workdir has 'typical', config has 'random'" in other.stderr
    assert (out / "to_label" / "labels.csv").read_bytes() == filled
