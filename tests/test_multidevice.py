"""Data parallelism is exact: 8 devices and 1 device give the same loss and updates for the same global batch."""

import json
import os
import subprocess

import numpy as np


def test_eight_devices_equal_one(repo, python):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [python, str(repo / "tests" / "multidevice_check.py")], cwd=repo, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["loss8"], result["loss1"], rtol=1e-5)
    assert result["max_rel_params"] < 1e-5, result
