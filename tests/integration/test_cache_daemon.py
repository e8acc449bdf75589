"""ACTION_LOOKUP / ACTION_END against a real project daemon, with logs written the way the
preload library writes them (tests/support/cache.py): miss, record, hit with outputs
materialised and published, a changed input misses, stale action directories are swept."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from support.cache import FakeAction, out
from support.daemon import connect_project, daemons, make_project, vdir_entry  # noqa: F401
from vrift.cache.fingerprint import pack_streams
from vrift.cache.references import live_digests
from vrift.cas.store import hash_bytes
from vrift.daemon.client import DaemonError

CC = shutil.which("cc") or "/bin/sh"


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path, files={"src/a.c": b"int a;\n", "include/h.h": b"#define H 1\n",
                                         "build/.keep": b""})


def run_action(c, proj, argv=(b"cc", b"-c", b"src/a.c"), output=b"OBJ", explain=False):
    """One action as the preload library runs it: LOOKUP; on a miss 'run' (write the output)
    and log, then END.  Returns the LOOKUP answer."""
    a = FakeAction(proj.root)
    answer = c.action_lookup(CC, proj.root, argv, a.id, env=[b"PATH=/bin"])
    if answer["hit"]:
        return answer
    (proj.root / "build/a.o").write_bytes(output)
    a.log(("R", bytes(proj.root / "src/a.c")), ("R", bytes(proj.root / "include/h.h")),
          ("W", bytes(proj.root / "build/a.o")), *out(1, b"compiling\n"), *out(2, b"warn\n", "E"))
    assert c.action_end(a.id, 0) == 1
    assert not a.dir.exists(), "END removes the action's logs"
    return answer


def test_miss_record_then_hit_materialises_and_publishes(daemons, proj):
    with connect_project(daemons, proj) as c:
        c.hello()
        first = run_action(c, proj)
        assert not first["hit"]
        wait_recorded(c, 1)
        os.unlink(proj.root / "build/a.o")
        c.sync()
        before = time.time_ns()
        hit = run_action(c, proj)
        assert hit["hit"] and hit["status"] == 0
        assert hit["stdout"] == b"compiling\n" and hit["stderr"] == b"warn\n"
        st = os.stat(proj.root / "build/a.o")
        assert (proj.root / "build/a.o").read_bytes() == b"OBJ" and st.st_mtime_ns >= before - 20_000_000
        e = vdir_entry(daemons, proj, "build/a.o")
        assert e is not None and e.digest == hash_bytes(b"OBJ") and e.mtime_ns == st.st_mtime_ns
        s = c.cache_stats()["cache"]
        assert (s["hits"], s["misses"], s["recorded"]) == (1, 1, 1) and s["bytes_replayed"] == 3
        # an edited input misses, and --explain says which
        (proj.root / "include/h.h").write_bytes(b"#define H 2\n")
        seq = s["seq"]
        assert not run_action(c, proj, output=b"OBJ2")["hit"]
        explained = c.cache_stats(explain_since=seq)["explain"]
        assert [e["why"] for e in explained if e["kind"] == "miss"] == ["include/h.h changed"]
        wait_recorded(c, 2)
        # both variants are kept: going back to the old header hits the old entry
        (proj.root / "include/h.h").write_bytes(b"#define H 1\n")
        assert run_action(c, proj)["hit"] and (proj.root / "build/a.o").read_bytes() == b"OBJ"
        # another command line is another key
        assert not run_action(c, proj, argv=(b"cc", b"-O2", b"-c", b"src/a.c"))["hit"]
    streams = pack_streams([(1, b"compiling\n"), (2, b"warn\n")])
    assert hash_bytes(b"OBJ") in live_digests(daemons) and hash_bytes(streams) in live_digests(daemons)


def wait_recorded(c, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while c.cache_stats()["cache"]["recorded"] < n:
        assert time.monotonic() < deadline, c.cache_stats()
        time.sleep(0.01)


def test_two_projects_share_entries(daemons, tmp_path, proj):
    other = make_project(tmp_path, "other", files={"src/a.c": b"int a;\n", "include/h.h": b"#define H 1\n",
                                                    "build/.keep": b""})
    with connect_project(daemons, proj) as c:
        assert not run_action(c, proj)["hit"]
        wait_recorded(c, 1)
    with connect_project(daemons, other) as c:
        hit = run_action(c, other)
        assert hit["hit"] and (other.root / "build/a.o").read_bytes() == b"OBJ"


def test_uncacheable_is_counted_by_reason(daemons, proj):
    with connect_project(daemons, proj) as c:
        a = FakeAction(proj.root)
        assert not c.action_lookup(CC, proj.root, [b"cc"], a.id)["hit"]
        a.log(("N", b"socket connect"))
        assert c.action_end(a.id, 0) == 0
        b = FakeAction(proj.root)
        c.action_lookup(CC, proj.root, [b"cc", b"x"], b.id)
        b.log(status=None)
        assert c.action_end(b.id, 0) == 0
        assert c.action_end(FakeAction(proj.root).id, 0) == 0  # END without LOOKUP or logs
        s = c.cache_stats()["cache"]
        assert s["uncacheable"]["socket connect"] == 1
        assert s["uncacheable"]["a process of the action did not finish"] == 1
        assert s["misses"] == 2 and s["hits"] == 0


def test_bad_requests_are_refused(daemons, proj):
    with connect_project(daemons, proj) as c:
        with pytest.raises(DaemonError, match="ACTION"):
            c.action_lookup(CC, proj.root, [b"cc"], "not-hex!")
        with pytest.raises(DaemonError, match="PATH"):
            c.action_lookup("relative/cc", proj.root, [b"cc"], "0123456789abcdef")
        c.ping()


def test_stale_action_directories_are_swept_at_start(daemons, proj):
    dead = FakeAction(proj.root)
    dead.log(("R", b"/x"), pid=2 ** 22 + 12345, status=None)  # no such pid
    with connect_project(daemons, proj) as c:
        c.hello()
        assert not dead.dir.exists()


def test_an_outside_header_edited_between_lookups_misses(daemons, proj, tmp_path):
    """Digests of files outside the root are memoised by stat fields: an edit that keeps the
    size and puts the mtime back still changes the ctime, so the memo cannot answer for it."""
    sys_h = tmp_path / "sysinc" / "stdio.h"
    sys_h.parent.mkdir()
    sys_h.write_bytes(b"/* v1 */\n")

    def action(output=b"OBJ"):
        a = FakeAction(proj.root)
        answer = c.action_lookup(CC, proj.root, [b"cc", b"-c", b"src/a.c"], a.id)
        if not answer["hit"]:
            (proj.root / "build/a.o").write_bytes(output)
            a.log(("R", bytes(proj.root / "src/a.c")), ("R", bytes(sys_h)), ("W", bytes(proj.root / "build/a.o")))
            assert c.action_end(a.id, 0) == 1
        return answer["hit"]

    with connect_project(daemons, proj) as c:
        assert not action()
        wait_recorded(c, 1)
        assert action(), "unchanged: hit (the outside digest comes from the memo)"
        st = os.stat(sys_h)
        time.sleep(0.01)
        sys_h.write_bytes(b"/* v2 */\n")
        os.utime(sys_h, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert os.stat(sys_h).st_size == st.st_size and os.stat(sys_h).st_mtime_ns == st.st_mtime_ns
        assert not action(b"OBJ2")
        wait_recorded(c, 2)
        assert action() and (proj.root / "build/a.o").read_bytes() == b"OBJ2"


def test_a_hit_publishes_every_output_and_its_directories(daemons, proj):
    """Outputs in several directories (one of them created by the replay) are all in the
    index when the reply comes, with the directories' fresh entries."""
    def action():
        a = FakeAction(proj.root)
        answer = c.action_lookup(CC, proj.root, [b"gen", b"x"], a.id)
        if not answer["hit"]:
            (proj.root / "build/sub").mkdir()
            (proj.root / "build/x.h").write_bytes(b"H")
            (proj.root / "build/sub/x.c").write_bytes(b"C")
            a.log(("R", bytes(proj.root / "src/a.c")), ("W", bytes(proj.root / "build/sub")),
                  ("W", bytes(proj.root / "build/x.h")), ("W", bytes(proj.root / "build/sub/x.c")))
            assert c.action_end(a.id, 0) == 1
        return answer["hit"]

    with connect_project(daemons, proj) as c:
        c.hello()
        assert not action()
        wait_recorded(c, 1)
        shutil.rmtree(proj.root / "build/sub")
        os.unlink(proj.root / "build/x.h")
        c.sync()
        assert action()
        for rel, data in (("build/x.h", b"H"), ("build/sub/x.c", b"C")):
            e = vdir_entry(daemons, proj, rel)
            assert e is not None and not e.is_deleted and e.digest == hash_bytes(data), rel
            assert e.mtime_ns == os.stat(proj.root / rel).st_mtime_ns
        for rel in ("build", "build/sub"):
            e = vdir_entry(daemons, proj, rel)
            assert e is not None and e.mtime_ns == os.stat(proj.root / rel).st_mtime_ns, rel
