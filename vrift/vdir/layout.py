"""Python mirror of vrift/native/vrift_vdir.h (checked against the header by tests/unit/test_layout.py)."""
from __future__ import annotations

import struct

MAGIC = 0x56524654
VERSION = 2
HEADER_SIZE = 8192
ROOT_OFFSET = 4096
ROOT_MAX = 4096
REL_MAX = 4095
BLOOM_BYTES = 32768
BLOOM_MASK = BLOOM_BYTES * 8 - 1
ENTRY_SIZE = 128
SLOT_SIZE = 8
MAX_LOAD_NUM, MAX_LOAD_DEN = 7, 10

F_DIRTY = 1
F_DELETED = 2
F_SYMLINK = 4
F_DIR = 8
F_COMPLETE_DIR = 16

H_RETIRED = 1
H_DEAD = 2
HEARTBEAT_STALE_MS = 3000
HEARTBEAT_EVERY = 1024
LOOKUP_CORRUPT = -2  # vrift_lookup: the entry failed its checksum

# Names in the shared-memory directory: <shm>/vrift-<euid>/vrift_vdir_<id16>
SHM_USER_DIR_PREFIX = "vrift-"
VDIR_NAME_PREFIX = "vrift_vdir_"
VDIR_ID_CHARS = 16
COUNTERS_NAME_PREFIX = "vrift_counters_"

RECORD_OFFSET = 16
RECORD_SIZE = ENTRY_SIZE - RECORD_OFFSET

# Header fields in order with their struct codes; offsets follow from "<" packing and are
# checked against the C header.
HEADER_FIELDS = (
    ("magic", "I"), ("version", "I"), ("generation", "Q"), ("file_size", "Q"),
    ("header_size", "I"), ("entry_size", "I"), ("entry_count", "I"), ("entry_used", "I"),
    ("entry_capacity", "I"), ("table_capacity", "I"), ("bloom_offset", "Q"), ("table_offset", "Q"),
    ("entries_offset", "Q"), ("strings_offset", "Q"), ("strings_capacity", "Q"), ("strings_used", "Q"),
    ("header_flags", "I"), ("root_len", "I"), ("project_id", "16s"), ("index_generation", "Q"),
    ("blksize", "I"), ("geometry_sum", "I"), ("heartbeat_ms", "Q"),
)
HEADER = struct.Struct("<" + "".join(code for _, code in HEADER_FIELDS))

ENTRY_FIELDS = (
    ("path_hash", "Q"), ("path_off", "I"), ("path_len", "I"), ("flags", "I"), ("mode", "I"),
    ("dev", "Q"), ("ino", "Q"), ("nlink", "I"), ("checksum", "I"), ("uid", "I"), ("gid", "I"),
    ("size", "q"),
    ("blocks", "q"), ("mtime_sec", "q"), ("ctime_sec", "q"), ("mtime_nsec", "I"),
    ("ctime_nsec", "I"), ("digest", "32s"),
)
ENTRY = struct.Struct("<" + "".join(code for _, code in ENTRY_FIELDS))
# The LMDB/WAL record: the entry from `flags` on.
RECORD = struct.Struct("<" + "".join(code for _, code in ENTRY_FIELDS[3:]))
SLOT = struct.Struct("<II")

assert HEADER.size == 144 and ENTRY.size == ENTRY_SIZE and RECORD.size == RECORD_SIZE


def field_offsets(fields) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) as "<" packing lays them out."""
    out, off = {}, 0
    for name, code in fields:
        size = struct.calcsize("<" + code)
        out[name] = (off, size)
        off += size
    return out


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


_M64 = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def entry_checksum(raw: bytes) -> int:
    """vrift_entry_sum() of a 128-byte entry (a slow mirror for tests; the writer seals in C)."""
    w = list(struct.unpack("<16Q", raw))
    w[2] &= ~F_DIRTY & _M64
    w[5] &= 0xFFFFFFFF
    a, b = 0x243F6A8885A308D3, 0x13198A2E03707344
    for i in range(0, 16, 2):
        a = (_rotl(a ^ w[i], 29) * 0x9E3779B97F4A7C15) & _M64
        b = (_rotl(b ^ w[i + 1], 31) * 0xC2B2AE3D27D4EB4F) & _M64
    h = a ^ _rotl(b, 17)
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 29
    return h & 0xFFFFFFFF


def seal(raw: bytes) -> bytes:
    """A 128-byte entry with its checksum filled in."""
    at = field_offsets(ENTRY_FIELDS)["checksum"][0]
    return raw[:at] + struct.pack("<I", entry_checksum(raw)) + raw[at + 4:]


def geometry_sum(h: dict) -> int:
    """vrift_geometry_sum() of a header's region offsets and capacities."""
    w = (h["bloom_offset"], h["table_offset"], h["entries_offset"], h["strings_offset"], h["strings_capacity"],
         (h["table_capacity"] << 32) | h["entry_capacity"])
    x = 0x9E3779B97F4A7C15
    for v in w:
        x = (_rotl(x ^ v, 27) * 0xFF51AFD7ED558CCD) & _M64
    return (x ^ (x >> 32)) & 0xFFFFFFFF
