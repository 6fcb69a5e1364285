"""Data parallelism is exact for every method: 8 devices and 1 device give the same losses and train state for
the same global batch (BN statistics, negatives, cross-correlations, queues are over the global batch)."""

import json
import os
import subprocess

import numpy as np
import pytest

CONFIGS = [
    "barlow_twins.py",
    "simclr.py",
    "moco.py",
    "byol.py",
    "vicreg.py",
    "autoencoder.py",
    "inpainting.py",
    "reorder.py",
]


@pytest.fixture(scope="module")
def results(repo, python):
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"),
               JAX_PLATFORMS="cpu")  # fmt: skip
    proc = subprocess.run(
        [python, str(repo / "tests" / "multidevice_check.py"), *CONFIGS], cwd=repo, env=env, capture_output=True,
        text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["barlow_twins", "simclr", "moco", "byol", "vicreg", "autoencoder", "inpainting",
                                    "reorder"])  # fmt: skip
def test_eight_devices_equal_one(results, method):
    result = results[method]
    # atol for losses near 0 (BYOL's mean negative cosine starts at ~0.007): there rtol measures rounding
    np.testing.assert_allclose(result["loss8"], result["loss1"], rtol=1e-5, atol=1e-6)
    # every tensor of the train state: ||x8 - x1|| <= 1e-5 ||x1|| + 1e-7 sqrt(size) (see multidevice_check.py)
    assert result["allclose_ratio"] <= 1.0, result
