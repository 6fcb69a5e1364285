"""Back XLA's per-step CPU buffers with transparent huge pages (glibc's `glibc.malloc.hugetlb=1` tunable): fewer page
faults per step, same results (docs/design.md, "Huge pages for XLA's buffers").

A glibc tunable is read once, when the process starts, so the command-line entry points (`fetalssl_jax.main`, the
benchmarks) re-execute themselves once with it set, before any work is done. Nothing happens off Linux/glibc, where
the kernel has transparent huge pages `never`, where the tunable is already given, or with `FETALSSL_HUGEPAGES=0`.
In a notebook or your own script, start Python with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` for the same effect.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

__all__ = ["HUGETLB_TUNABLE", "hugepage_environ", "reexec_with_hugepages"]

HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"
_OPT_OUT = "FETALSSL_HUGEPAGES"
_THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _thp_available(setting_path: str = _THP_SETTING) -> bool:
    """False where the kernel has transparent huge pages off ('[never]') or does not have them at all."""
    try:
        with open(setting_path) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def hugepage_environ(
    environ: Mapping[str, str], is_glibc_linux: bool | None = None, thp_available: bool | None = None
) -> dict[str, str] | None:
    """The environment to re-execute with (`GLIBC_TUNABLES` extended by the huge-page tunable), or None where the
    process should run as it is (see the module docstring for when)."""
    if is_glibc_linux is None:
        is_glibc_linux = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    if not is_glibc_linux or environ.get(_OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:  # given already (by us, or by the user with their own value)
        return None
    if not (_thp_available() if thp_available is None else thp_available):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGETLB_TUNABLE]))}


def reexec_with_hugepages() -> None:
    """Replaces this process by the same command with the huge-page tunable set (same PID, same arguments), or
    returns where nothing needs to change. Call it first thing in a `__main__` block."""
    environ = hugepage_environ(os.environ)
    if environ is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    # sys.orig_argv keeps the interpreter's own options (-m, -X, -W ...) as they were given.
    os.execve(sys.executable, list(sys.orig_argv), environ)
