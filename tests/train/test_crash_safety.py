"""Crash safety: kill -9 during a step or a checkpoint write, then restart (benchmarks/crash_safety.py runs more
trials); a workdir that cannot take a checkpoint is a clear error that keeps the last good one."""

import random
import subprocess

import pytest
from conftest import tiny_config
from crash_check import OVERRIDES, REPO, checkpoint_entries, cli_command, cli_env, kill_trial

from fetalssl_jax.train.checkpoint import Checkpointer
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics

TOTAL_STEPS = 12  # the tiny preset: 6 steps per epoch, 2 epochs


def losses(workdir):
    return [r["loss"] for r in read_metrics(workdir)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cache_dir):
    workdir = tmp_path_factory.mktemp("reference")
    config = tiny_config(**OVERRIDES, compilation_cache_dir=str(cache_dir))
    assert train(config, workdir, stop_at_step=TOTAL_STEPS).step == TOTAL_STEPS  # no evaluation: losses only
    return config, losses(workdir)


def complete_steps(workdir):
    return sorted(int(name) for name in checkpoint_entries(workdir) if name.isdigit())


@pytest.mark.parametrize("mode,seed", [("step", 0), ("checkpoint", 1)])
def test_kill_9_then_restart_resumes_the_newest_complete_checkpoint_with_the_same_losses(
    tmp_path, cache_dir, uninterrupted, mode, seed
):
    config, expected = uninterrupted
    trial = kill_trial(tmp_path, cache_dir, mode, random.Random(seed), TOTAL_STEPS)
    complete = complete_steps(tmp_path)
    newest = Checkpointer(tmp_path, {}).latest_step()
    assert newest == (complete[-1] if complete else None)  # a half-written checkpoint is never the newest
    if mode == "checkpoint" and trial["mid_write"]:
        writing = next(int(n.split(".")[0]) for n in trial["entries"] if "tmp" in n)
        assert newest == (writing - OVERRIDES["checkpoint_every_steps"] or None)  # the previous one, if any, is intact
    result = train(config, tmp_path, stop_at_step=TOTAL_STEPS)
    assert result.step == TOTAL_STEPS
    assert losses(tmp_path) == expected  # exactly: same batches, same state, same compiled program


# In the child, no file may grow past 16 KiB (`ulimit -f`, with SIGXFSZ ignored: writes fail with EFBIG as they would
# with ENOSPC). Metrics and TensorBoard lines fit; a checkpoint does not.
FULL_DISK = ["bash", "-c", 'trap "" XFSZ; ulimit -f 16; exec "$@"', "full_disk"]


def test_a_full_disk_is_a_clear_error_that_keeps_the_last_good_checkpoint(tmp_path, cache_dir, uninterrupted):
    config, expected = uninterrupted
    train(config, tmp_path, stop_at_step=4)  # checkpoints at steps 2 and 4
    process = subprocess.run(FULL_DISK + cli_command(tmp_path, cache_dir), cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert process.returncode == 1, process.stderr
    error = process.stderr.split("error: ", 1)[1]
    assert error.startswith(f"could not write the checkpoint of step 6 in {tmp_path / 'checkpoints'}")
    assert "File too large" in error and "the last good checkpoint (step 4) is kept" in error
    assert complete_steps(tmp_path) == [2, 4]
    train(config, tmp_path, stop_at_step=TOTAL_STEPS)  # space again: it resumes at step 4
    assert losses(tmp_path) == expected


def test_an_unwritable_workdir_is_a_clear_error(tmp_path, cache_dir):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a workdir under a file cannot be made, even by root
    process = subprocess.run(cli_command(blocker / "run", cache_dir), cwd=REPO, env=cli_env(), capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [f"error: cannot make the workdir {blocker / 'run'}: Not a directory"]
