"""The hot tier on real shared-memory files: publish, look up (through the C seqlock lookup),
update, delete, grow, retire/remap, reuse, and refuse damaged files."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vrift.vdir import layout, native, shm
from vrift.vdir.entry import Entry
from vrift.vdir.shm import VDirCorrupt, VDirError, VDirReader, VDirWriter
from vrift.vdir.shm_format import HDR, read_header

PID = "0123456789abcdef0123456789abcdef"
ROOT = "/srv/project"


def make_entry(path: bytes, n: int, flags: int = 0) -> Entry:
    """An entry whose every field is distinct and derived from n."""
    return Entry(path, 0o100644 | (n & 0o7), 2**40 + n, 2**50 + n, n % 9 + 1, 1000 + n, 2000 + n, 4096 * n + 7,
                 8 * n + 1, 1_700_000_000_000_000_000 + n * 1_000_003, 1_700_000_100_000_000_000 + n * 999_983,
                 bytes((n + i) % 256 for i in range(32)), flags)


@pytest.fixture
def vdir(home) -> Path:
    return home.vdir_path(PID)


@pytest.fixture
def writer(vdir):
    w = VDirWriter.create(vdir, ROOT, PID)
    yield w
    w.close(unlink=True)


def header(path: Path) -> dict:
    with open(path, "rb") as f:
        return read_header(memoryview(f.read(layout.HEADER.size)))


def slots(path: Path) -> list[tuple[int, int]]:
    h = header(path)
    with open(path, "rb") as f:
        f.seek(h["table_offset"])
        raw = f.read(h["table_capacity"] * layout.SLOT_SIZE)
    return [layout.SLOT.unpack_from(raw, i * layout.SLOT_SIZE) for i in range(h["table_capacity"])]


# ------------------------------------------------------------------ round trips

def test_put_lookup_update_delete_round_trip_every_field(writer, vdir):
    e = make_entry(b"src/main.c", 5, layout.F_SYMLINK)
    writer.put(e, index_generation=11)
    assert stat.S_IMODE(os.stat(vdir).st_mode) == 0o600
    reader = VDirReader(vdir)
    try:
        assert writer.lookup(b"src/main.c") == e
        assert reader.lookup(b"src/main.c") == e
        assert (reader.root, reader.project_id, reader.index_generation, reader.entry_count) == (ROOT, PID, 11, 1)
        gen = writer.publish_generation
        updated = make_entry(b"src/main.c", 77, layout.F_DIR)
        writer.put(updated)
        assert reader.lookup(b"src/main.c") == updated
        assert writer.publish_generation == gen + 2 and writer.index_generation == 11
        assert header(vdir)["entry_used"] == 1  # rewritten in place, path string reused
        writer.put(Entry.deleted(b"src/main.c"), index_generation=12)
        gone = reader.lookup(b"src/main.c")
        assert gone is not None and gone.is_deleted and gone.size == 0
        assert len(writer) == 0 and reader.entry_count == 0 and reader.index_generation == 12
        writer.put(e)
        assert reader.lookup(b"src/main.c") == e and len(writer) == 1 and header(vdir)["entry_used"] == 1
        assert reader.lookup(b"src/main.h") is None
    finally:
        reader.close()


def test_root_spaces_binary_and_long_paths(writer):
    names = [b"", b"with space/and  two", b"\xff\xfe\x80latin1-\xe9", b"a" * 4095,
             b"/".join([b"d" * 200] * 20)[:4095], b"x\ny\tz", b"-"]
    entries = [make_entry(p, i) for i, p in enumerate(names)]
    writer.put_many(entries)
    for e in entries:
        assert writer.lookup(e.path) == e
    assert writer.lookup(b"a" * 4094) is None
    assert writer.lookup(b"a" * 4096) is None
    assert sorted(e.path for e in writer.entries()) == sorted(names)


@pytest.mark.parametrize("bad,words", [
    (b"b" * 4096, "longer than 4095"), (b"a\0b", "NUL"), (b"/abs", "not a normalised"),
    (b"dir/", "not a normalised"), (b"a//b", "not a normalised"), (b"a/./b", "not a normalised"),
    (b"../up", "not a normalised"), (b".", "not a normalised"),
])
def test_bad_paths_are_rejected_and_nothing_is_written(writer, bad, words):
    gen = writer.publish_generation
    with pytest.raises(VDirError, match=words) as info:
        writer.put_many([make_entry(b"good", 1), make_entry(bad, 2)])
    assert os.fsdecode(bad[:20]) in str(info.value) or repr(os.fsdecode(bad[:20]))[1:-1] in str(info.value)
    assert "\n" not in str(info.value)
    assert writer.lookup(b"good") is None and writer.publish_generation == gen


def test_digest_must_be_32_bytes_and_fields_must_fit(writer):
    with pytest.raises(VDirError, match="digest is 3 bytes"):
        writer.put(Entry(b"f", 0o100644, 1, 1, 1, 0, 0, 0, 0, 0, 0, b"abc"))
    with pytest.raises(VDirError, match="'big': a field does not fit"):
        writer.put_many([make_entry(b"ok", 1), Entry(b"big", 0o100644, 1, 1, 1, 2**32, 0, 0, 0, 0, 0)])
    assert writer.lookup(b"ok") is None and len(writer) == 0


# ------------------------------------------------------------------ collisions, bloom, tombstones

def same_slot_paths(capacity: int, want: int) -> list[bytes]:
    target = layout.fnv1a64(b"c0") & (capacity - 1)
    found, i = [b"c0"], 1
    while len(found) < want:
        p = b"c%d" % i
        if layout.fnv1a64(p) & (capacity - 1) == target:
            found.append(p)
        i += 1
    return found


def test_paths_sharing_a_slot_are_told_apart_and_chains_survive_tombstones(writer, vdir):
    cap = header(vdir)["table_capacity"]
    paths = same_slot_paths(cap, 4)
    writer.put_many([make_entry(p, i) for i, p in enumerate(paths)])
    home_slot = layout.fnv1a64(paths[0]) & (cap - 1)
    table = slots(vdir)
    assert [table[(home_slot + k) % cap][0] for k in range(4)] == [1, 2, 3, 4]  # one probe chain
    for i, p in enumerate(paths):
        assert writer.lookup(p) == make_entry(p, i)
    writer.put(Entry.deleted(paths[1]))
    assert writer.lookup(paths[1]).is_deleted
    assert writer.lookup(paths[3]) == make_entry(paths[3], 3)  # found past the tombstone
    writer.put(make_entry(paths[1], 9))
    assert writer.lookup(paths[1]) == make_entry(paths[1], 9) and header(vdir)["entry_used"] == 4


def test_full_hash_collisions_are_told_apart_by_the_path(writer, vdir, monkeypatch):
    """Decoys filed under exactly the hash of b"a" (both halves): the C lookup must compare paths."""
    target = layout.fnv1a64(b"a")
    real = shm.path_hash
    monkeypatch.setattr(shm, "path_hash", lambda p: target if p in (b"x", b"decoy") else real(p))
    writer.put(make_entry(b"x", 1))        # same hash, same length as b"a"
    writer.put(make_entry(b"decoy", 2))    # same hash, other length
    writer.put(make_entry(b"a", 3))        # lands behind both in the same chain
    h = header(vdir)
    table = slots(vdir)
    home_slot = target & (h["table_capacity"] - 1)
    assert [table[home_slot + k] for k in range(3)] == [(n, target >> 32) for n in (1, 2, 3)]
    assert writer.lookup(b"a") == make_entry(b"a", 3)
    writer.put(make_entry(b"a", 4))        # the writer's own probe must update a, not a decoy
    writer.put(make_entry(b"x", 5))
    assert writer.lookup(b"a") == make_entry(b"a", 4)
    by_path = {e.path: e for e in writer.entries()}
    assert by_path[b"x"] == make_entry(b"x", 5) and by_path[b"decoy"] == make_entry(b"decoy", 2)
    # The C lookup hashes b"x" itself; filed under another hash it is not found, never confused.
    assert writer.lookup(b"x") is None and writer.lookup(b"decoy") is None
    assert writer.set_flags(b"a", layout.F_DIRTY)
    assert writer.lookup(b"a").flags == layout.F_DIRTY
    assert {e.path: e.flags for e in writer.entries()}[b"x"] == 0


def test_bloom_filter_miss_is_a_miss_without_the_table(writer, vdir):
    writer.put(make_entry(b"only", 1))
    h = header(vdir)
    hsh = layout.fnv1a64(b"only")
    bit = hsh & layout.BLOOM_MASK
    fd = os.open(vdir, os.O_RDWR)
    try:
        at = h["bloom_offset"] + (bit >> 3)
        byte = os.pread(fd, 1, at)[0]
        os.pwrite(fd, bytes([byte & ~(1 << (bit & 7))]), at)  # the entry and its slot stay intact
        assert writer.lookup(b"only") is None
        os.pwrite(fd, bytes([byte]), at)
        assert writer.lookup(b"only") == make_entry(b"only", 1)
    finally:
        os.close(fd)
    bloom = Path(vdir).read_bytes()[h["bloom_offset"]:h["bloom_offset"] + layout.BLOOM_BYTES]
    assert sum(bin(b).count("1") for b in bloom) <= 2


def test_flags_or_and_clear_are_per_bit(writer):
    writer.put(make_entry(b"f", 1, layout.F_SYMLINK))
    assert writer.set_flags(b"f", layout.F_DIRTY | layout.F_COMPLETE_DIR)
    assert writer.lookup(b"f").flags == layout.F_SYMLINK | layout.F_DIRTY | layout.F_COMPLETE_DIR
    assert writer.clear_flags(b"f", layout.F_DIRTY)
    assert writer.lookup(b"f").flags == layout.F_SYMLINK | layout.F_COMPLETE_DIR
    assert not writer.set_flags(b"missing", layout.F_DIRTY) and not writer.clear_flags(b"missing", 1)


def test_keep_flags_preserves_a_clients_dirty_bit(writer):
    writer.put(make_entry(b"f", 1))
    writer.set_flags(b"f", layout.F_DIRTY)
    writer.put(make_entry(b"f", 2), keep_flags=layout.F_DIRTY)
    assert writer.lookup(b"f") == make_entry(b"f", 2, layout.F_DIRTY)
    writer.put(make_entry(b"f", 3))
    assert writer.lookup(b"f") == make_entry(b"f", 3)


# ------------------------------------------------------------------ growth, retire, remap

def test_growth_from_tiny_to_50000_keeps_every_entry(writer, vdir):
    reader = VDirReader(vdir)
    first_inode = os.stat(vdir).st_ino
    old_fd = os.open(vdir, os.O_RDONLY)  # keeps the first file readable after it is replaced
    try:
        sizes, n = set(), 0
        for batch in range(100):
            writer.put_many([make_entry(b"g/%d/file%d.o" % (i % 37, i), i) for i in range(n, n + 500)],
                            index_generation=batch)
            n += 500
            sizes.add(writer.size_bytes)
        assert len(sizes) >= 8, "expected several growths"
        assert len(writer) == n == 50_000 and reader.entry_count == 50_000
        flags = int.from_bytes(os.pread(old_fd, 4, HDR["header_flags"][0]), "little")
        assert flags & layout.H_RETIRED
        assert os.stat(vdir).st_ino != first_inode
        for i in range(n):
            p = b"g/%d/file%d.o" % (i % 37, i)
            assert reader.lookup(p) == make_entry(p, i), p
        assert reader.index_generation == 99
        assert os.listdir(vdir.parent) == [vdir.name]  # no temporary file left behind
        assert stat.S_IMODE(os.stat(vdir).st_mode) == 0o600
        h = header(vdir)
        assert h["entry_used"] * layout.MAX_LOAD_DEN <= h["table_capacity"] * layout.MAX_LOAD_NUM
    finally:
        os.close(old_fd)
        reader.close()


def test_growth_compacts_clean_tombstones_and_keeps_dirty_ones(writer, vdir):
    writer.put_many([make_entry(b"t%d" % i, i) for i in range(10)])
    writer.put_many([Entry.deleted(b"t%d" % i) for i in range(5)])
    writer.set_flags(b"t0", layout.F_DIRTY)
    writer.set_flags(b"t7", layout.F_DIRTY)
    size = writer.size_bytes
    writer.put_many([make_entry(b"n%d" % i, i) for i in range(100)])
    assert writer.size_bytes > size
    assert writer.lookup(b"t0").flags == layout.F_DELETED | layout.F_DIRTY
    assert all(writer.lookup(b"t%d" % i) is None for i in range(1, 5))
    assert writer.lookup(b"t7") == make_entry(b"t7", 7, layout.F_DIRTY)
    assert len(writer) == 105 and header(vdir)["entry_used"] == 106


def test_dirty_set_by_a_client_during_growth_is_carried_over(writer, vdir, monkeypatch):
    """A client ORs DIRTY into the old file after the rebuild copied it, before RETIRED: the
    writer must find it after retiring and set it in the new file (libvrift's protocol)."""
    writer.put_many([make_entry(b"live", 1), make_entry(b"gone", 2)])
    writer.put(Entry.deleted(b"gone"))
    fd = os.open(vdir, os.O_RDWR)
    client = native.Mapping(fd, os.fstat(fd).st_size, writable=True)  # as libvrift maps for DIRTY
    os.close(fd)
    original = VDirWriter._write_file

    def client_writes_meanwhile(path, geo, values, root_b, fill):
        for index in range(2):
            native.lib().vrift_flags_or(client.base, client.size, index, layout.F_DIRTY)
        return original(path, geo, values, root_b, fill)

    monkeypatch.setattr(VDirWriter, "_write_file", staticmethod(client_writes_meanwhile))
    try:
        writer.put_many([make_entry(b"more%d" % i, i) for i in range(40)])
        assert header(vdir)["file_size"] != client.size
        assert writer.lookup(b"live") == make_entry(b"live", 1, layout.F_DIRTY)
        assert writer.lookup(b"gone").flags == layout.F_DELETED | layout.F_DIRTY
    finally:
        client.close()


def test_bulk_growth_copies_records_whole_and_carries_dirty(writer, vdir, monkeypatch):
    """Growth by new paths only, no tombstone (a first ingest): the old records are copied as one
    block; every entry stays findable and a client's DIRTY set during the rebuild is carried."""
    writer.put_many([make_entry(b"a%d" % i, i) for i in range(10)])
    writer.set_flags(b"a3", layout.F_DIRTY)
    fd = os.open(vdir, os.O_RDWR)
    client = native.Mapping(fd, os.fstat(fd).st_size, writable=True)
    os.close(fd)
    original = VDirWriter._write_file

    def client_writes_meanwhile(path, geo, values, root_b, fill):
        native.lib().vrift_flags_or(client.base, client.size, 5, layout.F_DIRTY)  # a5's record
        return original(path, geo, values, root_b, fill)

    monkeypatch.setattr(VDirWriter, "_write_file", staticmethod(client_writes_meanwhile))
    try:
        writer.put_many([make_entry(b"b%d" % i, 100 + i) for i in range(100)])
        assert header(vdir)["file_size"] != client.size
    finally:
        client.close()
    reader = VDirReader(vdir)
    try:
        for i in range(10):
            flags = layout.F_DIRTY if i in (3, 5) else 0
            assert reader.lookup(b"a%d" % i) == make_entry(b"a%d" % i, i, flags)
        for i in range(100):
            assert reader.lookup(b"b%d" % i) == make_entry(b"b%d" % i, 100 + i)
        assert reader.lookup(b"c") is None
        assert header(vdir)["entry_count"] == 110
    finally:
        reader.close()


def test_create_over_an_old_vdir_retires_it_and_readers_follow(vdir):
    w1 = VDirWriter.create(vdir, ROOT, PID)
    w1.put(make_entry(b"old", 1))
    reader = VDirReader(vdir)
    old_fd = os.open(vdir, os.O_RDONLY)
    try:
        assert reader.lookup(b"old") == make_entry(b"old", 1)
        gen = w1.publish_generation
        w2 = VDirWriter.create(vdir, ROOT, PID, index_generation=3)
        w2.put(make_entry(b"new", 2))
        flags = int.from_bytes(os.pread(old_fd, 4, HDR["header_flags"][0]), "little")
        assert flags & layout.H_RETIRED
        assert reader.lookup(b"new") == make_entry(b"new", 2) and reader.lookup(b"old") is None
        assert reader.index_generation == 3 and w2.publish_generation > gen
        w1.close()
        w2.close(unlink=True)
        assert not vdir.exists()
    finally:
        os.close(old_fd)
        reader.close()


def test_reader_follows_a_replaced_inode_without_retired(vdir, home):
    w1 = VDirWriter.create(vdir, ROOT, PID)
    w1.put(make_entry(b"one", 1))
    reader = VDirReader(vdir)
    other = home.shm_dir / "elsewhere"
    w2 = VDirWriter.create(other, ROOT, PID)
    w2.put(make_entry(b"two", 2))
    try:
        assert reader.lookup(b"one") is not None
        os.replace(other, vdir)  # a writer that died between rename and retire
        assert reader.lookup(b"two") == make_entry(b"two", 2) and reader.lookup(b"one") is None
    finally:
        reader.close()
        w1.close()
        w2.close(unlink=True)


def test_open_existing_reuses_a_valid_file(vdir):
    w = VDirWriter.create(vdir, ROOT, PID, capacity_hint=100)
    w.put_many([make_entry(b"k%d" % i, i) for i in range(50)], index_generation=42)
    w.close()
    w = VDirWriter.open_existing(vdir, ROOT + "/", PID)
    try:
        assert (w.index_generation, len(w), w.root) == (42, 50, ROOT)
        assert w.lookup(b"k7") == make_entry(b"k7", 7)
        w.put(make_entry(b"k7", 70))
        w.put_many([make_entry(b"z%d" % i, i) for i in range(200)])  # and it still grows
        assert w.lookup(b"k7") == make_entry(b"k7", 70) and len(w) == 250
    finally:
        w.close()
    with pytest.raises(VDirCorrupt, match="root is '/srv/project', expected '/srv/other'"):
        VDirWriter.open_existing(vdir, "/srv/other", PID)
    with pytest.raises(VDirCorrupt, match="project id"):
        VDirWriter.open_existing(vdir, ROOT, "f" * 32)
    fd = os.open(vdir, os.O_RDWR)
    os.pwrite(fd, (7).to_bytes(8, "little"), HDR["generation"][0])
    os.close(fd)
    with pytest.raises(VDirCorrupt, match="publish was interrupted"):
        VDirWriter.open_existing(vdir, ROOT, PID)
    vdir.unlink()


def test_bad_create_arguments(vdir):
    with pytest.raises(VDirError, match="not an absolute path"):
        VDirWriter.create(vdir, "relative/root", PID)
    with pytest.raises(VDirError, match="bad project id"):
        VDirWriter.create(vdir, ROOT, "nothex")
    assert not vdir.exists() and os.listdir(vdir.parent) == []


def test_memory_per_file_at_100000_files(vdir):
    w = VDirWriter.create(vdir, ROOT, PID)
    try:
        w.put_many([make_entry(b"src/module_%03d/sub_%d/file_%06d.c" % (i % 500, i % 7, i), i) for i in range(100_000)])
        assert len(w) == 100_000
        per_file = w.size_bytes / 100_000
        assert per_file <= 256, f"{per_file:.1f} bytes per file"
        assert w.resident_bytes <= w.size_bytes
    finally:
        w.close(unlink=True)


# ------------------------------------------------------------------ damaged files

def damaged(vdir: Path, field: str, value: int) -> None:
    off, size = HDR[field]
    fd = os.open(vdir, os.O_RDWR)
    os.pwrite(fd, value.to_bytes(size, "little"), off)
    os.close(fd)


@pytest.mark.parametrize("field,value,words", [
    ("magic", 0x12345678, "bad magic 0x12345678"),
    ("version", 9, "unsupported version 9"),
    ("file_size", 123456, "header says 123456"),
    ("table_offset", 2**63, "slot table at offset"),
    ("strings_offset", 2**64 - 16, "string area at offset"),
    ("entries_offset", 100, "entry array at offset 100"),
    ("table_capacity", 48, "not a power of two"),
    ("entry_used", 2**31, "exceed capacity"),
    ("root_len", 0, "bad root path length"),
])
def test_damaged_header_is_refused_with_the_reason(writer, vdir, field, value, words):
    writer.put(make_entry(b"f", 1))
    damaged(vdir, field, value)
    with pytest.raises(VDirCorrupt, match=words) as info:
        VDirReader(vdir)
    assert str(vdir) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(VDirCorrupt, match=words):
        VDirWriter.open_existing(vdir, ROOT, PID)


def test_truncated_and_missing_files(writer, vdir, home):
    size = writer.size_bytes
    os.truncate(vdir, size - 4096)
    with pytest.raises(VDirCorrupt, match=f"file is {size - 4096} bytes but its header says {size}"):
        VDirReader(vdir)
    os.truncate(vdir, 100)
    with pytest.raises(VDirCorrupt, match="truncated: 100 bytes"):
        VDirReader(vdir)
    with pytest.raises(VDirError, match="does not exist"):
        VDirReader(home.shm_dir / "nothing")


GARBAGE_SCRIPT = textwrap.dedent(r"""
    import ctypes, os, random, sys, tempfile
    from vrift.vdir import layout, native
    from vrift.vdir.shm_format import HDR

    seed_file, template = sys.argv[1], open(sys.argv[2], "rb").read()
    rnd = random.Random(int(sys.argv[3]))
    lib = native.lib()
    out = ctypes.create_string_buffer(128)
    paths = [b"", b"f", b"src/a.c", b"x" * 300] + [rnd.randbytes(rnd.randrange(1, 40)) for _ in range(12)]

    def put(buf, field, value):
        off, size = HDR[field]
        buf[off:off + size] = (value % (1 << (8 * size))).to_bytes(size, "little")

    def garbage(kind):
        if kind == 0:   # noise of any size
            return bytearray(rnd.randbytes(rnd.choice([1, 64, 4096, 8192, 50000, 200000])))
        buf = bytearray(template)
        if kind == 1:   # a plausible header with random geometry
            for field in ("table_capacity", "entry_capacity", "bloom_offset", "table_offset",
                          "entries_offset", "strings_offset", "strings_capacity", "entry_used"):
                put(buf, field, rnd.choice([0, 1, 2**rnd.randrange(64), rnd.getrandbits(64), len(buf) - 8]))
        elif kind == 2:  # a valid header over random tables, entries and strings
            start = layout.HEADER_SIZE
            buf[start:] = rnd.randbytes(len(buf) - start)
        else:           # random bytes sprinkled anywhere
            for _ in range(200):
                at = rnd.randrange(len(buf))
                buf[at] = rnd.randrange(256)
        return buf

    lookups = 0
    for round_ in range(400):
        buf = garbage(round_ % 4)
        with open(seed_file, "wb") as f:
            f.write(buf)
        fd = os.open(seed_file, os.O_RDONLY)
        m = native.Mapping(fd, len(buf), writable=False)
        os.close(fd)
        lib.vrift_check(m.base, m.size)
        for p in paths:
            assert lib.vrift_find(m.base, m.size, p, len(p), out) in (layout.LOOKUP_CORRUPT, -1, 0, 1)
            lookups += 1
        m.close()
    print("lookups", lookups)
""")


def test_c_lookup_never_crashes_on_garbage(writer, vdir, home):
    writer.put_many([make_entry(b"src/a.c", 1), make_entry(b"f", 2)] +
                    [make_entry(b"p%d" % i, i) for i in range(300)])
    scratch = home.shm_dir / "garbage"
    proc = subprocess.run([sys.executable, "-c", GARBAGE_SCRIPT, str(scratch), str(vdir), "7"],
                          capture_output=True, text=True, timeout=120)
    scratch.unlink(missing_ok=True)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert proc.stdout.split() == ["lookups", str(400 * 16)]
