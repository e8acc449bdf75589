"""The VDir file as bytes: region sizes, header reading and validation, path rules, entries.

Everything here follows vrift/native/vrift_vdir.h through vrift/vdir/layout.py; the writer and
the reader (vrift/vdir/shm.py) only add mapping and publishing on top.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import VriftError
from . import layout
from .entry import Entry

PAGE = 4096
MIN_ENTRIES = 16
MIN_STRINGS = 1024
# create() does not know the paths yet: it sizes the string area for paths of this length and
# lets the first put_many rebuild when they are longer (a rebuild costs what an in-place fill does).
PATH_BYTES_GUESS = 32

HDR = layout.field_offsets(layout.HEADER_FIELDS)
ENT = layout.field_offsets(layout.ENTRY_FIELDS)
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


class VDirError(VriftError):
    """A VDir cannot be used as asked (bad path, missing file, unreadable table)."""


class VDirCorrupt(VDirError):
    """A file that is not a usable VDir: bad magic, version, size or offsets."""


class VDirForeign(VDirError):
    """A file at a VDir name that is not ours to use: another owner, open mode, not a regular file."""


def headroom(n: int, minimum: int) -> int:
    """Capacity for n with room to grow: +25% (at least `minimum`), so growth is geometric."""
    return n + max(n // 4, minimum)


@dataclass(frozen=True)
class Geometry:
    """Where each region of a VDir file starts and how big it is."""

    entry_capacity: int
    table_capacity: int
    strings_capacity: int

    @classmethod
    def for_counts(cls, entries: int, string_bytes: int) -> "Geometry":
        ecap = max(MIN_ENTRIES, headroom(entries, MIN_ENTRIES))
        table = MIN_ENTRIES
        # every dense record may be linked into the table: size it for all of them at load <= 0.7
        while table * layout.MAX_LOAD_NUM < ecap * layout.MAX_LOAD_DEN:
            table *= 2
        strings_start = layout.HEADER_SIZE + layout.BLOOM_BYTES + table * layout.SLOT_SIZE + ecap * layout.ENTRY_SIZE
        end = strings_start + max(MIN_STRINGS, headroom(string_bytes, MIN_STRINGS))
        end = -(-end // PAGE) * PAGE  # the rest of the last page is string space for free
        scap = end - strings_start
        if ecap >= 1 << 32 or scap >= 1 << 32:
            raise VDirError(f"VDir too large: {entries:,} entries, {string_bytes:,} bytes of paths")
        return cls(ecap, table, scap)

    @property
    def bloom_offset(self) -> int:
        return layout.HEADER_SIZE

    @property
    def table_offset(self) -> int:
        return layout.HEADER_SIZE + layout.BLOOM_BYTES

    @property
    def entries_offset(self) -> int:
        return self.table_offset + self.table_capacity * layout.SLOT_SIZE

    @property
    def strings_offset(self) -> int:
        return self.entries_offset + self.entry_capacity * layout.ENTRY_SIZE

    @property
    def file_size(self) -> int:
        return self.strings_offset + self.strings_capacity

    def fits(self, entries: int, string_bytes: int) -> bool:
        return (entries <= self.entry_capacity and string_bytes <= self.strings_capacity
                and entries * layout.MAX_LOAD_DEN <= self.table_capacity * layout.MAX_LOAD_NUM)


def header_values(geo: Geometry, root: bytes, project_id: bytes, *, generation: int, entry_count: int,
                  entry_used: int, strings_used: int, index_generation: int, blksize: int) -> dict:
    return dict(
        magic=layout.MAGIC, version=layout.VERSION, generation=generation, file_size=geo.file_size,
        header_size=layout.HEADER_SIZE, entry_size=layout.ENTRY_SIZE, entry_count=entry_count,
        entry_used=entry_used, entry_capacity=geo.entry_capacity, table_capacity=geo.table_capacity,
        bloom_offset=geo.bloom_offset, table_offset=geo.table_offset, entries_offset=geo.entries_offset,
        strings_offset=geo.strings_offset, strings_capacity=geo.strings_capacity, strings_used=strings_used,
        header_flags=0, root_len=len(root), project_id=project_id, index_generation=index_generation,
        blksize=blksize, geometry_sum=0, heartbeat_ms=0)


def write_header(view: memoryview, values: dict, root: bytes) -> None:
    values = dict(values, geometry_sum=layout.geometry_sum(values))  # whatever the caller copied
    layout.HEADER.pack_into(view, 0, *(values[name] for name, _ in layout.HEADER_FIELDS))
    view[layout.ROOT_OFFSET:layout.ROOT_OFFSET + len(root) + 1] = root + b"\0"


def read_header(view: memoryview) -> dict:
    return dict(zip((name for name, _ in layout.HEADER_FIELDS), layout.HEADER.unpack_from(view, 0)))


def header_problem(view: memoryview, size: int) -> str | None:
    """Why a mapping of `size` bytes is not a usable VDir, in a few words; None when it is."""
    if size < layout.HEADER_SIZE:
        return f"truncated: {size} bytes, a VDir has at least {layout.HEADER_SIZE}"
    h = read_header(view)
    if h["magic"] != layout.MAGIC:
        return f"bad magic 0x{h['magic']:08x} (expected 0x{layout.MAGIC:08x}, not a VDir file)"
    if h["version"] != layout.VERSION:
        return f"unsupported version {h['version']} (this vrift reads version {layout.VERSION})"
    if h["header_size"] != layout.HEADER_SIZE or h["entry_size"] != layout.ENTRY_SIZE:
        return (f"header/entry size {h['header_size']}/{h['entry_size']} "
                f"(expected {layout.HEADER_SIZE}/{layout.ENTRY_SIZE})")
    if h["file_size"] != size:
        return f"file is {size} bytes but its header says {h['file_size']} (truncated or overwritten)"
    cap = h["table_capacity"]
    if cap == 0 or cap & (cap - 1):
        return f"table capacity {cap} is not a power of two"
    regions = (("bloom filter", h["bloom_offset"], layout.BLOOM_BYTES),
               ("slot table", h["table_offset"], cap * layout.SLOT_SIZE),
               ("entry array", h["entries_offset"], h["entry_capacity"] * layout.ENTRY_SIZE),
               ("string area", h["strings_offset"], h["strings_capacity"]))
    for name, off, length in regions:
        if off < layout.HEADER_SIZE or off + length > size:
            return f"{name} at offset {off} (+{length} bytes) lies outside the {size}-byte file"
    if h["entry_used"] > h["entry_capacity"] or h["entry_count"] > h["entry_used"]:
        return f"entry counts {h['entry_count']}/{h['entry_used']} exceed capacity {h['entry_capacity']}"
    if h["strings_used"] > h["strings_capacity"]:
        return f"string area use {h['strings_used']} exceeds its capacity {h['strings_capacity']}"
    rl = h["root_len"]
    if rl == 0 or rl >= layout.ROOT_MAX or view[layout.ROOT_OFFSET + rl] != 0:
        return f"bad root path length {rl}"
    if layout.geometry_sum(h) != h["geometry_sum"]:
        return "region offsets and capacities disagree with their checksum (header overwritten)"
    return None


def root_of(view: memoryview, header: dict) -> str:
    raw = bytes(view[layout.ROOT_OFFSET:layout.ROOT_OFFSET + header["root_len"]])
    return os.fsdecode(raw)


def root_bytes(root: str | os.PathLike) -> bytes:
    """The root as stored: absolute, normalised, no trailing slash."""
    raw = os.fsencode(root)
    if not raw.startswith(b"/"):
        raise VDirError(f"VDir root {os.fsdecode(raw)!r} is not an absolute path")
    raw = os.path.normpath(raw)
    if raw.startswith(b"//"):
        raw = b"/" + raw.lstrip(b"/")
    if b"\0" in raw or len(raw) >= layout.ROOT_MAX:
        raise VDirError(f"VDir root {os.fsdecode(raw)[:80]!r}… is longer than {layout.ROOT_MAX - 1} bytes"
                        if len(raw) >= layout.ROOT_MAX else f"VDir root {os.fsdecode(raw)!r} contains NUL")
    return raw


def project_id_bytes(project_id: str) -> bytes:
    """Header form of a project id: its first 16 bytes (the id is 32 hex characters)."""
    try:
        raw = bytes.fromhex(project_id)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 16:
        raise VDirError(f"bad project id {project_id!r}: expected 32 hex characters")
    return raw


def show_path(path: bytes) -> str:
    text = os.fsdecode(path)
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}… ({len(path)} bytes)"


def check_path(path: bytes) -> None:
    """A VDir key: relative to the root ('' is the root), '/'-separated, no NUL, normalised."""
    if not isinstance(path, bytes):
        raise VDirError(f"VDir path {path!r} must be bytes")
    if len(path) > layout.REL_MAX:
        raise VDirError(f"VDir path {show_path(path)} is longer than {layout.REL_MAX} bytes")
    if b"\0" in path:
        raise VDirError(f"VDir path {show_path(path)} contains a NUL byte")
    if path and (b"/" + path + b"/").count(b"//") + (b"/" + path + b"/").count(b"/./") \
            + (b"/" + path + b"/").count(b"/../"):
        raise VDirError(f"VDir path {show_path(path)} is not a normalised path relative to the root")


def pack_entry(entry: Entry, path_hash: int, path_off: int, flags: int | None = None) -> bytes:
    """The 128-byte record of `entry` whose path string sits at `path_off` (same bytes as
    Entry.pack_entry, in one struct call; `flags` overrides the entry's).  Its checksum is 0:
    the writer seals it in the mapping (vrift_seal) when it publishes."""
    ms, mn = divmod(entry.mtime_ns, 1_000_000_000)
    cs, cn = divmod(entry.ctime_ns, 1_000_000_000)
    flags = entry.flags if flags is None else flags
    try:
        return layout.ENTRY.pack(path_hash, path_off, len(entry.path), flags, entry.mode, entry.dev, entry.ino,
                                 entry.nlink, 0, entry.uid, entry.gid, entry.size, entry.blocks, ms, cs, mn, cn,
                                 entry.digest)
    except struct.error as exc:
        raise VDirError(f"VDir entry {show_path(entry.path)}: a field does not fit its record ({exc})") from None


def unpack_entry(raw: bytes | memoryview, path: bytes) -> Entry:
    """An Entry from a 128-byte shared-memory record; `path` comes from the string area."""
    return Entry.unpack_record(path, raw[layout.RECORD_OFFSET:layout.ENTRY_SIZE])


def entry_path(view: memoryview, header: dict, raw: bytes | memoryview) -> bytes:
    off, length = struct.unpack_from("<II", raw, ENT["path_off"][0])
    if off + length > header["strings_capacity"]:
        raise VDirCorrupt(f"entry path at {off}+{length} lies outside the string area")
    start = header["strings_offset"] + off
    return bytes(view[start:start + length])


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
