"""The project daemon and the coordinator as real processes: start, HELLO, COMMIT, INVALIDATE,
SYNC, path checks, CLI."""
from __future__ import annotations

import json
import os
import stat

import blake3
import pytest

from support.daemon import Writer, daemon_pid, daemons, make_project, vdir_entry  # noqa: F401
from vrift.daemon import process
from vrift.daemon.client import DaemonError, ProjectClient, connect_project, wait_for
from vrift.daemon.paths import coordinator_files, project_files
from vrift.daemon.protocol import Err
from vrift.vdir import layout


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path)


def test_autostart_hello_and_private_files(daemons, proj):
    home = daemons
    with connect_project(home, proj) as c:
        info = c.hello()
        c.sync()  # the barrier: queued behind the start-up ingest
    files = project_files(home, proj.id)
    assert info["root"] == str(proj.root) and info["project_id"] == proj.id
    assert info["vdir"] == str(home.vdir_path(proj.id)) and info["socket"] == str(files.socket)
    assert info["staging_dir"] == str(proj.staging_dir)
    assert info["pid"] == daemon_pid(home, proj) and process.pid_alive(info["pid"])
    for sock in (files.socket, coordinator_files(home).socket):
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    for f in (files.pid_file, files.lock_file, files.log_file):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home.run_dir).st_mode) == 0o700
    assert vdir_entry(home, proj, "src/a.c").digest == blake3.blake3(b"int a;\n").digest()  # ingested on start


def test_second_start_is_a_no_op(daemons, proj, run_vrift):
    home = daemons
    with connect_project(home, proj) as c:
        first = c.hello()["pid"]
    out1 = run_vrift("daemon", "start", "--root", proj.root, "--json", check=True)
    out2 = run_vrift("daemon", "start", "--root", proj.root, "--json", check=True)
    a, b = json.loads(out1.stdout), json.loads(out2.stdout)
    assert a == b and a["project"]["pid"] == first
    # a daemon started by hand next to the running one leaves at once
    proc = process.spawn("vrift.daemon.server", ["--root", str(proj.root)], project_files(home, proj.id).log_file)
    assert proc.wait(60) == 0
    assert daemon_pid(home, proj) == first


def test_commit_moves_stores_and_publishes(daemons, proj):
    home = daemons
    with connect_project(home, proj) as c:
        c.hello()
        w = Writer(c, proj)
        (proj.root / "out").mkdir()
        c.invalidate([proj.root / "out"])
        staging = w.stage(b"object code\n")
        digest, size, generation = c.commit(proj.root / "out" / "x.o", staging)
        assert not staging.exists()
        assert (proj.root / "out" / "x.o").read_bytes() == b"object code\n"
        e = vdir_entry(home, proj, "out/x.o")
        st = os.stat(proj.root / "out" / "x.o")
        assert e.digest == digest == blake3.blake3(b"object code\n").digest()
        assert (e.size, e.mtime_ns, e.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
        assert not e.flags & layout.F_DIRTY
        d = vdir_entry(home, proj, "out")  # the directory's entry follows its new mtime
        assert d.mtime_ns == os.stat(proj.root / "out").st_mtime_ns
        blob = home.cas_dir / "blake3" / digest.hex()[:2] / digest.hex()[2:4] / digest.hex()
        assert blob.read_bytes() == b"object code\n"
        assert generation >= 1 and c.stats()["generation"] >= generation


@pytest.mark.parametrize("target, staging_rel, code", [
    ("/etc/passwd", None, Err.PATH_REJECTED),
    ("src/../../escape", None, Err.PATH_REJECTED),
    ("link/x", None, Err.PATH_REJECTED),           # directory is a symlink pointing outside
    ("src/a\0b", None, Err.PATH_REJECTED),
    (".vrift/staging/x", None, Err.PATH_REJECTED),
    ("ok.o", "/tmp/not-staging", Err.PATH_REJECTED),
    ("ok.o", "missing", Err.NOT_FOUND),
    ("ok.o", "symlink", Err.PATH_REJECTED),       # staging file that is a symlink (to /etc/hostname)
])
def test_bad_paths_are_rejected_with_a_reason(daemons, proj, target, staging_rel, code):
    home = daemons
    os.symlink("/tmp", proj.root / "link")
    with connect_project(home, proj) as c:
        w = Writer(c, proj)
        staging = w.stage(b"data")
        if staging_rel == "missing":
            staging = w.dir / "missing"
        elif staging_rel == "symlink":
            staging = w.dir / "ln"
            os.symlink("/etc/hostname", staging)
        elif staging_rel:
            staging = staging_rel
        with pytest.raises(DaemonError) as e:
            c.commit(target.encode() if target.startswith("/") else os.fsencode(proj.root) + b"/" + target.encode(),
                     staging)
        assert e.value.code == code and e.value.reason
        c.ping()  # the connection and the daemon keep serving
        assert w.write("ok.o", b"fine")[0]


def test_begin_write_marks_a_new_path_dirty_and_invalidate_rereads(daemons, proj):
    home = daemons
    with connect_project(home, proj) as c:
        assert c.begin_write([proj.root / "gen.h"]) == 1
        assert vdir_entry(home, proj, "gen.h").flags & layout.F_DIRTY
        (proj.root / "gen.h").write_text("#define X 1\n")
        (proj.root / "src" / "a.c").write_text("changed\n")
        assert c.invalidate([proj.root / "gen.h", proj.root / "src" / "a.c"]) == (2, 0)
        e = vdir_entry(home, proj, "gen.h")
        assert e.digest == blake3.blake3(b"#define X 1\n").digest() and not e.flags & layout.F_DIRTY
        assert vdir_entry(home, proj, "src/a.c").size == len("changed\n")


def test_sync_freshness(daemons, proj):
    """write-then-SYNC: the index never lags behind a change made before the SYNC."""
    home = daemons
    stale = 0
    from vrift.vdir.shm import VDirReader
    with connect_project(home, proj) as c, VDirReader(home.vdir_path(proj.id)) as reader:
        for i in range(1000):
            path = proj.root / "src" / f"f{i % 50}.c"
            path.write_bytes(b"x" * (i + 1))
            c.sync()
            e = reader.lookup(f"src/f{i % 50}.c".encode())
            st = os.stat(path)
            if e is None or (e.size, e.mtime_ns, e.ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
                stale += 1
    assert stale == 0


def test_cli_sync_status_and_ingest_go_through_the_daemon(daemons, proj, run_vrift):
    home = daemons
    (proj.root / "new.txt").write_text("new")
    out = run_vrift("sync", str(proj.root), "--json", check=True)
    assert json.loads(out.stdout)["generation"] >= 1
    assert vdir_entry(home, proj, "new.txt") is not None
    status = json.loads(run_vrift("daemon", "status", "--json", check=True).stdout)
    assert status["coordinator"]["pid"] == process.read_pid(coordinator_files(home).pid_file)
    [row] = status["projects"]
    assert row["root"] == str(proj.root) and row["pid"] == daemon_pid(home, proj)
    assert row["entries"] >= 5 and row["durability"] == "wal" and row["clients"] == 0
    ingest = json.loads(run_vrift("ingest", str(proj.root), "--json", check=True).stdout)
    assert ingest["via"] == "daemon"
    table = run_vrift("daemon", "status", check=True).stdout
    assert str(proj.root) in table


def test_daemon_stop_stops_everything(daemons, proj, run_vrift):
    home = daemons
    with connect_project(home, proj) as c:
        pid = c.hello()["pid"]
    coord = process.read_pid(coordinator_files(home).pid_file)
    run_vrift("daemon", "stop", check=True)
    assert not process.pid_alive(pid) and not process.pid_alive(coord)
    assert not project_files(home, proj.id).pid_file.exists()
    assert json.loads(run_vrift("daemon", "status", "--json", check=True).stdout) == {"coordinator": None,
                                                                                      "projects": []}


def test_idle_exit_then_vdir_cleanup(daemons, proj):
    home = daemons
    home.user_config_path.write_text("daemon:\n  health_interval_s: 0.2\n  idle_timeout_s: 1\n  cleanup_after_s: 1.5\n")
    with connect_project(home, proj) as c:
        pid = c.hello()["pid"]
    files = project_files(home, proj.id)
    assert wait_for(lambda: not process.pid_alive(pid), 20)
    assert files.idle_file.exists() or not home.vdir_path(proj.id).exists()
    assert wait_for(lambda: not home.vdir_path(proj.id).exists(), 20)
    # and it comes back on demand, from LMDB
    with connect_project(home, proj) as c:
        assert c.hello()["pid"] != pid
    assert vdir_entry(home, proj, "src/a.c") is not None


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_max_projects_evicts_the_least_recently_used_idle_project(daemons, tmp_path):
    home = daemons
    home.user_config_path.write_text("daemon:\n  health_interval_s: 0.2\n  max_projects: 2\n")
    a, b, c_, d = (make_project(tmp_path, n) for n in "abcd")
    pids = {}
    for p in (a, b):
        with connect_project(home, p) as c:
            pids[p.root] = c.hello()["pid"]
    with connect_project(home, a) as held:  # a is used again (and stays busy); b is the LRU idle one
        held.ping()
        with connect_project(home, c_) as c:
            c.hello()
        assert wait_for(lambda: not process.pid_alive(pids[b.root]), 10)
        assert process.pid_alive(pids[a.root])
        with connect_project(home, c_) as busy_c:  # a and c both have clients now: no room for d
            busy_c.ping()
            with pytest.raises(DaemonError) as e:
                connect_project(home, d)
            assert e.value.code == Err.LIMIT and "max_projects" in e.value.reason


def test_invalidate_keeps_dirty_while_a_writer_holds_the_beacon(daemons, proj):
    import fcntl

    home = daemons
    path = proj.root / "src" / "a.c"
    with connect_project(home, proj) as c:
        c.sync()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        fcntl.flock(fd, fcntl.LOCK_SH)  # a process still writing through a published file
        try:
            assert c.begin_write([path]) == 1
            os.write(fd, b"more\n")
            assert c.invalidate([path]) == (1, 1)
            assert vdir_entry(home, proj, "src/a.c").flags & layout.F_DIRTY
        finally:
            os.close(fd)  # the beacon goes with the last fd
        assert wait_for(lambda: not vdir_entry(home, proj, "src/a.c").flags & layout.F_DIRTY, 10)
        assert vdir_entry(home, proj, "src/a.c").size == os.stat(path).st_size
