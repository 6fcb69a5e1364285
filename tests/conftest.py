"""Shared fixtures: the tiny Barlow Twins config and paths."""

import atexit
import os
import pathlib
import shutil
import socket
import sys
import tempfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Ids are salted with the installation's salt, made on first use in ~/.config/fetalssl_jax (readers.id_salt): the tests
# (and the commands they start, which inherit this) keep theirs in a temporary folder, never in the real home.
os.environ["FETALSSL_CONFIG_DIR"] = tempfile.mkdtemp(prefix="fetalssl_config_")
atexit.register(shutil.rmtree, os.environ["FETALSSL_CONFIG_DIR"], True)
os.environ.pop("FETALSSL_ID_SALT_FILE", None)
# Tests run tiny models for a few steps: XLA's cheapest CPU code generation compiles ~35% faster, and compiling,
# not running, is what the suite spends its time on. Set before jax is imported (conftest loads first).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


@pytest.hookimpl(optionalhook=True)  # so that `-p no:xdist` runs the tests in one process
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4. Each worker holds its own JAX and TensorFlow runtime (about 1 GB),
    and XLA's CPU ops already use every core, so more workers add memory, not speed."""
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4))


def tiny_config(**overrides):
    """configs/barlow.py:tiny with `overrides` (dotted keys) applied."""
    from fetalssl_jax.config_lib import load_config, set_by_path

    config = load_config(f"{REPO / 'configs' / 'barlow.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


def free_port() -> int:
    """A TCP port nobody listens on now (the coordinator of a multi-process test)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Small TFDS datasets built by the builders: fetal_us_video/tiny_pairs and fetal_cardiac_planes/tiny."""
    if str(REPO / "data_builders") not in sys.path:
        sys.path.insert(0, str(REPO / "data_builders"))
    from fetal_cardiac_planes.fetal_cardiac_planes_dataset_builder import FetalCardiacPlanes, FetalCardiacPlanesConfig
    from fetal_us_video.fetal_us_video_dataset_builder import FetalUsVideo, FetalUsVideoConfig

    d = tmp_path_factory.mktemp("tfds")
    config = FetalUsVideoConfig(name="tiny_pairs", synthetic=True, image_size=32, max_gap=2, synthetic_videos=6,
                                synthetic_frames=16, validation_fraction=0.34)  # fmt: skip
    FetalUsVideo(config=config, data_dir=str(d)).download_and_prepare()
    planes = FetalCardiacPlanesConfig(name="tiny", synthetic=True, image_size=32, synthetic_patients=10,
                                      synthetic_frames_per_patient=10)  # fmt: skip
    FetalCardiacPlanes(config=planes, data_dir=str(d)).download_and_prepare()
    return d
