"""Shared fixtures: the tiny Barlow Twins config and paths."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run tiny models for a few steps: XLA's cheapest CPU code generation compiles ~35% faster, and compiling,
# not running, is what the suite spends its time on. Set before jax is imported (conftest loads first).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def tiny_config(**overrides):
    """configs/barlow_twins.py:tiny with `overrides` (dotted keys) applied."""
    from fetalssl_jax.config_lib import load_config, set_by_path

    config = load_config(f"{REPO / 'configs' / 'barlow_twins.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


@pytest.fixture(scope="session")
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
