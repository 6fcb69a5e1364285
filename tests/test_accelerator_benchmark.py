"""benchmarks/accelerator.py: its --smoke run end to end in a subprocess (every section's fields, finite positive
numbers that agree with each other), the peak table's matching, and a failing section recorded, not fatal."""

import json
import math
import subprocess
import sys

import jax
import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import accelerator  # noqa: E402

from fetalssl_jax.methods import registered_methods  # noqa: E402

PEAK = 0.5  # TFLOP/s given on the command line: the CPU has no entry in the table


def _positive(record: dict, *keys: str) -> None:
    for key in keys:
        value = record[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerator") / "result.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "accelerator.py"), "--smoke", "--out", str(out),
           "--peak-tflops", str(PEAK)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_smoke_measures_every_step_case(smoke):
    result, stdout = smoke
    env = result["environment"]
    assert env["jax"] == jax.__version__ and env["backend"] == "cpu" and env["peak_bf16_tflops"] == PEAK
    assert result["smoke"] is True
    sections = result["sections"]
    for name, views in (("barlow_twins_resnet50", 2), ("classifier_resnet50_finetune", 1)):
        r = sections[name]
        assert "error" not in r, r
        _positive(r, "compile_s", "step_s", "views_per_s", "images_per_s", "step_tflop", "achieved_tflops", "mfu",
                  "compiled_memory_bytes", "timed_steps")  # fmt: skip
        assert all(math.isfinite(t) and t > 0 for t in r["window_step_s"]) and len(r["window_step_s"]) == 2
        assert r["step_s"] == pytest.approx(sorted(r["window_step_s"])[0] / 2 + sorted(r["window_step_s"])[1] / 2)
        assert r["views_per_step"] == views * r["batch_size"] and r["image_size"] == 32
        assert r["views_per_s"] == pytest.approx(r["views_per_step"] / r["step_s"])
        assert r["mfu"] == pytest.approx(r["step_tflop"] / r["step_s"] / PEAK)
        assert r["peak_device_bytes"] is None  # the CPU backend keeps no allocator statistics
        assert math.isfinite(r["loss"])
        assert f"| {name} |" in stdout
    dino = sections["dino_vit_s16"]
    if "dino" in registered_methods():
        _positive(dino, "views_per_s", "step_s")
    else:
        assert dino["status"] == "not available" and "'dino' is not in the registry" in dino["reason"]
        assert "| dino_vit_s16 | - |" in stdout and "not available" in stdout


def test_smoke_measures_the_pipeline_and_the_input_wait(smoke):
    result, stdout = smoke
    sections = result["sections"]
    all_cores, one_core, fed = sections["pipeline_all_cores"], sections["pipeline_one_core"], sections["end_to_end"]
    for r in (all_cores, one_core):
        assert "error" not in r, r
        _positive(r, "records_per_s", "frames_per_s", "batch_ms", "records")
        assert r["image_size"] == 32 and r["batch_shape"][2:] == [32, 32, 1]
        assert r["records_per_s"] == pytest.approx(r["batch_shape"][0] * 1000 / r["batch_ms"])
    assert one_core["usable_cores"] == 1 and one_core["reader_threads"] == 1
    assert "error" not in fed, fed
    _positive(fed, "step_s_resident_batch", "step_s_fed")
    assert fed["input_wait_fraction"] == pytest.approx(max(0.0, 1 - fed["step_s_resident_batch"] / fed["step_s_fed"]))
    assert 0 <= fed["host_blocked_fraction"] < 1
    feeding = result["feeding"]
    step = sections["barlow_twins_resnet50"]
    assert feeding["cores_needed"] == math.ceil(step["images_per_s"] / one_core["records_per_s"]) >= 1
    assert f"{feeding['cores_needed']} cores feed" in stdout


def test_the_peak_table_matches_device_kinds_most_specific_first():
    expected = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0, "NVIDIA H100 PCIe": 756.0,
                "NVIDIA H100 NVL": 835.0, "NVIDIA A100-SXM4-80GB": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
                "TPU v5": 459.0, "TPU v5p": 459.0, "cpu": None}  # fmt: skip
    assert {kind: accelerator.peak_tflops(kind) for kind in expected} == expected


def test_a_failing_section_is_recorded_and_the_run_goes_on(tmp_path):
    args = accelerator.parse_args(["--smoke", "--records-dir", str(tmp_path)])
    env = accelerator.worker_env(str(tmp_path / "cache"))
    failed = accelerator.run_section("no_such_case", args, env, timeout_s=300)
    assert failed["error"] == "exit status 1" and "KeyError: 'no_such_case'" in failed["log_tail"]
    timed_out = accelerator.run_section("environment", args, env, timeout_s=0.01)
    assert timed_out["error"].startswith("timed out after")
