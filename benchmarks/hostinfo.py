"""The host a benchmark runs on, without importing JAX: the CPU model, and a subprocess pinned to one core."""

from __future__ import annotations

import os
import pathlib
import platform


def cpu_model() -> str:
    """The host CPU's model name (/proc/cpuinfo), or the platform's word for it."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pin_to_one_core() -> None:
    """A subprocess `preexec_fn`: the child and every thread it starts run on one core (the lowest it may use)."""
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
