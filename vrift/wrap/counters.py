"""The counters file of one wrapped build (layout: vrift/preload/vrift_counters.h).

The wrapper creates it before the tool starts (its path goes to the build as VRIFT_COUNTERS),
every process under the preload library adds its counts, and the wrapper reads it after the
tool exited for the summary.  tests/integration/test_wrap_fast.py checks the constants against the header.
"""
from __future__ import annotations

import os
import struct

from ..vdir.layout import COUNTERS_NAME_PREFIX

# vrift/preload/vrift_counters.h
COUNTERS_MAGIC = 0x56524354
COUNTERS_VERSION = 1
COUNTERS_SIZE = 256
COUNTER_NAMES = ("stat_served", "stat_passed", "stat_outside", "committed", "commit_local", "published",
                 "direct", "invalidated", "fallbacks", "daemon_errors", "processes",
                 "vdir_corrupt", "fast_hits")
_COUNTERS_HEAD = struct.Struct("<IIQ")
_COUNTERS_BODY = struct.Struct(f"<{len(COUNTER_NAMES)}Q")


def remove_stale_counters(directory: str) -> None:
    """Counters files of wrappers that died without removing theirs (kill -9): their pid is gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(COUNTERS_NAME_PREFIX):
            continue
        try:
            pid = int(name[len(COUNTERS_NAME_PREFIX):])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            remove_quietly(os.path.join(directory, name))
        except PermissionError:
            pass


def create_counters(directory: str) -> str:
    """A fresh counters file (0600) in `directory`, magic and version set, counts zero; stale
    files of dead wrappers there are removed first."""
    remove_stale_counters(directory)
    head = _COUNTERS_HEAD.pack(COUNTERS_MAGIC, COUNTERS_VERSION, 0)
    for attempt in range(2):
        path = os.path.join(directory, f"{COUNTERS_NAME_PREFIX}{os.getpid()}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # left by an earlier wrapper with the same pid that was killed
            if attempt:
                raise
            os.unlink(path)
            continue
        try:
            os.write(fd, head + bytes(COUNTERS_SIZE - len(head)))
        finally:
            os.close(fd)
        return path
    raise AssertionError("unreachable")


def read_counters(path: str) -> dict[str, int] | None:
    """The counts the build's processes added, or None when the file is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(COUNTERS_SIZE)
    except OSError:
        return None
    if len(data) < COUNTERS_SIZE:
        return None
    magic, version, _ = _COUNTERS_HEAD.unpack_from(data)
    if magic != COUNTERS_MAGIC or version != COUNTERS_VERSION:
        return None
    return dict(zip(COUNTER_NAMES, _COUNTERS_BODY.unpack_from(data, _COUNTERS_HEAD.size)))


def remove_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass
