"""The write-ahead log of one project index (SPEC §4.5).

Append-only records, each self-checking:

    magic  b"WAL1"   4 bytes
    generation       u64 little-endian (the index generation the record belongs to)
    path length      u16
    path             bytes, relative to the project root
    entry            layout.RECORD (112 bytes, the same record LMDB stores)
    crc32            u32 over every byte above

One apply() of the index writes all its records with one write() and one fsync(), so a group
of commits costs one fsync.  Replay stops at the first record that is short, has a bad magic or
a bad CRC: that is the torn tail of a write that was never acknowledged.
"""
from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import VriftError
from . import layout
from .entry import Entry

MAGIC = b"WAL1"
HEAD = struct.Struct("<4sQH")
CRC = struct.Struct("<I")
MAX_RECORD = HEAD.size + layout.REL_MAX + layout.RECORD_SIZE + CRC.size


def pack(generation: int, entry: Entry) -> bytes:
    body = HEAD.pack(MAGIC, generation, len(entry.path)) + entry.path + entry.pack_record()
    return body + CRC.pack(zlib.crc32(body))


def parse(data: bytes | memoryview) -> Iterator[tuple[int, Entry, int]]:
    """(generation, entry, end offset) of each whole record, stopping at the first bad one."""
    off, n = 0, len(data)
    while off + HEAD.size <= n:
        magic, generation, plen = HEAD.unpack_from(data, off)
        end = off + HEAD.size + plen + layout.RECORD_SIZE + CRC.size
        if magic != MAGIC or plen > layout.REL_MAX or end > n:
            return
        body = bytes(data[off:end - CRC.size])
        (crc,) = CRC.unpack_from(data, end - CRC.size)
        if zlib.crc32(body) != crc:
            return
        path = body[HEAD.size:HEAD.size + plen]
        yield generation, Entry.unpack_record(path, body[HEAD.size + plen:]), end
        off = end


def read(path: Path) -> tuple[list[tuple[int, Entry]], int, int]:
    """(records, bytes that parse, file size) of the WAL at `path` (empty when absent)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0, 0
    records, good = [], 0
    for generation, entry, end in parse(data):
        records.append((generation, entry))
        good = end
    return records, good, len(data)


class WriteAheadLog:
    """The open WAL of a project; one writer (the process that holds the index lock)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.size = os.fstat(self.fd).st_size
        self.appends = 0
        self.fsyncs = 0

    def append(self, generation: int, entries: Iterable[Entry], fsync: bool = True) -> None:
        """Write the records of one generation; durable when this returns (with fsync).
        On failure (disk full) the file is cut back so no partial record is left."""
        data = b"".join(pack(generation, e) for e in entries)
        if not data:
            return
        try:
            written = os.write(self.fd, data)
            if written != len(data):  # a short write only happens when the disk is full
                raise OSError(28, os.strerror(28))
            if fsync:
                os.fdatasync(self.fd)
                self.fsyncs += 1
        except OSError as e:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise VriftError(f"WAL {self.path}: {e.strerror or e} while appending generation {generation}") from e
        self.size += len(data)
        self.appends += 1

    def reset(self, keep: list[tuple[int, Entry]] = ()) -> None:
        """Replace the content by `keep` (records not yet in LMDB): LMDB now holds the rest.
        Written beside and renamed, so a crash leaves either the old or the new log."""
        if not keep:
            os.ftruncate(self.fd, 0)
            os.fsync(self.fd)
            self.size = 0
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(pack(g, e) for g, e in keep)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self.size = len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
