"""One run per workdir: every task that writes a workdir holds its lock while it runs (`exclusive_workdir`).

The lock is `<workdir>/.lock` (`.lock.<i>` for process i > 0 of a multi-process run, so the hosts of one run
share a workdir while a second run is refused on each of them), locked with `fcntl.flock`: the kernel frees it
when its holder dies, kill -9 included, and a second process is refused at once (WorkdirBusyError, a UserError:
one line and exit status 2). The file also holds a record of its holder (pid, host, process start, since, task)
for that message. The lock is free when its flock is, unless the record names

- a live process of this host (same pid and process start): refused, its file was replaced under it;
- a process of another host (a shared filesystem whose flock does not reach across hosts): refused until its
  holder has not touched the file (every HEARTBEAT_S) for STALE_AFTER_S, or until the user deletes the file.

A record of a process of this host that is gone (pid not running, or running a later process) is taken over. A
process may lock a workdir it holds again (nested calls); the outermost release frees it. A workdir the lock made
and the run left empty is removed again, so a config refused before anything was written leaves nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import functools
import inspect
import json
import logging
import os
import pathlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from fetalssl_jax.errors import UserError
from fetalssl_jax.runtime.workdir import make_workdir

log = logging.getLogger("fetalssl_jax")

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0  # the holder touches its lock file this often
STALE_AFTER_S = 600.0  # a lock of another host untouched this long is taken over


class WorkdirBusyError(UserError):
    """Another process holds the workdir's lock."""


@dataclasses.dataclass
class _Held:
    fd: int
    path: pathlib.Path
    made_workdir: bool
    stop: threading.Event
    count: int = 1


_HELD: dict[pathlib.Path, _Held] = {}
_GUARD = threading.Lock()


def lock_path(workdir: str | os.PathLike, process_index: int = 0) -> pathlib.Path:
    """The lock file of `workdir` for process `process_index` of a run."""
    return pathlib.Path(workdir).absolute() / (LOCK_NAME if process_index == 0 else f"{LOCK_NAME}.{process_index}")


def _process_start(pid: int) -> str:
    """When process `pid` started (clock ticks since boot, Linux's /proc), "" where unknown: tells a pid reused by a
    later process from the holder."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _running(record: dict[str, Any]) -> bool:
    """Whether the process of a record of this host is still the one that wrote it."""
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    start = _process_start(int(record["pid"]))
    return not (start and record.get("start") and start != record["start"])


def _read_record(fd: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) and "pid" in record else {}


def _describe(record: dict[str, Any]) -> str:
    if not record:
        return "another process (it is writing its record now)"
    since, task = record.get("since", "?"), record.get("task", "?")
    return f"pid {record['pid']} on host {record.get('host', '?')} since {since} ({task})"


def _refusal(workdir: pathlib.Path, path: pathlib.Path, fd: int, locked: bool) -> str | None:
    """Why the lock file `path` (open as `fd`), whose flock we hold (`locked`) or cannot use, is still held; None
    when it is free."""
    record = _read_record(fd)
    if not record:
        return None
    if record.get("host") == socket.gethostname():
        if not _running(record):
            log.info("%s: took over the lock of pid %s (since %s), which is no longer running", workdir,
                     record["pid"], record.get("since"))  # fmt: skip
            return None
        how = "its lock file was replaced" if locked else "this filesystem has no flock"
        return f"workdir {workdir} is in use by {_describe(record)} ({how}); wait for it to end or stop it"
    age = time.time() - os.fstat(fd).st_mtime
    if age >= STALE_AFTER_S:
        log.warning("%s: took over the lock of %s: not renewed for %.0f min", workdir, _describe(record), age / 60)
        return None
    return (
        f"workdir {workdir} is in use by {_describe(record)}, last renewed {age:.0f} s ago; wait for it to end, or "
        f"if that run is gone, run again {STALE_AFTER_S / 60:.0f} min after its last renewal or delete {path}"
    )


def _same_file(fd: int, path: pathlib.Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _acquire(workdir: pathlib.Path, path: pathlib.Path, task: str) -> int:
    """An open, locked lock file carrying this process's record; WorkdirBusyError when another process holds it."""
    for _ in range(10):  # a file deleted or replaced between open and flock is opened again
        make_workdir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                raise WorkdirBusyError(
                    f"workdir {workdir} is in use by {_describe(_read_record(fd))}; wait for it to end or stop it "
                    "(two runs in one workdir would mix their outputs)"
                ) from None
            except OSError as error:  # a filesystem without flock: the record alone decides
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                locked = False
            if not _same_file(fd, path):
                os.close(fd)
                continue
            refusal = _refusal(workdir, path, fd, locked)
            if refusal:
                raise WorkdirBusyError(refusal)
            since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            record = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                      "since": since, "task": task}  # fmt: skip
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode(), 0)
            return fd
        except BaseException:
            os.close(fd)
            raise
    raise RuntimeError(f"{path} was replaced 10 times while it was being locked")


def _heartbeat(fd: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(OSError):
            os.utime(fd)


def _release(held: _Held) -> None:
    held.stop.set()
    workdir = held.path.parent
    try:
        os.ftruncate(held.fd, 0)
        if held.made_workdir and all(p.name.startswith(LOCK_NAME) for p in workdir.iterdir()):
            held.path.unlink()  # before the flock is released: whoever opened it meanwhile opens it again
            with contextlib.suppress(OSError):
                workdir.rmdir()
    finally:
        os.close(held.fd)


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, task: str = "", process_index: int = 0) -> Iterator[pathlib.Path]:
    """Holds the lock of `workdir` (made if missing) for process `process_index` of a run while the block runs;
    WorkdirBusyError, naming the holder, when another process holds it. Yields the lock file's path."""
    workdir = pathlib.Path(workdir).resolve()
    path = lock_path(workdir, process_index)
    with _GUARD:
        held = _HELD.get(path)
        if held is not None:
            held.count += 1
        else:
            made = not workdir.exists()
            fd = _acquire(workdir, path, task)
            held = _HELD[path] = _Held(fd, path, made, threading.Event())
            threading.Thread(target=_heartbeat, args=(fd, held.stop), daemon=True, name="workdir-lock").start()
    try:
        yield path
    finally:
        with _GUARD:
            held.count -= 1
            if held.count == 0:
                del _HELD[path]
                _release(held)


def holds_lock(workdir: str | os.PathLike) -> bool:
    """Whether this process holds the lock of `workdir` (as one of a run's processes)."""
    workdir = pathlib.Path(workdir).resolve()
    with _GUARD:
        return any(path.parent == workdir for path in _HELD)


def _forget_in_child() -> None:
    """A forked child drops its copies of the lock files: a lock lives as long as the process that took it."""
    global _GUARD
    for held in _HELD.values():
        held.stop.set()
        os.close(held.fd)
    _HELD.clear()
    _GUARD = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def exclusive_workdir(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(..., workdir, ...)` runs holding `workdir_lock(workdir)` (process i of a multi-process run locks its own
    file): the one call by which every task that writes a workdir takes its lock."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
        import jax

        workdir = signature.bind(*args, **kwargs).arguments["workdir"]
        with workdir_lock(workdir, fn.__name__, jax.process_index()):
            return fn(*args, **kwargs)

    return locked
