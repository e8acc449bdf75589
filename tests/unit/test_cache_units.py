"""The action cache's Python pieces with real files, a real CAS and a real LMDB: log parsing,
keys, the entry store (including a crash mid-write) and fingerprints built from synthetic logs."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.cache import FakeAction, out
from vrift.cache import actionlog
from vrift.cache.fingerprint import Context, Fingerprint, Uncacheable, build, match, pack_streams, unpack_streams
from vrift.cache.key import Action, DigestMemo, action_key
from vrift.cache.store import MAX_FINGERPRINTS, CacheStore
from vrift.cas import CAS
from vrift.cas.store import hash_bytes


# -- logs ------------------------------------------------------------------------------------
def test_log_records_streams_and_a_torn_tail(tmp_path):
    a = FakeAction(tmp_path)
    a.log(("R", b"/x/a.c"), *out(20, b"second\n"), ("X", b"/usr/bin/cc"), pid=10)
    a.log(*out(10, b"first\n"), *out(30, b"warn\n", "E"), ("W", b"/x/a.o"), pid=11, status=3)
    torn = a.log(("R", b"/x/b.c"), pid=12)
    with open(torn, "ab") as f:
        f.write(actionlog.record("W", b"/x/never-finished")[:7])
    logs = actionlog.read_dir(a.dir)
    assert [p.status for p in logs.processes] == [0, 3, None]
    assert logs.processes[2].torn and logs.unfinished == [torn.name]
    assert logs.streams() == [(1, b"first\nsecond\n"), (2, b"warn\n")], "in time order, one fd's chunks joined"
    assert logs.processes[0].events == [("R", b"/x/a.c"), ("X", b"/usr/bin/cc")]
    taken = actionlog.take(a.dir)
    assert len(taken.processes) == 3 and not a.dir.exists()


def test_an_image_that_exec_d_another_is_finished(tmp_path):
    a = FakeAction(tmp_path)
    a.log(("R", b"/bin/sh-script"), ("X", b"/usr/bin/cc"), pid=7, status=None)  # sh exec'd cc
    a.log(("R", b"/x/a.c"), pid=7)
    a.log(("X", b"/usr/bin/cc"), pid=8, status=None)  # exec'd, but no image of pid 8 finished
    assert actionlog.read_dir(a.dir).unfinished == ["8.3.log"]


def test_uncacheable_records_are_collected(tmp_path):
    a = FakeAction(tmp_path)
    a.log(("N", b"static binary /opt/x"))
    assert actionlog.read_dir(a.dir).reasons() == ["static binary /opt/x"]


# -- keys ------------------------------------------------------------------------------------
def test_key_covers_argv_cwd_tool_env_and_plugins_but_not_the_root():
    base = Action((b"cc", b"-c", b"a.c"), b"/r1/src", b"/usr/bin/cc", (b"PATH=/bin",), b"/r1")
    k = action_key(base, b"d" * 32)
    same_elsewhere = Action((b"cc", b"-c", b"a.c"), b"/r2/src", b"/usr/bin/cc", (b"PATH=/bin",), b"/r2")
    assert action_key(same_elsewhere, b"d" * 32) == k
    variants = [
        Action((b"cc", b"-c", b"-O2", b"a.c"), b"/r1/src", b"/usr/bin/cc", (b"PATH=/bin",), b"/r1"),
        Action((b"cc", b"-c a.c"), b"/r1/src", b"/usr/bin/cc", (b"PATH=/bin",), b"/r1"),
        Action((b"cc", b"-c", b"a.c"), b"/r1", b"/usr/bin/cc", (b"PATH=/bin",), b"/r1"),
        Action((b"cc", b"-c", b"a.c"), b"/r1/src", b"/usr/bin/cc", (b"PATH=/usr/bin",), b"/r1"),
        Action((b"cc", b"-c", b"a.c"), b"/r1/src", b"/usr/bin/cc", (), b"/r1"),
    ]
    keys = {action_key(v, b"d" * 32) for v in variants} | {action_key(base, b"e" * 32),
                                                          action_key(base, b"d" * 32, b"plugin")}
    assert k not in keys and len(keys) == len(variants) + 2
    assert base.cwd_rel == b"src" and Action((b"x",), b"/elsewhere", b"/x", root=b"/r1").cwd_rel == b"/elsewhere"


def test_digest_memo_rehashes_a_changed_file(tmp_path):
    f = tmp_path / "tool"
    f.write_bytes(b"v1")
    memo = DigestMemo()
    assert memo.digest(str(f)) == hash_bytes(b"v1")
    assert memo.digest(str(f)) == hash_bytes(b"v1") and memo.hashed == 1
    time.sleep(0.01)
    f.write_bytes(b"v2")
    assert memo.digest(str(f)) == hash_bytes(b"v2") and memo.hashed == 2


# -- the store ----------------------------------------------------------------------------------
def test_store_keeps_the_newest_fingerprints_per_key(home):
    with CacheStore(home) as store:
        key = b"k" * 32
        for i in range(MAX_FINGERPRINTS + 3):
            fp = Fingerprint(inputs=[["R", "a.c", f"{i:064x}"]], status=0)
            store.put(key, fp.id, fp.to_json(), counters={"recorded": 1})
        ids = store.fingerprint_ids(key)
        assert len(ids) == MAX_FINGERPRINTS
        assert store.candidates(key)[0][1]["inputs"][0][2] == f"{MAX_FINGERPRINTS + 2:064x}"
        stats = store.stats()
        assert stats["keys"] == 1 and stats["fingerprints"] == MAX_FINGERPRINTS
        assert stats["counters"]["recorded"] == MAX_FINGERPRINTS + 3
        assert store.find_keys(key.hex()[:8]) == [key]
        store.add({"hits": 2, "uncacheable": {"x": 1}}, {ids[0]: 5.0})
        store.add({"hits": 1, "uncacheable": {"x": 2}})
        assert store.counters()["hits"] == 3 and store.counters()["uncacheable"] == {"x": 3}
        assert store.clear() == {"keys": 1, "fingerprints": MAX_FINGERPRINTS}
        assert store.stats()["keys"] == 0 and store.counters() == {}


CRASH = """
import os, signal, sys
from vrift.home import Home
from vrift.cache.store import CacheStore
store = CacheStore(Home.from_env())
with store.env.begin(write=True) as txn:
    txn.put(b"f" * 32, b'{"inputs": []}', db=store.fingerprints)
    os.kill(os.getpid(), signal.SIGKILL)  # dies between the fingerprint and the key's list
"""


def test_a_crash_mid_write_leaves_no_half_entry(home, vrift_env):
    with CacheStore(home) as store:
        store.put(b"a" * 32, b"1" * 32, {"inputs": []})
    proc = subprocess.run([sys.executable, "-c", CRASH], env=vrift_env, capture_output=True)
    assert proc.returncode == -9
    with CacheStore(home) as store:
        assert store.fingerprint(b"f" * 32) is None
        assert store.stats()["fingerprints"] == 1 and store.fingerprint_ids(b"a" * 32) == [b"1" * 32]


# -- fingerprints ----------------------------------------------------------------------------------
@pytest.fixture
def proj(tmp_path):
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "build").mkdir()
    (root / "src/a.c").write_bytes(b"int a;\n")
    (root / "include/h.h").write_bytes(b"#define H 1\n")
    outside = tmp_path / "sys"
    outside.mkdir()
    (outside / "stdio.h").write_bytes(b"/* system */\n")
    return root


def _ctx(tmp_path, root, **kw):
    return Context(root, CAS(tmp_path / "cas", fsync=False), **kw)


def _compile(root: Path, a: FakeAction, status=0, extra=()):
    tmp = root.parent / "sys" / "cc123.s"
    tmp.write_bytes(b"temp")
    (root / "build/a.o").write_bytes(b"OBJ")
    a.log(("X", b"/usr/bin/cc"), ("R", bytes(root / "src/a.c")), ("R", bytes(root / "include/h.h")),
          ("A", bytes(root / "include/missing.h")), ("R", bytes(root.parent / "sys/stdio.h")),
          ("W", bytes(tmp)), *out(5, b"compiled\n"), *out(6, b"a warning\n", "E"), *extra, pid=100)
    a.log(("R", bytes(tmp)), ("W", bytes(root / "build/a.o")), ("D", bytes(root / "include")), pid=101)
    tmp.unlink()
    a.log(("U", bytes(tmp)), pid=102, status=status)
    return actionlog.take(a.dir)


def test_build_and_match_a_compile(tmp_path, proj):
    start = time.time_ns()
    ctx = _ctx(tmp_path, proj)
    fp = build(_compile(proj, FakeAction(proj)), ctx, 0, time.time_ns(), "cc", [b"cc", b"-c", b"a.c"])
    inputs = {(k, p) for k, p, *_ in fp.inputs}
    assert inputs == {("R", "/usr/bin/cc"), ("R", "src/a.c"), ("R", "include/h.h"), ("A", "include/missing.h"),
                      ("R", str(proj.parent / "sys/stdio.h")), ("D", "include")}, "the temporary is no input"
    assert fp.outputs == [["build/a.o", hash_bytes(b"OBJ").hex(), 0o644 & ~_umask(), 3]]
    assert ctx.cas.read_bytes(fp.outputs[0][1]) == b"OBJ"
    assert unpack_streams(ctx.cas.read_bytes(fp.streams)) == [(1, b"compiled\n"), (2, b"a warning\n")]
    assert start and match(fp, ctx) is None
    again = Fingerprint.from_json(fp.to_json())
    assert again.id == fp.id and match(again, ctx) is None
    # the same sources in another checkout match the same fingerprint
    other = tmp_path / "other"
    for rel in ("src/a.c", "include/h.h"):
        (other / rel).parent.mkdir(parents=True, exist_ok=True)
        (other / rel).write_bytes((proj / rel).read_bytes())
    assert match(fp, _ctx(tmp_path, other)) is None
    # differences are named
    (proj / "include/h.h").write_bytes(b"#define H 2\n")
    assert match(fp, ctx) == "include/h.h changed"
    (proj / "include/h.h").write_bytes(b"#define H 1\n")
    (proj / "include/missing.h").write_bytes(b"")
    assert match(fp, ctx) == "the listing of include changed"  # inputs are checked in path order
    os.unlink(proj / "include/missing.h")
    (proj.parent / "sys/stdio.h").write_bytes(b"/* upgraded */\n")
    assert match(fp, ctx) == f"{proj.parent / 'sys/stdio.h'} changed"


def test_stream_chunks_pack_and_unpack_in_order():
    chunks = [(1, b"out\n"), (2, b"err\n"), (1, b""), (1, b"x" * 70_000)]
    assert unpack_streams(pack_streams(chunks)) == chunks and unpack_streams(b"") == []
    for bad in (pack_streams(chunks)[:-1], b"\x03\x00\x00\x00\x00", b"\x01\x05"):
        with pytest.raises(ValueError):
            unpack_streams(bad)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("case, reason", [
    ("N", "static binary"),
    ("unfinished", "a process of the action did not finish"),
    ("failed", "failed (non-zero exit status)"),
    ("outside", "writes outside the project root"),
    ("in_place", "updates a file in place (read before write)"),
    ("moved", "removes or moves a file it did not create"),
    ("too_large", "output too large"),
    ("fragmented", "output too fragmented"),
    ("max_entry", "entry larger than cache.max_entry_mb"),
    ("never", "tool in cache.never"),
    ("changed", "an input changed while the action ran"),
])
def test_uncacheable_actions(tmp_path, proj, case, reason):
    a = FakeAction(proj)
    ctx = _ctx(tmp_path, proj, max_entry_mb=1 / 1024 if case == "max_entry" else 64, never=["c?"])
    status, tool = 0, "gcc"
    start = time.time_ns()
    if case == "N":
        a.log(("N", b"static binary /opt/x"))
    elif case == "unfinished":
        a.log(("R", bytes(proj / "src/a.c")), status=None)
    elif case == "failed":
        a.log(status=1)
        status = 1
    elif case == "outside":
        (proj.parent / "log.txt").write_bytes(b"x")
        a.log(("W", bytes(proj.parent / "log.txt")))
    elif case == "in_place":
        a.log(("R", bytes(proj / "src/a.c")), ("W", bytes(proj / "src/a.c")))
    elif case == "moved":
        os.rename(proj / "src/a.c", proj / "src/b.c")
        a.log(("U", bytes(proj / "src/a.c")), ("W", bytes(proj / "src/b.c")))
    elif case == "too_large":
        a.log(*out(1, b"x" * 600_000))
    elif case == "fragmented":  # two destinations, written alternately: one reply field per chunk
        a.log(*[r for i in range(1001) for r in out(i, b"x", "OE"[i % 2])])
    elif case == "max_entry":
        (proj / "build/big").write_bytes(b"x" * 2048)
        a.log(("W", bytes(proj / "build/big")))
    elif case == "never":
        tool = "cc"
        a.log()
    elif case == "changed":
        start = time.time_ns()
        time.sleep(0.02)
        (proj / "include/h.h").write_bytes(b"edited during the action\n")
        a.log(("R", bytes(proj / "include/h.h")))
    with pytest.raises(Uncacheable) as e:
        build(actionlog.take(a.dir), ctx, status, start, tool, [tool.encode()])
    assert e.value.reason == reason


def test_failures_are_cached_when_configured(tmp_path, proj):
    a = FakeAction(proj)
    a.log(*out(1, b"error: x\n", "E"), status=2)
    fp = build(actionlog.take(a.dir), _ctx(tmp_path, proj, cache_failures=True), 2, time.time_ns(), "cc")
    assert fp.status == 2 and fp.outputs == []


def test_rm_then_rewrite_and_created_directories_are_outputs(tmp_path, proj):
    """`rm -f lib.a && ar crs lib.a …` in one action; a directory the action created."""
    (proj / "build/lib").mkdir()
    (proj / "build/lib/libx.a").write_bytes(b"ARCHIVE")
    a = FakeAction(proj)
    lib = bytes(proj / "build/lib/libx.a")
    a.log(("U", lib), pid=1)
    a.log(("A", lib), ("R", bytes(proj / "src/a.c")), ("W", lib), ("W", bytes(proj / "build/lib")), pid=2)
    fp = build(actionlog.take(a.dir), _ctx(tmp_path, proj), 0, time.time_ns(), "sh")
    assert [o[:2] for o in fp.outputs] == [["build/lib", None], ["build/lib/libx.a", hash_bytes(b"ARCHIVE").hex()]]
    assert {(k, p) for k, p, *_ in fp.inputs} == {("R", "src/a.c")}, "the archive's absence came from rm"
