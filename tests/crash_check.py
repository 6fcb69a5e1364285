"""Kill -9 and Ctrl-C trials of the real command line: used by tests/test_crash_safety.py (a few trials) and
benchmarks/crash_safety.py (many).

A trial starts `python -m fetalssl_jax.main` on the tiny Barlow Twins preset in a fresh workdir and kills it with
SIGKILL either at a random point of the steps (after a random number of logged steps, a random delay, and outside a
checkpoint write) or while orbax writes a checkpoint (as soon as the temporary directory of a checkpoint of a
randomly chosen step appears).
The caller then restarts the run in its own process and compares the losses with an uninterrupted run. A Ctrl-C
trial presses Ctrl-C (SIGINT) while a checkpoint is written, once (the run finishes the write and stops) or twice
(the second as soon as the run acknowledged the first: it aborts at once).
"""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

# 12 steps of batch 16 (6 videos x 16 frames, 2 epochs), a checkpoint every 2 steps: 6 checkpoint writes per run.
CHECKPOINT_EVERY = 2
OVERRIDES = {"checkpoint_every_steps": CHECKPOINT_EVERY, "keep_checkpoints": 2}


def cli_command(workdir: pathlib.Path, cache_dir: pathlib.Path) -> list[str]:
    """The command line of one run, `OVERRIDES` and the shared compilation cache applied."""
    flags = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
    return [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'barlow.py'}:tiny",
            "--workdir", str(workdir), f"--config.compilation_cache_dir={cache_dir}", *flags]  # fmt: skip


def cli_env() -> dict[str, str]:
    """The environment of a child run: this checkout first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def logged_steps(workdir: pathlib.Path) -> int:
    path = workdir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def checkpoint_entries(workdir: pathlib.Path) -> list[str]:
    directory = workdir / "checkpoints"
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def writing_step(workdir: pathlib.Path) -> int | None:
    """The step of a checkpoint orbax is writing now (its temporary directory exists), or None."""
    for name in checkpoint_entries(workdir):
        if ".orbax-checkpoint-tmp" in name:
            return int(name.split(".", 1)[0])
    return None


def kill_trial(workdir: pathlib.Path, cache_dir: pathlib.Path, mode: str, rng: random.Random,
               total_steps: int = 12, timeout: float = 300.0) -> dict:  # fmt: skip
    """Runs the CLI in `workdir` and SIGKILLs it during a step ('step') or a checkpoint write ('checkpoint').

    Returns what happened: the mode, the logged steps and the checkpoint directory's entries at the kill, and
    `mid_write` (a temporary checkpoint directory was left behind: the kill landed inside a write)."""
    process = subprocess.Popen(cli_command(workdir, cache_dir), cwd=REPO, env=cli_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    target_steps = rng.randint(1, total_steps - 2)
    target_checkpoint = CHECKPOINT_EVERY * rng.randint(1, total_steps // CHECKPOINT_EVERY - 1)
    delay = rng.uniform(0.0, 0.05)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if mode == "step" and logged_steps(workdir) >= target_steps:
                time.sleep(delay)
                while writing_step(workdir) is not None:  # between checkpoint writes: inside the steps
                    time.sleep(0.0005)
                break
            if mode == "checkpoint" and (writing_step(workdir) or 0) >= target_checkpoint:
                break
            time.sleep(0.0005)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
    if finished:
        raise RuntimeError(f"the run ended before the kill ({mode}, exit {process.returncode}):\n{stderr.decode()}")
    return {
        "mode": mode,
        "logged_steps": logged_steps(workdir),
        "entries": checkpoint_entries(workdir),
        "mid_write": writing_step(workdir) is not None,
    }


def interrupt_trial(workdir: pathlib.Path, cache_dir: pathlib.Path, presses: int = 1, at_checkpoint: int = 4,
                    timeout: float = 300.0) -> dict:  # fmt: skip
    """Runs the CLI in `workdir` and presses Ctrl-C as soon as the temporary directory of the checkpoint
    of step `at_checkpoint` (or later) appears; a second press once the run printed that it stops. Returns the exit
    status, stdout, stderr and the checkpoint directory's entries at the end."""
    process = subprocess.Popen(cli_command(workdir, cache_dir), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and (writing_step(workdir) or 0) < at_checkpoint and time.monotonic() < deadline:
            time.sleep(0.0005)
        process.send_signal(signal.SIGINT)
        if presses == 2:
            while process.poll() is None and not any(line.startswith("Ctrl-C") for line in stderr):
                time.sleep(0.0005)
            process.send_signal(signal.SIGINT)
        stdout = process.stdout.read()
        process.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    return {"returncode": process.returncode, "stdout": stdout, "stderr": "".join(stderr),
            "entries": checkpoint_entries(workdir)}  # fmt: skip
