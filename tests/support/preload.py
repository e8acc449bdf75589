"""Helpers shared by the preload library's tests: build a real VDir for a real tree, run
processes under LD_PRELOAD, read the counters file, flip entry flags (as a client would)."""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

from vrift.native import preload_library
from vrift.vdir import layout
from vrift.vdir.entry import Entry

COUNTERS = ("STAT_SERVED", "STAT_PASSED", "STAT_OUTSIDE", "COMMITTED", "COMMIT_LOCAL", "PUBLISHED", "DIRECT",
            "INVALIDATED", "FALLBACKS", "DAEMON_ERRORS", "PROCESSES",
            "VDIR_CORRUPT")
COUNTERS_MAGIC = 0x56524354
COUNTERS_SIZE = 256


def index_tree(root: Path) -> list[Entry]:
    """Every path under root (not following symlinks), .vrift excluded, as index entries."""
    entries = [Entry.from_stat(b"", os.lstat(root))]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == str(root) and d == ".vrift")]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            entries.append(Entry.from_stat(os.fsencode(os.path.relpath(p, root)), os.lstat(p)))
    return entries


def build_vdir(path: Path, root: Path, entries: list[Entry], blksize: int = 4096) -> None:
    """A VDir file laid out as vrift/native/vrift_vdir.h describes, written in one go."""
    n = len(entries)
    cap = 16
    while n * layout.MAX_LOAD_DEN > cap * layout.MAX_LOAD_NUM:
        cap *= 2
    strings = b"".join(e.path for e in entries)
    off_bloom = layout.HEADER_SIZE
    off_table = off_bloom + layout.BLOOM_BYTES
    off_entries = off_table + cap * layout.SLOT_SIZE
    off_strings = off_entries + n * layout.ENTRY_SIZE
    size = off_strings + max(len(strings), 1)
    buf = bytearray(size)
    slots = [0] * cap
    soff = 0
    for i, e in enumerate(entries):
        h = layout.fnv1a64(e.path)
        for bit in (h & layout.BLOOM_MASK, (h >> 32) & layout.BLOOM_MASK):
            buf[off_bloom + (bit >> 3)] |= 1 << (bit & 7)
        j = h & (cap - 1)
        while slots[j]:
            j = (j + 1) & (cap - 1)
        slots[j] = i + 1
        layout.SLOT.pack_into(buf, off_table + j * layout.SLOT_SIZE, i + 1, h >> 32)
        buf[off_entries + i * layout.ENTRY_SIZE:off_entries + (i + 1) * layout.ENTRY_SIZE] = \
            layout.seal(e.pack_entry(h, soff))
        buf[off_strings + soff:off_strings + soff + len(e.path)] = e.path
        soff += len(e.path)
    root_b = os.fsencode(root)
    values = dict(magic=layout.MAGIC, version=layout.VERSION, generation=2, file_size=size,
                  header_size=layout.HEADER_SIZE, entry_size=layout.ENTRY_SIZE, entry_count=n, entry_used=n,
                  entry_capacity=n, table_capacity=cap, bloom_offset=off_bloom, table_offset=off_table,
                  entries_offset=off_entries, strings_offset=off_strings, strings_capacity=max(len(strings), 1),
                  strings_used=len(strings), header_flags=0, root_len=len(root_b), project_id=bytes(16),
                  index_generation=1, blksize=blksize, geometry_sum=0, heartbeat_ms=0)
    values["geometry_sum"] = layout.geometry_sum(values)
    layout.HEADER.pack_into(buf, 0, *(values[name] for name, _ in layout.HEADER_FIELDS))
    buf[layout.ROOT_OFFSET:layout.ROOT_OFFSET + len(root_b)] = root_b
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(buf)
    os.replace(tmp, path)


def _header(vdir: Path) -> dict:
    with open(vdir, "rb") as f:
        raw = f.read(layout.HEADER.size)
    return dict(zip((name for name, _ in layout.HEADER_FIELDS), layout.HEADER.unpack(raw)))


def entry_offset(vdir: Path, rel: bytes) -> int:
    """Byte offset of the entry for `rel` in the VDir file (dense scan)."""
    h = _header(vdir)
    data = Path(vdir).read_bytes()
    for i in range(h["entry_used"]):
        off = h["entries_offset"] + i * layout.ENTRY_SIZE
        _, path_off, path_len = struct.unpack_from("<QII", data, off)
        start = h["strings_offset"] + path_off
        if data[start:start + path_len] == rel:
            return off
    raise KeyError(rel)


def entry_flags(vdir: Path, rel: bytes) -> int:
    off = entry_offset(vdir, rel)
    with open(vdir, "rb") as f:
        f.seek(off + 16)
        return struct.unpack("<I", f.read(4))[0]


def set_flags(vdir: Path, rel: bytes, bits: int) -> None:
    """OR flag bits into an entry and reseal it (no process maps the file for writing meanwhile)."""
    off = entry_offset(vdir, rel)
    with open(vdir, "r+b") as f:
        f.seek(off)
        raw = bytearray(f.read(layout.ENTRY_SIZE))
        flags = struct.unpack_from("<I", raw, 16)[0]
        struct.pack_into("<I", raw, 16, flags | bits)
        f.seek(off)
        f.write(layout.seal(bytes(raw)))


def counters_file(path: Path) -> Path:
    """What `vrift wrap` creates: magic, version, zeros (vrift/preload/vrift_counters.h)."""
    data = struct.pack("<II", COUNTERS_MAGIC, 1) + bytes(COUNTERS_SIZE - 8)
    path.write_bytes(data)
    return path


def read_counters(path: Path) -> dict[str, int]:
    data = path.read_bytes()
    values = struct.unpack_from(f"<{len(COUNTERS)}Q", data, 16)
    return dict(zip(COUNTERS, values))


def preload_env(base: dict, root: Path, vdir: Path, counters: Path | None = None, **extra) -> dict:
    env = dict(base)
    env.update(LD_PRELOAD=str(preload_library()), VRIFT_PROJECT_ROOT=str(root), VRIFT_VDIR=str(vdir))
    for name in ("VRIFT_ENABLED", "VRIFT_FALLBACK_MODE", "VRIFT_SOCKET", "VRIFT_STAGING_DIR", "VRIFT_COUNTERS"):
        env.pop(name, None)
    if counters is not None:
        env["VRIFT_COUNTERS"] = str(counters)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def compile_c(source: str, out: Path) -> Path:
    """Compile a test program warning-free (-Wall -Wextra -Werror)."""
    src = out.with_suffix(".c")
    src.write_text(source)
    r = subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out
