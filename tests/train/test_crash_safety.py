"""Crash safety: kill -9 during a step or a checkpoint write, then restart (benchmarks/crash_safety.py runs more
trials); Ctrl-C during a checkpoint write finishes it and stops cleanly, a second Ctrl-C aborts in one line; a
stale temporary checkpoint is removed on resume; a workdir that cannot take a checkpoint is a clear error that
keeps the last good one."""

import asyncio
import os
import random
import shutil
import signal
import subprocess

import pytest
from conftest import tiny_config
from crash_check import OVERRIDES, REPO, checkpoint_entries, cli_command, cli_env, interrupt_trial, kill_trial

from fetalssl_jax.train import loop
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


def test_ctrl_c_during_a_checkpoint_write_finishes_it_and_stops_in_one_line(tmp_path, cache_dir, uninterrupted):
    config, expected = uninterrupted
    trial = interrupt_trial(tmp_path, cache_dir)
    assert trial["returncode"] == 0, trial["stderr"]
    assert "Traceback" not in trial["stderr"]
    assert trial["stderr"].count("Ctrl-C: stopping after this step and its checkpoint") == 1
    stopped = len(losses(tmp_path))
    assert f"preempted at step {stopped}" in trial["stdout"] and stopped >= 4
    assert complete_steps(tmp_path)[-1] == stopped  # every logged step is in the last checkpoint
    assert not [e for e in trial["entries"] if "tmp" in e]  # the write it interrupted was finished
    train(config, tmp_path, stop_at_step=TOTAL_STEPS)
    assert losses(tmp_path) == expected


def test_a_second_ctrl_c_aborts_in_one_line_and_the_next_run_resumes(tmp_path, cache_dir, uninterrupted):
    config, expected = uninterrupted
    trial = interrupt_trial(tmp_path, cache_dir, presses=2)
    assert trial["returncode"] == 130, trial["stderr"]
    assert "Traceback" not in trial["stderr"]
    assert trial["stderr"].strip().splitlines()[-1] == (
        "error: interrupted (Ctrl-C); what was completely written is kept: run again to resume"
    )
    train(config, tmp_path, stop_at_step=TOTAL_STEPS)
    assert losses(tmp_path) == expected
    assert not [e for e in checkpoint_entries(tmp_path) if "tmp" in e]


def test_a_stale_temporary_checkpoint_is_removed_when_the_run_resumes(tmp_path, uninterrupted):
    config, expected = uninterrupted
    train(config, tmp_path, stop_at_step=4)
    # what a run killed while writing step 7 leaves (a step this cadence never writes again): a partial copy
    shutil.copytree(tmp_path / "checkpoints" / "4", tmp_path / "checkpoints" / "7.orbax-checkpoint-tmp")
    assert Checkpointer(tmp_path, {}).latest_step() == 4  # a reader (no lock) leaves it: it may be a run's write
    assert "7.orbax-checkpoint-tmp" in checkpoint_entries(tmp_path)
    train(config, tmp_path, stop_at_step=TOTAL_STEPS)
    assert losses(tmp_path) == expected
    assert checkpoint_entries(tmp_path) == ["10", "12"]


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


def test_a_second_ctrl_c_inside_asyncio_run_raises_keyboard_interrupt():
    """orbax writes a checkpoint inside asyncio.run, which replaces Python's default SIGINT handler with one that
    cancels its task (a CancelledError, not a Ctrl-C, reaches main); the handler left by a first Ctrl-C must stay."""
    caught = []

    async def second_press():
        caught.append(signal.getsignal(signal.SIGINT))
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.sleep(5)

    try:
        with loop.preemption_signal() as preempted:
            os.kill(os.getpid(), signal.SIGINT)  # the first press: stop after this step
            assert preempted(0)
            after_first = signal.getsignal(signal.SIGINT)
            with pytest.raises(KeyboardInterrupt):
                asyncio.run(second_press())
    finally:
        loop._SIGNALLED.clear()  # this process runs other tests
    assert caught == [after_first]
