"""Reading a published VDir: mapping and validating the file, the seqlock lookup, following
the file through growth (VDirReader), and what the writer shares with the reader (_Mapped)."""
from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from . import layout, native
from .entry import Entry
from .shm_files import file_problem
from .shm_format import HDR, U32, U64, VDirCorrupt, VDirError, VDirForeign, entry_path, header_problem, read_header, \
    root_of, show_path, unpack_entry

_LOOKUP_ATTEMPTS = 200  # each is 64 seqlock retries in C; a writer never holds the lock that long


def _map_file(path: Path, writable: bool) -> tuple[native.Mapping, os.stat_result]:
    """Map the whole file at `path` and check its structure; VDirCorrupt names what is wrong."""
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise VDirError(f"VDir {path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise VDirForeign(f"VDir {path}: a symbolic link; refusing to use it") from None
        raise VDirError(f"VDir {path} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        owner = file_problem(st)
        if owner is not None:  # the preload library refuses it too (vrift_shm_file_ok)
            raise VDirForeign(f"VDir {path}: {owner}; refusing to use it")
        if st.st_size < layout.HEADER_SIZE:
            raise VDirCorrupt(f"VDir {path}: truncated: {st.st_size} bytes, a VDir has at least {layout.HEADER_SIZE}")
        mapping = native.Mapping(fd, st.st_size, writable)
    finally:
        os.close(fd)
    problem = header_problem(mapping.view, mapping.size)
    if problem is None and native.lib().vrift_check(mapping.base, mapping.size) != 0:
        problem = "fails the structural check of vrift_vdir.h"
    if problem is not None:
        mapping.close()
        raise VDirCorrupt(f"VDir {path}: {problem}")
    return mapping, st


def _find(mapping: native.Mapping, path: bytes, where: Path) -> Entry | None:
    """The seqlock lookup of the C header, retried while a writer keeps the table busy."""
    if len(path) > layout.REL_MAX or b"\0" in path:
        return None
    out = ctypes.create_string_buffer(layout.ENTRY_SIZE)
    find = native.lib().vrift_find
    for _ in range(_LOOKUP_ATTEMPTS):
        got = find(mapping.base, mapping.size, path, len(path), out)
        if got == 1:
            return unpack_entry(out.raw, path)
        if got == 0:
            return None
        if got == layout.LOOKUP_CORRUPT:
            raise VDirCorrupt(f"VDir {where}: the entry of {show_path(path)} fails its checksum")
        os.sched_yield()
    raise VDirError(f"VDir {where}: no consistent read of {show_path(path)} (writer busy or table damaged)")


class _Mapped:
    """What the writer and the reader share: a validated mapping and its header fields."""

    _map: native.Mapping | None

    def __init__(self, path: Path):
        self.path = Path(path)
        self._map = None
        self._lock = threading.RLock()

    def _m(self) -> native.Mapping:
        if self._map is None:
            raise VDirError(f"VDir {self.path} is closed")
        return self._map

    def _u32(self, field: str) -> int:
        with self._lock:
            return U32.unpack_from(self._m().view, HDR[field][0])[0]

    def _u64(self, field: str) -> int:
        with self._lock:
            return U64.unpack_from(self._m().view, HDR[field][0])[0]

    @property
    def root(self) -> str:
        m = self._m()
        return root_of(m.view, read_header(m.view))

    @property
    def project_id(self) -> str:
        return bytes(self._m().view[HDR["project_id"][0]:HDR["project_id"][0] + 16]).hex()

    @property
    def index_generation(self) -> int:
        return self._u64("index_generation")

    @property
    def publish_generation(self) -> int:
        return native.lib().vrift_generation(self._m().base)

    @property
    def entry_count(self) -> int:
        return self._u32("entry_count")

    def __len__(self) -> int:
        return self.entry_count

    @property
    def size_bytes(self) -> int:
        return self._m().size

    @property
    def blksize(self) -> int:
        return self._u32("blksize")

    def _entries_of(self, view: memoryview, header: dict) -> Iterator[Entry]:
        base = header["entries_offset"]
        for i in range(header["entry_used"]):
            raw = bytes(view[base + i * layout.ENTRY_SIZE:base + (i + 1) * layout.ENTRY_SIZE])
            yield unpack_entry(raw, entry_path(view, header, raw))

    def _damaged(self) -> list[int]:
        m, lib = self._m(), native.lib()
        count = lib.vrift_verify(m.base, m.size, None, 0)
        if count == 0xFFFFFFFF:
            why = header_problem(m.view, m.size) or "fails the structural check of vrift_vdir.h"
            raise VDirCorrupt(f"VDir {self.path}: {why}")
        if count == 0:
            return []
        out = (ctypes.c_uint32 * count)()
        count = lib.vrift_verify(m.base, m.size, out, count)
        return list(out[:count])

    def _close_map(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._close_map()


class VDirReader(_Mapped):
    """A read-only view of a published VDir that follows the file through growth.

    Each lookup first checks whether the mapped file was retired, resized or replaced under its
    name (another inode), and then maps the file the name points to now."""

    def __init__(self, path: Path | str):
        super().__init__(Path(path))
        self._ident: tuple[int, int] = (0, 0)
        self._remap()

    def _remap(self) -> None:
        mapping, st = _map_file(self.path, writable=False)
        self._close_map()
        self._map, self._ident = mapping, (st.st_dev, st.st_ino)

    def _replaced(self) -> bool:
        m = self._m()
        flags = U32.unpack_from(m.view, HDR["header_flags"][0])[0]
        if flags & layout.H_RETIRED or U64.unpack_from(m.view, HDR["file_size"][0])[0] != m.size:
            return True
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # removed, not replaced: the last published table is still the best answer
        return (st.st_dev, st.st_ino) != self._ident

    def refresh(self) -> None:
        """Follow the name to the current file if this one was retired or replaced."""
        with self._lock:
            if self._replaced():
                self._remap()

    # header fields describe the current file, not a retired one
    def _u32(self, field: str) -> int:
        with self._lock:
            self.refresh()
            return super()._u32(field)

    def _u64(self, field: str) -> int:
        with self._lock:
            self.refresh()
            return super()._u64(field)

    def lookup(self, path: bytes) -> Entry | None:
        """The entry of `path` (flags included: DELETED means the index knows it is absent)."""
        with self._lock:
            if self._replaced():
                self._remap()
            return _find(self._m(), path, self.path)

    def damaged(self) -> list[int]:
        """Indices of the entries that fail their checksum (a scrub of the whole dense array;
        ~10 ns an entry).  Raises VDirCorrupt when the header no longer passes its check."""
        with self._lock:
            self.refresh()
            return self._damaged()

    @property
    def ident(self) -> tuple[int, int]:
        """(st_dev, st_ino) of the file mapped now."""
        return self._ident

    def entries(self) -> list[Entry]:
        """Every record (tombstones included), copied under the sequence lock."""
        with self._lock:
            m = self._m()
            lib = native.lib()
            for _ in range(_LOOKUP_ATTEMPTS):
                g1 = lib.vrift_generation(m.base)
                if g1 & 1:
                    os.sched_yield()
                    continue
                snapshot = memoryview(bytes(m.view))
                if lib.vrift_generation(m.base) == g1:
                    return list(self._entries_of(snapshot, read_header(snapshot)))
            raise VDirError(f"VDir {self.path}: no consistent snapshot (writer busy)")
