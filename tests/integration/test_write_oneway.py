"""The write path without waiting (docs/protocol.md "Writes"): the preload library renames a staged
file into place itself and tells the daemon one-way.  Real daemons, real LD_PRELOAD processes:
a writer killed mid-write is rolled back, a daemon killed between the rename and its processing
leaves a right index after restart, a reader during a write sees the old file, a writer finishes
while the daemon is frozen, many writers of the same paths settle to the tree."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from support.daemon import daemon_pid, daemons, make_project, vdir_entry  # noqa: F401
from support.preload import counters_file, read_counters
from test_preload_daemon import kill_daemons, no_staging_left, vrift_env_for
from vrift.daemon import process
from vrift.daemon.client import connect_project, wait_for
from vrift.vdir import layout

# Writes `path` in two halves, says "half" after the first, then waits for a line on stdin
# before the second half and the close.
HALF_WRITER = r"""
import sys
f = open(sys.argv[1], "w")
f.write("new first half\n")
f.flush()
print("half", flush=True)
sys.stdin.readline()
f.write("new second half\n")
f.close()
"""


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path, files={"README": b"old\n", "src/a.c": b"int a;\n"})


@pytest.fixture
def wrapped(daemons, proj, vrift_env, tmp_path):
    client = connect_project(daemons, proj)
    info = client.hello()
    client.sync()  # the start-up rescan has indexed the tree
    counters = counters_file(tmp_path / "counters")
    yield client, vrift_env_for(vrift_env, info, counters), counters
    client.close()


def entry_matches_tree(home, proj, rel: str) -> bool:
    """The published entry is clean and describes the file on disk (or its absence)."""
    e = vdir_entry(home, proj, rel)
    path = proj.root / rel
    if not path.exists():
        return e is None or (bool(e.flags & layout.F_DELETED) and not e.flags & layout.F_DIRTY)
    st = os.lstat(path)
    return (e is not None and not e.flags & (layout.F_DIRTY | layout.F_DELETED)
            and (e.ino, e.size, e.mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)
            and e.digest == blake3.blake3(path.read_bytes()).digest())


def start_half_writer(env, proj, rel):
    p = subprocess.Popen([sys.executable, "-c", HALF_WRITER, rel], env=env, cwd=proj.root,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"half\n", p.stderr.read()
    return p


@pytest.mark.parametrize("rel", ["README", "src/new.txt"])
def test_reader_during_the_write_sees_the_old_file_and_a_killed_writer_is_rolled_back(wrapped, daemons, proj, rel):
    client, env, _ = wrapped
    old = (proj.root / rel).read_bytes() if (proj.root / rel).exists() else None
    p = start_half_writer(env, proj, rel)
    try:
        # mid-write: the real path still holds the old file (or nothing), the entry says DIRTY
        assert ((proj.root / rel).read_bytes() if (proj.root / rel).exists() else None) == old
        parent = os.path.dirname(rel)
        assert vdir_entry(daemons, proj, parent).flags & layout.F_DIRTY
        if old is not None:
            assert vdir_entry(daemons, proj, rel).flags & layout.F_DIRTY
        assert any(f.is_file() for f in proj.staging_dir.rglob("*"))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    # rolled back: staging removed, DIRTY cleared, the entry re-read from the tree
    assert wait_for(lambda: no_staging_left(proj) and entry_matches_tree(daemons, proj, rel)
                    and not vdir_entry(daemons, proj, parent).flags & layout.F_DIRTY, 30)
    assert ((proj.root / rel).read_bytes() if (proj.root / rel).exists() else None) == old
    client.sync()
    assert client.stats()["rollbacks"] >= 1


def test_a_writer_finishes_while_the_daemon_is_frozen(wrapped, daemons, proj):
    """Nothing on the write path waits for the daemon: with the daemon stopped (SIGSTOP) a
    process still writes, closes and exits; the index catches up once it runs again."""
    client, env, counters = wrapped
    pid = daemon_pid(daemons, proj)
    script = ("import os\nos.makedirs('out', exist_ok=True)\n"
              "for i in range(5): open(f'out/o{i}.txt', 'w').write(f'object {i}\\n')\n"
              "open('README', 'w').write('rewritten\\n')\n")
    os.kill(pid, signal.SIGSTOP)
    try:
        r = subprocess.run([sys.executable, "-c", script], env=env, cwd=proj.root, capture_output=True, timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.returncode == 0, r.stderr
    assert (proj.root / "README").read_bytes() == b"rewritten\n"
    client.sync()
    for rel in ["README"] + [f"out/o{i}.txt" for i in range(5)]:
        assert entry_matches_tree(daemons, proj, rel), rel
    assert not vdir_entry(daemons, proj, "out").flags & layout.F_DIRTY
    c = read_counters(counters)
    assert c["COMMITTED"] == 6 and c["DAEMON_ERRORS"] == 0, c


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_daemon_killed_between_the_rename_and_its_processing(wrapped, daemons, proj):
    """The files are in place, WRITTEN sits unread in the dead daemon's socket: after a restart
    the index describes the tree (the start-up rescan), DIRTY bits left behind are cleared."""
    client, env, _ = wrapped
    client.close()
    pid = daemon_pid(daemons, proj)
    script = ("open('README', 'w').write('after the crash\\n')\n"
              "open('src/b.c', 'w').write('int b;\\n')\n")
    os.kill(pid, signal.SIGSTOP)
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=proj.root, capture_output=True, timeout=60)
    kill_daemons(daemons, proj)
    assert r.returncode == 0, r.stderr
    assert vdir_entry(daemons, proj, "README").flags & layout.F_DIRTY  # nobody processed it
    with connect_project(daemons, proj) as c2:
        c2.sync()
        assert process.pid_alive(daemon_pid(daemons, proj))
        assert wait_for(lambda: all(entry_matches_tree(daemons, proj, rel) for rel in ("README", "src/b.c")), 30)
        assert not vdir_entry(daemons, proj, "src").flags & layout.F_DIRTY
        assert not vdir_entry(daemons, proj, "").flags & layout.F_DIRTY


WRITERS = 12
ROUNDS = 30


def test_many_writers_of_the_same_paths_settle_to_the_tree(wrapped, daemons, proj):
    """Writers racing on the same few files and directory: whichever rename lands last, the
    entries end clean and equal to what is on disk (no DIRTY cleared over a newer write)."""
    client, env, counters = wrapped
    (proj.root / "shared").mkdir()
    client.sync()
    script = ("import sys\nk = int(sys.argv[1])\n"
              f"for i in range({ROUNDS}):\n"
              "    open(f'shared/s{i % 4}.txt', 'w').write(f'writer {k} round {i}\\n' * (k + 1))\n"
              "    open(f'shared/own{k}.txt', 'w').write(f'{i}\\n')\n")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(k)], env=env, cwd=proj.root,
                              stderr=subprocess.PIPE) for k in range(WRITERS)]
    for p in procs:
        assert p.wait(300) == 0, p.stderr.read()
    client.sync()
    names = [f"shared/s{i}.txt" for i in range(4)] + [f"shared/own{k}.txt" for k in range(WRITERS)]
    assert wait_for(lambda: all(entry_matches_tree(daemons, proj, rel) for rel in names)
                    and not vdir_entry(daemons, proj, "shared").flags & layout.F_DIRTY, 30)
    c = read_counters(counters)
    assert c["COMMITTED"] == 2 * WRITERS * ROUNDS and c["DAEMON_ERRORS"] == 0, c
    assert no_staging_left(proj)


@pytest.mark.usefixtures("daemons")
def test_make_j2_without_the_cache_builds_what_plain_make_builds(tmp_path):
    from support.build import assert_same_outputs, copy_tree, generate, make_rebuilt, parse_summary, plain, \
        require_tools, vrift

    require_tools("make", "cc", "ar")
    vtree = generate(tmp_path / "v", units=24)
    ptree = copy_tree(vtree, tmp_path / "p")
    wrapped = vrift("wrap", "--no-cache", "make", "-j2", cwd=vtree, check=True)
    reference = plain("make", "-j2", cwd=ptree)
    assert sorted(make_rebuilt(wrapped.stdout)) == sorted(make_rebuilt(reference.stdout))
    assert assert_same_outputs(vtree, ptree) >= 24
    assert parse_summary(wrapped.stderr)["committed"] >= 24
    again = vrift("wrap", "--no-cache", "make", "-j2", cwd=vtree, check=True)
    assert make_rebuilt(again.stdout) == []
