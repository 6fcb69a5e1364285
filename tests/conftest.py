"""Shared fixtures: the tiny Barlow Twins config and paths."""

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def tiny_config(**overrides):
    """configs/barlow.py:tiny with `overrides` (dotted keys) applied."""
    from fetalssl_jax.config_lib import load_config, set_by_path

    config = load_config(f"{REPO / 'configs' / 'barlow.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


@pytest.fixture
def repo() -> pathlib.Path:
    return REPO


@pytest.fixture
def python() -> str:
    return sys.executable
