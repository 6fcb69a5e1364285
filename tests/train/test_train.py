"""End-to-end pretraining on the embedded data: outputs, resume, pre-emption, mismatches, non-finite loss."""

import json
import logging
import os
import re
import signal
import subprocess
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import tiny_config

from fetalssl_jax.errors import UserError
from fetalssl_jax.train.checkpoint import load_backbone
from fetalssl_jax.train.fingerprint import WorkdirMismatchError
from fetalssl_jax.train.health import NonFiniteLossError
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("barlow_tiny")
    result = train(tiny_config(), workdir)
    return result, workdir


def test_run_writes_everything_a_user_needs(finished_run):
    result, workdir = finished_run
    assert result.status == "finished" and result.step == 12  # 96 frames / batch 16 = 6 steps x 2 epochs
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == list(range(12))
    assert all(np.isfinite(r["loss"]) for r in records)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 12
    assert any(p.name.startswith("events.out.tfevents") for p in (workdir / "tensorboard").iterdir())
    evaluation = json.loads((workdir / "eval.json").read_text())
    rows = {"barlow_twins (step 12)", "random init (torchvision)", "untrained SSL start"}
    assert set(evaluation["knn_macro_f1"]) == rows
    assert set(evaluation["few_label_macro_f1"]["scores"]) == rows
    for row in evaluation["few_label_macro_f1"]["scores"].values():
        assert set(row) == {"1/class", "2/class", "all"}
        for score in row.values():
            assert 0.0 <= score["low"] <= score["mean"] <= score["high"] <= 1.0
    assert set(evaluation["few_label_macro_f1"]["differences"]) == {"random init (torchvision)", "untrained SSL start"}
    assert (workdir / "eval.md").read_text().startswith("| init | kNN (all labels) |")
    # the training-health record: relative weight change of every stage, logged every log step
    assert {"weight_change/stem", "weight_change/layer4", "weight_change/all"} <= set(records[0])
    variables, description = load_backbone(workdir / "backbone")
    assert description["step"] == 12
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 8)
    assert description["identity"]["arch"] == "resnet10"


def test_rerun_of_a_finished_workdir_does_not_train_again(finished_run):
    _, workdir = finished_run
    before = (workdir / "metrics.jsonl").read_text()
    result = train(tiny_config(), workdir)
    assert result.status == "finished" and result.step == 12
    assert (workdir / "metrics.jsonl").read_text() == before


def test_interrupted_and_resumed_run_has_the_same_losses(tmp_path):
    config = tiny_config(num_steps=8, checkpoint_every_steps=100)
    straight = tmp_path / "straight"
    train(config, straight)
    resumed = tmp_path / "resumed"
    first = train(config, resumed, stop_at_step=3)
    assert first.status == "preempted" and first.step == 3
    assert len(losses(resumed)) == 3
    second = train(config, resumed)
    assert second.status == "finished" and second.step == 8
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-6)


def test_workdir_of_another_architecture_is_refused(finished_run):
    _, workdir = finished_run
    with pytest.raises(WorkdirMismatchError, match="width: checkpoint has 8, config has 16"):
        train(tiny_config(**{"model.width": 16}), workdir)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(**{"optim.lr_weights": 1e25, "optim.lr_biases": 1e25, "checkpoint_every_steps": 1})
    with pytest.raises(NonFiniteLossError, match=r"at step (\d+).*last good checkpoint \(step (\d+)\)") as info:
        train(config, tmp_path)
    found = re.search(r"at step (\d+).*last good checkpoint \(step (\d+)\)", str(info.value))
    bad_step, kept = int(found.group(1)), int(found.group(2))
    assert kept == bad_step  # the state before the bad step
    from fetalssl_jax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path, {})
    assert checkpointer.latest_step() == kept
    restored = checkpointer.manager.restore(kept, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree.leaves(restored.state)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves if np.issubdtype(np.asarray(x).dtype, np.floating))


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, repo, python):
    workdir = tmp_path / "run"
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{repo}/configs/barlow.py:tiny",
           "--workdir", str(workdir), "--config.num_steps=100000",
           "--config.checkpoint_every_steps=100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "preempted at step" in out
    steps = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert len(steps) == 1 and steps[0] >= 2
    assert len(read_metrics(workdir)) == steps[0]  # every completed step logged, nothing after the checkpoint


def test_unknown_config_key_is_named(repo, python):
    cmd = [
        python,
        "-m",
        "fetalssl_jax.main",
        "--config",
        f"{repo}/configs/barlow.py:tiny",
        "--config.optim.lrr=1",
    ]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120, env=os.environ)
    assert proc.returncode == 2
    assert "unknown config key 'optim.lrr'" in proc.stderr and "lr_weights" in proc.stderr


def test_unknown_preset_is_one_line_naming_the_presets(repo, python):
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{repo}/configs/barlow.py:huge"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: unknown preset 'huge' for 'barlow_twins'; choose one of ['default', 'paper', 'tiny', 'vit']"
    ]


@pytest.mark.parametrize("argument", ["configs/barlowtwins.py", "--config=configs/nope.py:tiny"])
def test_a_missing_config_file_is_one_line_naming_the_configs(repo, python, argument):
    # ml_collections reports a missing file as two chained tracebacks (exit 1)
    args = [argument] if argument.startswith("--") else ["--config", argument]
    proc = subprocess.run([python, "-m", "fetalssl_jax.main", *args], cwd=repo, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    missing = argument.removeprefix("--config=").split(":")[0]
    assert lines[0].startswith(f"error: --config {argument.removeprefix('--config=')}: no such file {missing!r}")
    assert "barlow.py" in lines[0] and "classify.py" in lines[0]


def test_a_backbone_that_barely_moves_is_reported(tmp_path, caplog):
    # tiny keeps the papers' LARS trust coefficient (0.001): in 4 steps the convolutions barely move
    with caplog.at_level(logging.WARNING, logger="fetalssl_jax"):
        train(tiny_config(num_steps=4, **{"eval.compare_random_init": False}), tmp_path)
    warnings = [r.getMessage() for r in caplog.records if "barely training" in r.getMessage()]
    assert len(warnings) == 1 and "after 4 steps" in warnings[0] and "layer4" in warnings[0]
    change = [r["weight_change/all"] for r in read_metrics(tmp_path) if "weight_change/all" in r]
    assert change[0] == 0.0 or change[0] < 1e-3  # step 0 is logged right after the first update
    assert all(0.0 <= c < 0.05 for c in change)


# ---- resume only what the same config made ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"optim.lr_weights": 0.5}, "optim.lr_weights: checkpoint has 0.2, config has 0.5"),
        ({"batch_size": 8}, "batch_size: checkpoint has 16, config has 8"),
        ({"seed": 1}, "seed: checkpoint has 0, config has 1"),
        ({"augment.view1.crop_scale": (0.5, 1.0)}, "augment.view1.crop_scale: checkpoint has [0.08, 1.0], config has "
                                                   "[0.5, 1.0]"),
    ],
)  # fmt: skip
def test_a_changed_trajectory_key_is_refused_naming_both_values(finished_run, overrides, expected):
    _, workdir = finished_run
    outputs = [p for p in workdir.rglob("*") if p.is_file() and not p.name.startswith(".lock")]  # all but the lock
    before = {p: p.stat().st_mtime_ns for p in outputs}
    with pytest.raises(WorkdirMismatchError) as info:
        train(tiny_config(**overrides), workdir)
    assert f"\n  {expected}\n" in str(info.value)
    assert len(str(info.value).splitlines()) == 3  # what happened, the one differing key, what to do
    assert {p: p.stat().st_mtime_ns for p in outputs} == before  # nothing rewritten


def test_cosmetic_keys_never_block_a_resume(tmp_path):
    quiet = {"num_steps": 6, "checkpoint_every_steps": 100, "eval.compare_random_init": False}
    first = train(tiny_config(**quiet), tmp_path, stop_at_step=3)
    assert first.status == "preempted" and first.step == 3
    cosmetic = {"progress_bar": True, "log_every_steps": 2, "checkpoint_every_steps": 5, "keep_checkpoints": 1,
                "data.prefetch": 1, "eval.draws": 2, "eval.knn_k": 5}  # fmt: skip
    second = train(tiny_config(**{**quiet, **cosmetic}), tmp_path)
    assert second.status == "finished" and second.step == 6
    # recorded: every step of the first run (log_every_steps 1), then log step 4 (also a checkpoint) and the last
    assert [r["step"] for r in read_metrics(tmp_path, kind="train")] == [0, 1, 2, 4, 5]
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["log_every_steps"] == 2 and len(stored["fingerprint_sha256"]) == 64


def test_a_longer_run_is_refused_unless_extending_is_allowed(tmp_path):
    short = {"checkpoint_every_steps": 100, "eval.compare_random_init": False}
    train(tiny_config(num_steps=4, **short), tmp_path)
    first_losses = losses(tmp_path)
    assert len(first_losses) == 4
    with pytest.raises(WorkdirMismatchError, match="allow_extend=True") as info:
        train(tiny_config(num_steps=8, **short), tmp_path)
    assert "\n  num_steps: checkpoint has 4, config has 8\n" in str(info.value)
    extended = train(tiny_config(num_steps=8, allow_extend=True, **short), tmp_path)
    assert extended.status == "finished" and extended.step == 8
    assert len(losses(tmp_path)) == 8 and losses(tmp_path)[:4] == first_losses  # the first steps are kept as they were
    # the checkpoint now carries the extended length: the same command resumes, a shorter one cannot undo steps
    assert train(tiny_config(num_steps=8, **short), tmp_path).step == 8
    with pytest.raises(WorkdirMismatchError, match="checkpoint at step 8, past this config's 6 steps"):
        train(tiny_config(num_steps=6, allow_extend=True, **short), tmp_path)


def test_a_checkpoint_without_a_fingerprint_is_refused(tmp_path):
    from fetalssl_jax.train.checkpoint import Checkpointer
    from fetalssl_jax.train.state import TrainState

    state = TrainState(step=np.int32(5), params={"w": np.ones(3, np.float32)}, model_state={}, opt_state={},
                       extra={}, rng=jax.random.key_data(jax.random.key(0)))  # fmt: skip
    old = Checkpointer(tmp_path, {})
    old.save(state)
    old.close()
    for meta_file in (tmp_path / "checkpoints").rglob("*"):  # the meta of a release before fingerprints
        if meta_file.is_file() and b'"fingerprint"' in meta_file.read_bytes():
            meta_file.write_text(json.dumps({"step": 5}))
    with pytest.raises(UserError, match="checkpoint of an earlier fetalssl_jax release; use a new workdir"):
        Checkpointer(tmp_path, {"seed": 0}).check_resumable()


def test_check_finite_stops_on_nan_or_inf_naming_the_step_and_the_kept_checkpoint():
    from fetalssl_jax.train.health import check_finite

    check_finite(3, {"loss": 1e30, "grad_norm": 0.0}, 2, "ckpt")  # large but finite: no error
    with pytest.raises(
        NonFiniteLossError, match=r"loss nan / gradient norm 1.0 at step 3: .*\(step 2\) is kept in ckpt"
    ):
        check_finite(3, {"loss": float("nan"), "grad_norm": 1.0}, 2, "ckpt")
    with pytest.raises(NonFiniteLossError, match="gradient norm inf at step 0: training stopped; no checkpoint in"):
        check_finite(0, {"loss": 1.0, "grad_norm": float("inf")}, None, "ckpt")
