"""The workdir lock: a second process is refused at once naming the holder, a dead holder's lock is taken over, a
lock of another host only once it is stale, nested calls of one process share it; two pretraining runs started on
one workdir: the second is refused and the first finishes as if alone."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO

from fetalssl_jax.runtime import workdir_lock
from fetalssl_jax.runtime.workdir_lock import WorkdirBusyError, exclusive_workdir, lock_path

HOLD = """
import sys, time
from fetalssl_jax.runtime.workdir_lock import workdir_lock
with workdir_lock(sys.argv[1], "holder", int(sys.argv[2])):
    print("locked", flush=True)
    time.sleep(600)
"""
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def hold(workdir, process_index=0) -> subprocess.Popen:
    """A process that holds the lock of `workdir` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(process_index)], env=ENV,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def refused(workdir, pattern: str) -> None:
    with pytest.raises(WorkdirBusyError, match=pattern), workdir_lock.workdir_lock(workdir):
        pass


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    holder = hold(tmp_path)
    try:
        since = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        host = socket.gethostname()
        refused(tmp_path, rf"^workdir {re.escape(str(tmp_path))} is in use by pid {holder.pid} on host {host} since "
                          rf"{since} \(holder\); wait")  # fmt: skip
        with workdir_lock.workdir_lock(tmp_path, process_index=1):  # process 1 of a run locks its own file
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    record = json.loads(lock_path(tmp_path).read_text())
    assert record["pid"] == holder.pid  # kill -9 left the record; the kernel freed the flock
    with caplog.at_level(logging.INFO, logger="fetalssl_jax"), workdir_lock.workdir_lock(tmp_path, "second") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"took over the lock of pid {holder.pid}" in caplog.text
    assert lock_path(tmp_path).read_text() == ""  # released: no holder


def write_record(path, **record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"since": "2025-01-01 00:00:00 UTC", "task": "train", **record}))


def test_a_record_without_a_flock_counts_only_for_a_live_process_or_a_recent_one_of_another_host(tmp_path):
    path = lock_path(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        time.sleep(0.2)
        start = workdir_lock._process_start(sleeper.pid)
        assert start  # Linux: /proc/<pid>/stat
        write_record(path, pid=sleeper.pid, host=socket.gethostname(), start=start)
        refused(tmp_path, rf"in use by pid {sleeper.pid} .*its lock file was replaced")
        write_record(path, pid=sleeper.pid, host=socket.gethostname(), start=str(int(start) - 1))  # a reused pid
        with workdir_lock.workdir_lock(tmp_path):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    write_record(path, pid=dead_pid(), host=socket.gethostname(), start="1")
    with workdir_lock.workdir_lock(tmp_path):
        pass
    write_record(path, pid=1234, host="elsewhere", start="1")
    refused(tmp_path, rf"pid 1234 on host elsewhere .*last renewed \d+ s ago.* run again 10 min after .* or delete "
                      rf"{re.escape(str(path))}")  # fmt: skip
    old = time.time() - workdir_lock.STALE_AFTER_S - 1
    os.utime(path, (old, old))
    with workdir_lock.workdir_lock(tmp_path):
        pass


def test_nested_calls_share_the_lock_and_an_empty_workdir_the_lock_made_is_removed(tmp_path):
    calls = []

    @exclusive_workdir
    def task(config, workdir, fail=False):
        calls.append(json.loads(lock_path(workdir).read_text())["task"])
        if fail:
            raise ValueError("refused before anything was written")
        return nested(config, workdir)

    @exclusive_workdir
    def nested(config, workdir):
        (workdir / "out.txt").write_text("made")
        return "done"

    with pytest.raises(ValueError):
        task(None, tmp_path / "new", fail=True)
    assert not (tmp_path / "new").exists()
    assert task(None, workdir=tmp_path / "run") == "done"
    assert calls == ["task", "task"]  # the outer call's record
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "out.txt"]
    holder = hold(tmp_path / "run")  # released: another process takes it
    holder.kill()
    holder.wait()


def test_two_pretraining_runs_on_one_workdir_the_second_is_refused_and_the_first_runs_alone(tmp_path):
    from crash_check import cli_command, cli_env, logged_steps

    from fetalssl_jax.train.monitor import read_metrics

    workdir, cache = tmp_path / "run", tmp_path / "xla"
    command = cli_command(workdir, cache) + ["--config.num_steps=100000"]  # both: the same command
    first = subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline and logged_steps(workdir) < 3:
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1]
        second = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"error: workdir {workdir} is in use by pid {first.pid} on host {socket.gethostname()} since "
            f"{json.loads((workdir / '.lock').read_text())['since']} (train); wait for it to end or stop it (two runs "
            "in one workdir would mix their outputs)"
        ]
        time.sleep(1.0)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_metrics(workdir)]
    assert steps == list(range(len(steps)))  # one run's steps, each once
    assert f"preempted at step {len(steps)}" in out
    entries = os.listdir(workdir / "checkpoints")
    assert max(int(e) for e in entries) == len(steps) and all(e.isdigit() for e in entries)
