"""ctypes binding of the VDir helper library (vrift/native/vdir_native.c) and raw mappings.

The helper library holds the operations that must be real atomics or that the preload library
shares (the seqlock edges, flag OR/AND, the lookup itself): Python's struct writes into a mapping
are plain stores with no ordering.

Mappings are made with libc `mmap` through ctypes rather than Python's `mmap` module, for both
the writer (PROT_READ|PROT_WRITE) and readers (PROT_READ).  The C functions need the base
address of the mapping; `ctypes.addressof(c_char.from_buffer(mm))` only works on a writable
`mmap.mmap`, and a reader must not map the file writable (a stray store from Python would then
change what every build process sees).  One code path for both keeps the writer and the reader
identical apart from the protection bits, and a read-only reader's memory really is read-only.
"""
from __future__ import annotations

import ctypes
import mmap as _mmap
import os
import threading
from ctypes import POINTER, c_char_p, c_int, c_int64, c_size_t, c_uint32, c_uint64, c_void_p

from ..native import vdir_native_library
from ..errors import VriftError

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_libc: ctypes.CDLL | None = None

_MAP_FAILED = ctypes.c_void_p(-1).value

# name -> (restype, argtypes)
_SIGNATURES = {
    "vrift_seq_begin": (None, [c_void_p]),
    "vrift_seq_end": (c_uint64, [c_void_p]),
    "vrift_generation": (c_uint64, [c_void_p]),
    "vrift_flags_or": (c_uint32, [c_void_p, c_uint64, c_uint32, c_uint32]),
    "vrift_flags_clear": (c_uint32, [c_void_p, c_uint64, c_uint32, c_uint32]),
    "vrift_flags_replace": (c_uint32, [c_void_p, c_uint64, c_uint32, c_uint32, c_uint32]),
    "vrift_header_flags_or": (None, [c_void_p, c_uint32]),
    "vrift_header_flags_clear": (None, [c_void_p, c_uint32]),
    "vrift_heartbeat": (c_uint64, [c_void_p]),
    "vrift_retire": (None, [c_void_p]),
    "vrift_collect_flagged": (c_uint32, [c_void_p, c_uint64, c_uint32, POINTER(c_uint32), c_uint32]),
    "vrift_flags_or_all": (c_uint32, [c_void_p, c_uint64, c_uint32]),
    "vrift_check": (c_int, [c_void_p, c_uint64]),
    "vrift_hash": (c_uint64, [c_char_p, c_size_t]),
    "vrift_find": (c_int, [c_void_p, c_uint64, c_char_p, c_size_t, c_void_p]),
    "vrift_locate": (c_int64, [c_void_p, c_uint64, c_char_p, c_size_t, c_uint64, POINTER(c_uint32)]),
    "vrift_place": (c_int64, [c_void_p, c_uint64, c_uint32]),
    "vrift_place_range": (c_int, [c_void_p, c_uint64, c_uint32, c_uint32]),
    "vrift_seal": (c_int, [c_void_p, c_uint64, c_uint32]),
    "vrift_seal_range": (c_int, [c_void_p, c_uint64, c_uint32, c_uint32]),
    "vrift_entry_checksum": (c_uint32, [c_char_p]),
    "vrift_geometry_checksum": (c_uint32, [c_uint64, c_uint64, c_uint64, c_uint64, c_uint64, c_uint32, c_uint32]),
    "vrift_verify": (c_uint32, [c_void_p, c_uint64, POINTER(c_uint32), c_uint32]),
    "vrift_lookup_loop": (c_uint64, [c_void_p, c_uint64, c_char_p, POINTER(c_uint32), c_uint32, c_uint64]),
    "vrift_test_fill": (None, [c_uint64, c_void_p]),
    "vrift_torture_read": (None, [c_void_p, c_uint64, c_char_p, POINTER(c_uint32), c_uint32, c_uint64,
                                  POINTER(c_uint64), POINTER(c_uint64)]),
    "vrift_layout_field": (c_int, [c_int, POINTER(c_char_p), POINTER(c_size_t), POINTER(c_size_t)]),
    "vrift_layout_constant": (c_uint32, [c_char_p]),
    "vrift_layout_string": (c_char_p, [c_char_p]),
    "vrift_shm_stat_ok": (c_int, [c_int, c_uint32, c_uint32, c_uint64, c_uint32]),
    "vrift_act_checksum64": (c_uint64, [c_char_p, c_size_t]),
    "vrift_act_checksum32": (c_uint32, [c_char_p, c_size_t]),
    "vrift_act_key_hash": (c_uint64, [c_char_p, c_size_t]),
}


def lib() -> ctypes.CDLL:
    """The helper library, loaded once on first use."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                path = vdir_native_library()
                if path is None:
                    raise VriftError("native library not built: reinstall vrift with `pip install .`")
                try:
                    loaded = ctypes.CDLL(str(path))
                except OSError as exc:
                    raise VriftError(f"native library {path} cannot be loaded ({exc}): "
                                     "reinstall vrift with `pip install .`") from None
                for name, (restype, argtypes) in _SIGNATURES.items():
                    fn = getattr(loaded, name)
                    fn.restype, fn.argtypes = restype, argtypes
                _lib = loaded
    return _lib


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = c_void_p
        libc.mmap.argtypes = [c_void_p, c_size_t, c_int, c_int, c_int, ctypes.c_long]
        libc.munmap.restype = c_int
        libc.munmap.argtypes = [c_void_p, c_size_t]
        libc.madvise.restype = c_int
        libc.madvise.argtypes = [c_void_p, c_size_t, c_int]
        _libc = libc
    return _libc


def drop_resident(addr: int, length: int) -> None:
    """Take the pages of [addr, addr + length) of a MAP_SHARED file mapping out of this
    process's resident set (MADV_DONTNEED).  Their content stays in the file and the page
    cache; the next access maps the same bytes again.  Never for private or anonymous memory,
    where the same call throws the content away."""
    if length > 0:
        _c().madvise(addr, length, _mmap.MADV_DONTNEED)  # advice only: a failure changes nothing


def path_hash(path: bytes) -> int:
    """FNV-1a 64 of a relative path, as the C lookup computes it."""
    return lib().vrift_hash(path, len(path))


class Mapping:
    """A MAP_SHARED mapping of a whole file made with libc mmap.

    `base` is the address the C functions take; `view` is a flat byte memoryview over the same
    memory for Python's own reads (and writes, when writable).  After close() neither may be
    used: the memory is gone, and a stale access would fault, so owners drop both at once."""

    __slots__ = ("base", "size", "writable", "view", "_array")

    def __init__(self, fd: int, size: int, writable: bool):
        prot = _mmap.PROT_READ | (_mmap.PROT_WRITE if writable else 0)
        addr = _c().mmap(None, size, prot, _mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == _MAP_FAILED:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap of {size} bytes failed: {os.strerror(err)}")
        self.base: int = addr
        self.size = size
        self.writable = writable
        self._array = (ctypes.c_ubyte * size).from_address(addr)
        self.view = memoryview(self._array).cast("B")

    @property
    def closed(self) -> bool:
        return self.base == 0

    def release(self, offset: int = 0, length: int | None = None) -> None:
        """drop_resident for the whole pages inside [offset, offset + length) of the file."""
        end = self.size if length is None else min(self.size, offset + length)
        start = -(-offset // _mmap.PAGESIZE) * _mmap.PAGESIZE
        end -= end % _mmap.PAGESIZE if end < self.size else 0
        if self.base and end > start:
            drop_resident(self.base + start, end - start)

    def close(self) -> None:
        if self.base:
            self.view.release()
            self._array = None
            _c().munmap(self.base, self.size)
            self.base = 0

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the process exit unmaps anyway
            pass


COPY_CHUNK = 8 << 20  # bytes copied between two releases


def copy_releasing(new: Mapping, dst: int, old: Mapping, src: int, n: int) -> None:
    """Copy n bytes from `old` at src into `new` at dst, dropping old's pages from this process's
    resident set behind the copy (its file keeps them for its readers): a VDir growth maps the
    whole old file and the whole new one, and holding both resident made the writer's peak."""
    for at in range(0, n, COPY_CHUNK):
        k = min(COPY_CHUNK, n - at)
        new.view[dst + at:dst + at + k] = old.view[src + at:src + at + k]
        old.release(src + at, k)
