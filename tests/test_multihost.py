"""The real command line on 2 JAX processes (localhost, CPU, gloo): pre-emption (SIGTERM, or Ctrl-C) of one stops both
at the same step with one checkpoint, a second launch resumes, the losses equal a 1-process run of the same global
batch, and the export and the evaluation are written once. Classification refuses several processes with a clear
error."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import REPO, free_port

from fetalssl_jax.train.monitor import read_metrics

STEPS = 24


def command(workdir, data_dir, cache_dir, *extra):
    data = {"data.source": "tfds", "data.name": "fetal_us_video/tiny_pairs", "data.data_dir": data_dir,
            "data.max_gap": 2, "num_steps": STEPS, "checkpoint_every_steps": 1000, "compilation_cache_dir": cache_dir,
            "eval.dataset": "fetal_cardiac_planes/tiny", "eval.data_dir": data_dir, "eval.shots": "(1,)",
            "eval.draws": 1, "eval.compare_random_init": False}  # fmt: skip
    return [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'barlow.py'}:tiny",
            "--workdir", str(workdir), *[f"--config.{k}={v}" for k, v in data.items()], *extra]  # fmt: skip


def environment(devices: int = 1) -> dict[str, str]:
    flags = "--xla_backend_optimization_level=0"
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    path = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONPATH=path)


def launch(cmd, processes: int = 2) -> list[subprocess.Popen]:
    port = free_port()
    return [
        subprocess.Popen(
            cmd + [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}", f"--process_id={i}"],
            cwd=REPO,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(processes)
    ]


def finish(procs, timeout=420) -> list[tuple[int, str, str]]:
    try:
        outputs = [p.communicate(timeout=timeout) for p in procs]  # a hung collective fails the test, not CI
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def test_two_processes_of_the_cli_preempt_resume_and_train_like_one(tmp_path, data_dir):
    cache = str(tmp_path / "xla")
    one = tmp_path / "one"  # 1 process with 2 devices: the same mesh and global batch as 2 processes of 1 device
    single = subprocess.run(command(one, data_dir, cache), cwd=REPO, env=environment(devices=2),
                            capture_output=True, text=True, timeout=420)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    two = tmp_path / "two"
    procs = launch(command(two, data_dir, cache))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if (two / "metrics.jsonl").exists() and len(read_metrics(two)) >= 3:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)  # the pre-emption notice reaches one process only
    first = finish(procs)
    for code, _, err in first:
        assert code == 0, err[-3000:]
    stopped = [int(err.split("stopped at step ")[1].split(";")[0]) for _, _, err in first]
    assert stopped[0] == stopped[1] < STEPS
    assert "preempted at step" in first[0][1] and "preempted at step" not in first[1][1]  # process 0 reports
    assert sorted(os.listdir(two / "checkpoints")) == [str(stopped[0])]  # one consistent checkpoint
    assert len(read_metrics(two)) == stopped[0]

    second = finish(launch(command(two, data_dir, cache)))
    for code, _, err in second:
        assert code == 0, err[-3000:]
    assert "finished at step 24" in second[0][1] and "finished" not in second[1][1]
    assert second[0][1].count("Frozen-backbone evaluation") == 1 and "Frozen" not in second[1][1]  # printed once
    assert [r["step"] for r in read_metrics(two)] == list(range(STEPS))
    np.testing.assert_allclose([r["loss"] for r in read_metrics(two)], [r["loss"] for r in read_metrics(one)],
                               rtol=1e-5)  # fmt: skip
    description = json.loads((two / "backbone" / "backbone.json").read_text())
    assert description["step"] == STEPS
    assert json.loads((two / "eval.json").read_text()).keys() == json.loads((one / "eval.json").read_text()).keys()


def test_ctrl_c_on_one_process_stops_both_at_one_step_with_one_checkpoint(tmp_path, data_dir):
    procs = launch(command(tmp_path, data_dir, str(tmp_path / "xla")))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        if (tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 3:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGINT)  # passed on to JAX's pre-emption service as a SIGTERM
    for code, _, err in finish(procs):
        assert code == 0 and "Traceback" not in err, err[-3000:]
    stopped = len(read_metrics(tmp_path))
    assert stopped < STEPS and sorted(os.listdir(tmp_path / "checkpoints")) == [str(stopped)]


def test_classification_on_several_processes_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'classify.py'}:tiny",
           "--workdir", str(tmp_path)]  # fmt: skip
    for code, _, err in finish(launch(cmd)):
        assert code == 2
        assert "config.task = 'classify' runs in one process" in err
    assert not any(tmp_path.iterdir())


def test_one_process_unless_a_launch_says_otherwise(monkeypatch):
    from fetalssl_jax.runtime import distributed

    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_STEP_NUM_TASKS",
                 "OMPI_COMM_WORLD_SIZE"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")  # srun with one task: one process
    assert distributed.initialize("auto") is False
    assert distributed.initialize("off") is False
    with pytest.raises(ValueError, match=r"--distributed=off contradicts"):
        distributed.initialize("off", num_processes=2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match=r"\$JAX_NUM_PROCESSES='two' is not an integer"):
        distributed.initialize("auto")
    with pytest.raises(ValueError, match=r"--distributed='maybe'; choose one of \('auto', 'on', 'off'\)"):
        distributed.initialize("maybe")


def test_an_incomplete_multi_process_launch_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'barlow.py'}:tiny",
           "--workdir", str(tmp_path / "run"), f"--coordinator_address=localhost:{free_port()}"]  # fmt: skip
    process = subprocess.run(cmd, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert process.returncode == 2
    assert "error: could not start JAX on several processes: Number of processes must be defined" in process.stderr
    assert "--num_processes" in process.stderr and not (tmp_path / "run").exists()
