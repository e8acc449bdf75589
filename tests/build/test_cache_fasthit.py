"""Hits decided and replayed by the preload library from the daemon's action table
(docs/cache.md, "The action table"): real make and ninja builds with gcc, real daemons, compared
byte for byte with plain builds; the table's layout against its C header; every way the fast
path must step aside (an edited input inside or outside the project, a DIRTY input, a damaged
blob or record, a daemon killed after a fast hit)."""
from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import signal
import struct
from pathlib import Path

import blake3
import pytest

from support.build import let_clock_tick, plain, require_tools, vrift
from support.daemon import daemon_pid, daemons, vdir_entry  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side
from vrift.cache import fasttable
from vrift.cas import CAS
from vrift.daemon.client import connect_project, wait_for
from vrift.identity import Project
from vrift.vdir import layout, native

MASK64 = (1 << 64) - 1


# -- the layout and the functions both sides compute -----------------------------------------------
@pytest.mark.parametrize("name,value", [
    ("VRIFT_ACTIONS_MAGIC", fasttable.MAGIC), ("VRIFT_ACTIONS_VERSION", fasttable.VERSION),
    ("VRIFT_ACTIONS_HEADER_SIZE", fasttable.HEADER_SIZE), ("VRIFT_ACTIONS_CAS_OFFSET", fasttable.CAS_OFFSET),
    ("VRIFT_ACTIONS_CAS_MAX", fasttable.CAS_MAX), ("VRIFT_ACTIONS_SLOT_SIZE", fasttable.SLOT.size),
    ("VRIFT_ACTIONS_RECORD_HEAD", fasttable.RECORD.size), ("VRIFT_ACTIONS_CHECK_HEAD", fasttable.CHECK.size),
    ("VRIFT_ACTIONS_OUTPUT_HEAD", fasttable.OUTPUT.size), ("VRIFT_CK_FILE", fasttable.CK_FILE),
    ("VRIFT_CK_ABSENT", fasttable.CK_ABSENT), ("VRIFT_CK_STAT", fasttable.CK_STAT), ("VRIFT_CK_FOUND", fasttable.CK_FOUND),
    ("VRIFT_CM_TYPE", fasttable.CM_TYPE), ("VRIFT_CM_PERM", fasttable.CM_PERM), ("VRIFT_CM_X", fasttable.CM_X),
    ("VRIFT_CM_SIZE", fasttable.CM_SIZE), ("VRIFT_CM_MTIME", fasttable.CM_MTIME),
    ("VRIFT_CM_TARGET", fasttable.CM_TARGET), ("VRIFT_OUT_FILE", fasttable.OUT_FILE),
    ("VRIFT_OUT_DIR", fasttable.OUT_DIR),
])
def test_table_constants_match_the_c_header(name, value):
    assert native.lib().vrift_layout_constant(name.encode()) == value


def test_table_name_matches_the_c_header():
    assert native.lib().vrift_layout_string(b"VRIFT_ACTIONS_NAME_PREFIX") == fasttable.NAME_PREFIX.encode()
    assert fasttable.HEADER.size == 60  # header_sum follows


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK64


def reference_sum64(data: bytes) -> int:
    """vrift_act_sum64 as the header describes it, written again in Python."""
    a, b = 0x243F6A8885A308D3, 0x13198A2E03707344
    i = 0
    while i + 16 <= len(data):
        w0, w1 = struct.unpack_from("<QQ", data, i)
        a = _rotl(a ^ w0, 29) * 0x9E3779B97F4A7C15 & MASK64
        b = _rotl(b ^ w1, 31) * 0xC2B2AE3D27D4EB4F & MASK64
        i += 16
    t0, t1 = struct.unpack("<QQ", data[i:].ljust(16, b"\0"))
    a = _rotl(a ^ t0, 29) * 0x9E3779B97F4A7C15 & MASK64
    b = _rotl(b ^ t1, 31) * 0xC2B2AE3D27D4EB4F & MASK64
    h = a ^ _rotl(b, 17) ^ (len(data) * 0xFF51AFD7ED558CCD & MASK64)
    h ^= h >> 33
    h = h * 0xFF51AFD7ED558CCD & MASK64
    h ^= h >> 29
    return h


def reference_fnv(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in data:
        h = (h ^ c) * 0x100000001B3 & MASK64
    return h


def test_checksum_and_key_hash_agree_with_their_description():
    rnd = random.Random(9)
    samples = [b"", b"a", bytes(15), bytes(16), bytes(17), b"\xff" * 33] + \
              [rnd.randbytes(rnd.randrange(0, 300)) for _ in range(300)]
    for data in samples:
        assert fasttable.sum64(data) == reference_sum64(data), data
        assert fasttable.key_hash(data) == reference_fnv(data), data
        h = reference_sum64(data)
        assert fasttable.sum32(data) == (h ^ (h >> 32)) & 0xFFFFFFFF
    # one flipped bit anywhere changes the checksum
    data = rnd.randbytes(200)
    for bit in range(0, 200 * 8, 7):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        assert fasttable.sum64(bytes(flipped)) != fasttable.sum64(data)


def test_identity_is_the_lookup_fields_without_pid_action_and_stdin():
    fields = [(3, b"\1\0\0\0"), (1, b"/usr/bin/cc"), (5, b"/p"), (17, b"cc"), (17, b"-c"), (18, b"PATH=/bin"),
              (22, b"out=pipe err=out"), (31, b"\x12\0\0\0"), (30, b"/p/in"), (19, b"0123456789abcdef")]
    ident = fasttable.identity(fields)
    expect = b"".join(struct.pack("<HI", t, len(v)) + v for t, v in fields if t not in (3, 19, 30))
    assert ident == expect
    assert fasttable.identity(fields[:4] + [(17, b"-O2")] + fields[4:]) != ident  # argv counts


# -- real builds ----------------------------------------------------------------------------------
MAKEFILE = """\
CFLAGS = -O0 -Iinc -I{ext}
OBJ = build/a.o build/b.o build/main.o
build/app: $(OBJ)
\tcc -o $@ $(OBJ)
build/%.o: src/%.c | build
\tcc $(CFLAGS) -c $< -o $@
build:
\tmkdir -p build
"""

NINJA = """\
cflags = -O0 -Iinc -I{ext}
rule cc
  command = cc $cflags -c $in -o $out
rule link
  command = cc -o $out $in
build build/a.o: cc src/a.c
build build/b.o: cc src/b.c
build build/main.o: cc src/main.c
build build/app: link build/a.o build/b.o build/main.o
"""

SOURCES = {
    "inc/common.h": "#define K 3\n",
    "src/a.c": '#include "common.h"\n#include "ext.h"\nint a(void) { return K + E; }\n',
    "src/b.c": '#include "common.h"\nint b(void) { return K * 2; }\n',
    "src/main.c": "#include <stdio.h>\nint a(void);\nint b(void);\nint main(void) { printf(\"%d\\n\", a() + b()); return 0; }\n",
}
OUTPUTS = ("build/a.o", "build/b.o", "build/main.o", "build/app")


def write_project(root: Path, ext: Path, tool: str) -> Path:
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / ".vrift.yaml").write_text("")
    (root / ("Makefile" if tool == "make" else "build.ninja")).write_text(
        (MAKEFILE if tool == "make" else NINJA).format(ext=ext))
    if tool == "ninja":
        (root / "build").mkdir(exist_ok=True)
    return root


def build_cmd(tool: str) -> list[str]:
    return [tool, "-j2"]


def clean(root: Path, tool: str) -> None:
    for rel in OUTPUTS:
        try:
            os.unlink(root / rel)
        except FileNotFoundError:
            pass
    if tool == "make":
        shutil.rmtree(root / "build", ignore_errors=True)


def same_outputs(a: Path, b: Path) -> None:
    for rel in OUTPUTS:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), f"{rel} differs from the plain build"
    assert os.access(a / "build/app", os.X_OK)


def fast_hits(root: Path) -> int:
    return int(json.loads(vrift("cache", "stats", "--json", cwd=root, check=True).stdout).get("fast_hits", 0))


def fast_hits_reach(root: Path, n: int) -> int:
    """The daemon hears of fast hits by a message nobody waits for: wait until it has read them."""
    seen = []
    wait_for(lambda: seen.append(fast_hits(root)) or seen[-1] >= n, 10)
    return seen[-1]


class Twin:
    """A project built wrapped and its reference built plain, with one include dir outside both."""

    def __init__(self, base: Path, tool: str, home):
        require_tools(tool, "cc")
        self.tool = tool
        self.home = home
        self.ext = base / "ext"
        self.ext.mkdir()
        (self.ext / "ext.h").write_text("#define E 10\n")
        self.ref = write_project(base / "ref", self.ext, tool)
        self.proj = write_project(base / "proj", self.ext, tool)

    def plain(self):
        plain(*build_cmd(self.tool), cwd=self.ref)

    def wrapped(self, env=None):
        return vrift("wrap", *build_cmd(self.tool), cwd=self.proj, check=True, env=env)

    def rebuild(self, env=None):
        """Both trees cleaned and built again, the wrapped one checked against the plain one;
        returns (fast hits before the wrapped build, its result)."""
        self.clean_both()
        self.plain()
        before = fast_hits(self.proj)
        result = self.wrapped(env)
        same_outputs(self.proj, self.ref)
        return before, result

    def clean_both(self):
        clean(self.ref, self.tool)
        clean(self.proj, self.tool)

    def edit(self, rel: str, text: str):
        let_clock_tick()
        for root in (self.ref, self.proj):
            (root / rel).write_text(text)

    def cold(self, records: int = 4):
        """The first build; returns once the daemon has published its records (a moment
        after each action's end) and has no table write still to come."""
        self.plain()
        r = self.wrapped()
        same_outputs(self.proj, self.ref)
        assert wait_for(lambda: table_records(table_path(self)) >= records and self.table_settled(), 10), \
            "records not published"
        return r

    def table_settled(self) -> bool:
        """Nothing queued for the recorder and no table snapshot still to be written: a test
        that damages the file must not race the daemon's next write of it."""
        with connect_project(self.home, self.project()) as c:
            s = c.cache_stats()["cache"]
        return s["recorder_queued"] == 0 and not s["table"]["write_pending"]

    def project(self) -> Project:
        return Project.at(self.proj)


@pytest.fixture(params=["make", "ninja"])
def twin(request, tmp_path, daemons):
    return Twin(tmp_path, request.param, daemons)


@needs_c_side
def test_warm_rebuild_after_clean_is_replayed_by_the_library(twin):
    twin.cold()
    before, warm = twin.rebuild()
    hits, misses, _ = cache_counts(warm.stderr)
    assert misses == 0 and hits >= 4, warm.stderr
    # the three compiles at least (the link reads objects just replayed: it may go to the daemon)
    assert fast_hits_reach(twin.proj, before + 3) >= before + 3
    # the daemon indexed the replayed outputs, with their digests, and cleared DIRTY
    for rel in OUTPUTS:
        digest = blake3.blake3((twin.proj / rel).read_bytes()).digest()

        def indexed(rel=rel, digest=digest):
            e = vdir_entry(twin.home, twin.project(), rel)
            return e is not None and not e.flags & (layout.F_DIRTY | layout.F_DELETED) and e.digest == digest

        assert wait_for(indexed, 10), rel
    # and again: the table keeps serving, the summary counts the hits
    twin.clean_both()
    twin.plain()
    again = twin.wrapped()
    same_outputs(twin.proj, twin.ref)
    assert cache_counts(again.stderr)[:2] == (hits, 0), again.stderr
    assert fast_hits_reach(twin.proj, before + 6) >= before + 6


@needs_c_side
@pytest.mark.parametrize("where", ["project", "outside"])
def test_an_edited_input_is_never_replayed(twin, where):
    twin.cold()
    before = fast_hits(twin.proj)
    if where == "project":
        twin.edit("inc/common.h", "#define K 4\n")
    else:  # a header in an include dir outside the project: a lstat identity only
        let_clock_tick()
        (twin.ext / "ext.h").write_text("#define E 11\n")
    twin.clean_both()
    twin.plain()
    warm = twin.wrapped()
    same_outputs(twin.proj, twin.ref)
    hits, misses, _ = cache_counts(warm.stderr)
    assert misses >= 2, warm.stderr  # a.o and the link at least ran
    assert hits < 4
    # only unaffected compiles may have come from the table
    assert fast_hits_reach(twin.proj, before) - before <= hits


@needs_c_side
def test_a_dirty_input_goes_to_the_daemon(twin):
    twin.cold()
    twin.clean_both()
    twin.plain()
    before = fast_hits(twin.proj)
    header = twin.proj / "inc/common.h"
    with connect_project(twin.home, twin.project()) as c:
        fd = os.open(header, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_SH)  # a writer still holding it: DIRTY stays
        try:
            assert c.begin_write([header]) == 1
            warm = twin.wrapped()
        finally:
            os.close(fd)
    same_outputs(twin.proj, twin.ref)
    hits, misses, _ = cache_counts(warm.stderr)
    assert misses == 0 and hits >= 4, warm.stderr
    # a.o and b.o include the DIRTY header: decided by the daemon, not the table
    assert fast_hits_reach(twin.proj, before) - before <= hits - 2


def table_path(twin) -> Path:
    vdir = twin.home.vdir_path(twin.project().id)
    return vdir.with_name(vdir.name.replace("vrift_vdir_", fasttable.NAME_PREFIX))


@needs_c_side
def test_a_damaged_blob_is_not_installed(twin):
    twin.cold()
    digest = blake3.blake3((twin.proj / "build/b.o").read_bytes()).digest()
    blob = CAS(twin.home.cas_dir).blob_path(digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    os.chmod(blob, 0o644)
    os.unlink(blob)  # a hardlinked blob must not take the build's file with it
    blob.write_bytes(bytes(data))
    twin.clean_both()
    twin.plain()
    warm = twin.wrapped()
    same_outputs(twin.proj, twin.ref)
    hits, misses, _ = cache_counts(warm.stderr)
    assert misses >= 1, warm.stderr  # b.o ran (the daemon quarantined the blob)


def corrupt_records(path: Path) -> int:
    data = bytearray(path.read_bytes())
    (slots,) = struct.unpack_from("<I", data, 24)
    slots_offset, records_offset = struct.unpack_from("<QQ", data, 32)
    n = 0
    for i in range(slots):
        h, off, length = fasttable.SLOT.unpack_from(data, slots_offset + i * fasttable.SLOT.size)
        if length:
            data[records_offset + off + length - 9] ^= 0x5A  # inside the record, past its head
            n += 1
    fd = os.open(path, os.O_WRONLY)  # a stray write into the live file
    try:
        os.write(fd, bytes(data))
    finally:
        os.close(fd)
    return n


@needs_c_side
def test_a_damaged_record_is_ignored(twin):
    twin.cold()
    assert corrupt_records(table_path(twin)) >= 3
    # one command: the daemon's own hit republishes the (sound) records a moment later
    os.unlink(twin.proj / "build/a.o")
    before = fast_hits(twin.proj)
    one = vrift("wrap", twin.tool, "build/a.o", cwd=twin.proj, check=True)
    assert (twin.proj / "build/a.o").read_bytes() == (twin.ref / "build/a.o").read_bytes()
    assert cache_counts(one.stderr)[:2] == (1, 0), one.stderr  # replayed by the daemon
    assert fast_hits(twin.proj) == before


def table_records(path: Path) -> int:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    return struct.unpack_from("<I", data, 28)[0] if len(data) >= 64 else 0


@needs_c_side
def test_daemon_killed_after_a_fast_hit(twin):
    twin.cold()
    before, _ = twin.rebuild()
    fast_hits_reach(twin.proj, before + 3)
    pid = daemon_pid(twin.home, twin.project())
    assert pid
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    # an edit while no daemon runs, then a build: the old table must not be trusted blindly
    twin.edit("src/b.c", '#include "common.h"\nint b(void) { return K * 5; }\n')
    twin.clean_both()
    twin.plain()
    twin.wrapped()
    same_outputs(twin.proj, twin.ref)
    twin.clean_both()
    twin.plain()
    twin.wrapped()
    same_outputs(twin.proj, twin.ref)


@needs_c_side
def test_a_stopped_daemons_table_serves_the_next_daemon(twin):
    # an idle daemon exits; the next build's daemon takes its table over
    twin.cold()
    vrift("daemon", "stop", cwd=twin.proj, check=True)
    assert table_records(table_path(twin)) >= 4  # the table stays, whole
    vrift("sync", cwd=twin.proj, check=True)  # a new daemon, its start-up reconcile done
    before, warm = twin.rebuild(env=dict(os.environ, VRIFT_DEBUG="1"))
    assert cache_counts(warm.stderr)[1] == 0, warm.stderr
    # why a record was not used, if one was not: the library's reasons and the daemon's state
    assert fast_hits_reach(twin.proj, before + 3) >= before + 3, diagnosis(twin, warm.stderr)


def diagnosis(twin, stderr: str) -> str:
    """The library's reasons, the table's records and the daemon's table state, in full."""
    ours = [line for line in stderr.splitlines() if "action table" in line]
    records = ["%016x %r" % (fasttable.key_hash(i), i) for i, _ in fasttable.load_records(os.fsencode(table_path(twin)))]
    with connect_project(twin.home, twin.project()) as c:
        cache = c.cache_stats()["cache"]
    text = "\n".join(["library:", *ours, "table file:", *records, f"daemon: {cache}",
                      f"cache stats: {vrift('cache', 'stats', '--json', cwd=twin.proj).stdout}"])
    print(text)  # pytest shortens the assertion's message
    return text


@needs_c_side
def test_a_table_of_another_vrift_is_not_taken_over(twin):
    twin.cold()
    vrift("daemon", "stop", cwd=twin.proj, check=True)
    path = table_path(twin)
    data = bytearray(path.read_bytes())
    data[fasttable.STAMP_OFFSET] ^= 0x01  # written by a vrift whose rules may differ
    path.write_bytes(bytes(data))
    assert fasttable.load_records(bytes(path)) == []
    vrift("sync", cwd=twin.proj, check=True)
    assert not path.exists() or table_records(path) == 0


@needs_c_side
def test_cache_clear_leaves_no_table_to_replay_from(twin):
    twin.cold()
    vrift("cache", "clear", cwd=twin.proj, check=True)
    assert not table_path(twin).exists()
    before, cleared = twin.rebuild()
    hits, misses, _ = cache_counts(cleared.stderr)
    assert hits == 0 and misses >= 4, cleared.stderr
    assert fast_hits(twin.proj) == before
    # the running daemon's next table holds only what it recorded since
    assert wait_for(lambda: table_records(table_path(twin)) >= 4, 10)
