"""ctypes binding of the native tree walk (vrift/native/walk.c).

`Snapshot` holds the index's paths (and records) as two joined byte strings, made at C speed by
ProjectIndex.snapshot(), and the C side's table of them.  `ingest_walk` compares the whole tree
with the records; `Snapshot.settle` handles a few directories of a restarted daemon's reconcile
against the published VDir entries.  Every call runs without the GIL (ctypes releases it).
"""
from __future__ import annotations

import ctypes
import errno as errnomod
import os
from ctypes import POINTER, Structure, c_char_p, c_int, c_size_t, c_uint32, c_uint64, c_void_p
from dataclasses import dataclass, field

from . import native

FALLBACK = object()  # the tree must be walked in Python (too deep, a path too long, out of fds)
# Threads of a walk: the time is the kernel's (fstatat, getdents), which runs on every core.
THREADS = max(1, min(os.cpu_count() or 1, 4))


class _Out(Structure):
    _fields_ = [("changed", c_void_p), ("changed_len", c_uint64),
                ("skipped", c_void_p), ("skipped_len", c_uint64),
                ("dirs", c_void_p), ("dirs_len", c_uint64),
                ("refresh", c_void_p), ("refresh_len", c_uint64),
                ("files", c_uint64), ("subdirs", c_uint64), ("symlinks", c_uint64),
                ("confirmed", c_uint64), ("dirs_done", c_uint64)]


_SIGNATURES = {
    "vrift_snap_new": (c_void_p, [c_char_p, c_size_t, c_char_p, c_size_t, c_uint32]),
    "vrift_snap_free": (None, [c_void_p]),
    "vrift_walk_free": (None, [POINTER(_Out)]),
    "vrift_walk_ingest": (c_int, [c_void_p, c_char_p, c_char_p, c_size_t, c_int, POINTER(_Out)]),
    "vrift_walk_settle": (c_int, [c_void_p, c_char_p, c_char_p, c_size_t, c_char_p, c_char_p, c_size_t,
                                  c_void_p, c_uint64, c_uint64, c_int, POINTER(_Out)]),
    "vrift_snap_unseen": (c_int, [c_void_p, c_int, POINTER(_Out)]),
}
_bound = None


def _lib() -> ctypes.CDLL:
    global _bound
    lib = native.lib()
    if _bound is not lib:
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        _bound = lib
    return lib


def _split(ptr: int | None, size: int) -> list[bytes]:
    if not size:
        return []
    return ctypes.string_at(ptr, size)[:-1].split(b"\0")


@dataclass
class WalkResult:
    changed: list[bytes] = field(default_factory=list)  # differ, are new, or need a re-read
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) as the Python walk words them
    dirs: list[bytes] = field(default_factory=list)      # settle: directories to settle next
    refresh: list[bytes] = field(default_factory=list)   # settle: directories whose own entry was not confirmed
    files: int = 0
    subdirs: int = 0
    symlinks: int = 0
    confirmed: int = 0
    dirs_done: int = 0


def _result(out: _Out) -> WalkResult:
    skipped = []
    for item in _split(out.skipped, out.skipped_len):
        head, _, path = item.partition(b":")
        reason = os.strerror(int(head[1:]))
        skipped.append((os.fsdecode(path), f"cannot list: {reason}" if head[:1] == b"L" else reason))
    return WalkResult(_split(out.changed, out.changed_len), skipped, _split(out.dirs, out.dirs_len),
                      _split(out.refresh, out.refresh_len), out.files, out.subdirs, out.symlinks,
                      out.confirmed, out.dirs_done)


class Snapshot:
    """The index's paths (with `records`, their 112-byte records in the same order) in C."""

    def __init__(self, paths: bytes, records: bytes | None, count: int, root: bytes, ignored: tuple[bytes, ...]):
        self._paths, self._records = paths, records  # the C side points into them
        self._root = root
        self._ignored = b"\0".join(ignored)
        self._handle = _lib().vrift_snap_new(paths, len(paths), records, len(records or b""), count) \
            if count else None
        if count and not self._handle:
            raise ValueError(f"native walk: a snapshot of {count} paths that does not hold {count} names "
                             "and records, or no memory for it")

    def close(self) -> None:
        if self._handle:
            _lib().vrift_snap_free(self._handle)
            self._handle = None

    def __enter__(self) -> "Snapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ingest_walk(self, threads: int = THREADS):
        """The tree against the records: a WalkResult, None when the root is gone, or FALLBACK."""
        out = _Out()
        rc = _lib().vrift_walk_ingest(self._handle, self._root, self._ignored, len(self._ignored), threads,
                                      ctypes.byref(out))
        try:
            if rc == 1:
                return None
            if rc < 0:
                return FALLBACK
            return _result(out)
        finally:
            _lib().vrift_walk_free(ctypes.byref(out))

    def settle(self, dirs: list[bytes], base: int, size: int, max_names: int, exempt: bytes,
               threads: int = THREADS):
        """Settle directories `dirs` against the VDir mapped at base/size (call it under the
        writer's lock); a WalkResult, or FALLBACK (the header no longer checks: -EIO)."""
        out = _Out()
        joined = b"".join(d + b"\0" for d in dirs)
        rc = _lib().vrift_walk_settle(self._handle, self._root, self._ignored, len(self._ignored), exempt,
                                      joined, len(joined), base, size, max_names, threads, ctypes.byref(out))
        try:
            if rc < 0:
                return FALLBACK if rc != -errnomod.ENOMEM else _raise_nomem()
            return _result(out)
        finally:
            _lib().vrift_walk_free(ctypes.byref(out))

    def unseen(self, listed_parents: bool) -> list[bytes]:
        """Indexed paths the walk did not see (with `listed_parents`, only where it listed the parent)."""
        if not self._handle:
            return []
        out = _Out()
        if _lib().vrift_snap_unseen(self._handle, int(listed_parents), ctypes.byref(out)) < 0:
            _raise_nomem()
        try:
            return _split(out.changed, out.changed_len)
        finally:
            _lib().vrift_walk_free(ctypes.byref(out))


def _raise_nomem():
    raise MemoryError("native walk: out of memory")
