"""The project index: LMDB + WAL + shared memory, with real processes killed at random points."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vrift.errors import VriftError
from vrift.home import Home
from vrift.identity import Project
from vrift.vdir import layout, wal
from vrift.vdir.entry import Entry
from vrift.vdir.index import ProjectIndex
from vrift.vdir.readonly import live_digests, open_readonly
from vrift.vdir.shm import VDirReader

TRIALS = int(os.environ.get("VRIFT_CRASH_TRIALS", "6"))


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    return Project.at(root)


def entry(i: int, st: os.stat_result, tag: bytes = b"") -> Entry:
    digest = (tag + i.to_bytes(8, "little")).ljust(32, b"\x01")
    return Entry.from_stat(f"f/{i}".encode(), st, digest=digest)


@pytest.mark.parametrize("mode", ["sync", "wal", "async"])
def test_apply_persists_and_publishes(home, project, mode):
    st = os.stat(project.root)
    with ProjectIndex(home, project, durability=mode).open() as index:
        gen = index.apply([entry(i, st) for i in range(100)])
        assert gen == 1 and len(index) == 100
        assert index.apply([entry(5, st)]) == 1  # unchanged: no new generation
        index.apply([Entry.deleted(b"f/7")])
        assert index.get(b"f/7") is None and len(index) == 99
        with VDirReader(index.vdir_path) as reader:
            assert reader.index_generation == 2
            assert reader.lookup(b"f/3").digest == entry(3, st).digest
            assert reader.lookup(b"f/7").is_deleted
    with ProjectIndex(home, project, durability=mode).open() as again:
        assert again.generation == 2 and len(again) == 99
        assert again.get(b"f/99") == entry(99, st)
        assert again.counters["shm_reused"] == 1  # valid file, same generation: kept
    with open_readonly(home, project) as view:
        assert len(view) == 99 and view.generation == 2


def test_dirty_survives_apply_and_is_never_persisted(home, project):
    st = os.stat(project.root)
    with ProjectIndex(home, project, durability="sync").open() as index:
        index.apply([entry(1, st)])
        assert index.set_dirty(b"f/1", True)
        index.apply([entry(1, st, tag=b"new")])  # a rewrite keeps the client's DIRTY bit
        with VDirReader(index.vdir_path) as reader:
            assert reader.lookup(b"f/1").flags & layout.F_DIRTY
        index.apply([entry(1, st, tag=b"dirty").with_flags(layout.F_DIRTY)])
        assert not index.get(b"f/1").flags & layout.F_DIRTY
        assert not index.set_dirty(b"no/such", True)
    with open_readonly(home, project) as view:
        assert not view.get(b"f/1").flags & layout.F_DIRTY


def test_second_owner_is_refused(home, project):
    with ProjectIndex(home, project).open():
        with pytest.raises(VriftError, match="in use by another process"):
            ProjectIndex(home, project).open()


def test_readonly_view_sees_acknowledged_wal_records(home, project):
    st = os.stat(project.root)
    index = ProjectIndex(home, project, durability="wal", sync_interval_ms=60_000,
                         sync_batch_size=10**6).open()
    try:
        index.apply([entry(i, st) for i in range(10)])
        index.apply([Entry.deleted(b"f/0")])
        with open_readonly(home, project) as view:  # LMDB has nothing yet; the WAL has it all
            assert len(view) == 9 and view.get(b"f/0") is None and view.get(b"f/9") is not None
        assert live_digests(home) == {entry(i, st).digest for i in range(1, 10)}
    finally:
        index.close()


def test_wal_replay_stops_at_torn_tail(home, project):
    st = os.stat(project.root)
    index = ProjectIndex(home, project, durability="wal", sync_interval_ms=60_000,
                         sync_batch_size=10**6).open()
    for i in range(5):
        index.apply([entry(i, st)])
    # simulate a crash: abandon the process state without flushing
    index._stop.set()
    index._wake.set()
    index._flusher.join()
    index._shm.close()
    index._shm = None
    index._store.close()
    index._store = None
    index._release()
    with open(home.wal_path(project.id), "ab") as f:
        f.write(wal.pack(6, entry(6, st))[:-3])  # a record whose write was cut short
    with ProjectIndex(home, project).open() as again:
        assert again.counters["replayed"] == 5
        assert len(again) == 5 and again.get(b"f/6") is None
        assert again.generation == 5
    assert os.path.getsize(home.wal_path(project.id)) == 0


def test_wal_bad_crc_is_a_torn_tail(tmp_path):
    st = os.stat(tmp_path)
    good = wal.pack(1, entry(1, st))
    bad = bytearray(wal.pack(2, entry(2, st)))
    bad[30] ^= 0xFF
    recs = list(wal.parse(good + bytes(bad) + wal.pack(3, entry(3, st))))
    assert [g for g, _, _ in recs] == [1]


def test_corrupt_vdir_is_rebuilt_on_open(home, project):
    st = os.stat(project.root)
    with ProjectIndex(home, project).open() as index:
        index.apply([entry(i, st) for i in range(50)])
        path = index.vdir_path
    with open(path, "r+b") as f:
        f.write(b"JUNK")  # bad magic
    with ProjectIndex(home, project).open() as again:
        assert again.counters["shm_rebuilt"] == 1
        with VDirReader(path) as reader:
            assert len(reader) == 50 and reader.lookup(b"f/49") is not None


def test_lmdb_map_full_is_a_clear_error_and_loses_nothing(home, project):
    st = os.stat(project.root)
    with ProjectIndex(home, project, durability="sync", mapsize_gb=64 / 1024 / 1024).open() as index:
        index.apply([entry(i, st) for i in range(10)])
        with pytest.raises(VriftError, match="map full"):
            index.apply([Entry.from_stat(b"big/%d/" % i + b"x" * 400, st, digest=b"\x02" * 32)
                         for i in range(5000)])
        assert len(index) == 10 and index.generation == 1
    with open_readonly(home, project) as view:
        assert len(view) == 10


CHILD = textwrap.dedent("""
    import os, sys
    from vrift.home import Home
    from vrift.identity import Project
    from vrift.vdir.entry import Entry
    from vrift.vdir.index import ProjectIndex
    mode, root = sys.argv[1], sys.argv[2]
    index = ProjectIndex(Home.from_env(), Project.at(root), durability=mode, sync_interval_ms=20,
                         sync_batch_size=50).open()
    st = os.stat(root)
    out = os.fdopen(1, "w", buffering=1)
    i = index.generation
    out.write("ready\\n")
    while True:
        index.apply([Entry.from_stat(b"f/%d" % i, st, digest=i.to_bytes(32, "little"))])
        out.write(f"{i}\\n")  # acknowledged
        i += 1
""")


@pytest.mark.parametrize("mode", ["sync", "wal", "async"])
def test_kill9_loses_nothing_acknowledged(vrift_env, home, project, mode):
    rng = random.Random(hash(mode))
    acked = -1
    for trial in range(TRIALS):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, mode, str(project.root)], env=vrift_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.005, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:
            if line.strip().isdigit():
                acked = max(acked, int(line))
        proc.stdout.close()
        proc.stderr.close()
        with ProjectIndex(home, project, durability=mode).open() as index:
            present = {int(e.path[2:]) for e in index.entries()}
            # consistent: entries were applied one at a time in order, so what is there is a prefix
            assert present == set(range(len(present))), f"trial {trial}: a gap in {mode} mode"
            assert index.generation == len(present)
            # a process kill loses nothing acknowledged in any mode (async only risks a
            # machine crash, which a process kill is not)
            assert acked < len(present), f"trial {trial}: acknowledged {acked}, kept {len(present) - 1}"
            for i in (0, len(present) - 1):
                assert index.get(b"f/%d" % i).digest == i.to_bytes(32, "little")
            with VDirReader(index.vdir_path) as reader:
                assert reader.index_generation == index.generation
    assert acked > 0


def test_root_entry_and_paths_longer_than_an_lmdb_key(home, project):
    st = os.stat(project.root)
    long_path = b"d/" + b"x" * 3000
    with ProjectIndex(home, project, durability="sync").open() as index:
        index.apply([Entry.from_stat(b"", st), Entry.from_stat(long_path, st, digest=b"\x03" * 32)])
    with ProjectIndex(home, project).open() as again:
        assert again.get(b"") is not None and again.get(b"").flags & layout.F_DIR
        assert again.get(long_path).digest == b"\x03" * 32
        again.apply([Entry.deleted(long_path)])
    with open_readonly(home, project) as view:
        assert view.get(long_path) is None and len(view) == 1


def test_dirty_placeholder_for_a_path_being_created(home, project):
    """BEGIN_WRITE of a new path: a DIRTY tombstone in shared memory only, and the entry
    indexed while the writer still holds the file stays DIRTY."""
    st = os.stat(project.root)
    with ProjectIndex(home, project, durability="sync").open() as index:
        gen = index.apply([Entry.deleted(b"new.o").with_flags(layout.F_DELETED | layout.F_DIRTY)])
        assert gen == 0 and index.get(b"new.o") is None
        with VDirReader(index.vdir_path) as reader:
            e = reader.lookup(b"new.o")
            assert e.is_deleted and e.flags & layout.F_DIRTY
        index.apply([Entry.from_stat(b"new.o", st, digest=b"\x04" * 32)])
        with VDirReader(index.vdir_path) as reader:
            e = reader.lookup(b"new.o")
            assert not e.is_deleted and e.flags & layout.F_DIRTY and e.digest == b"\x04" * 32
    with open_readonly(home, project) as view:
        assert not view.get(b"new.o").flags & layout.F_DIRTY


def test_lazy_applies_skip_their_fsync_and_survive_a_process_restart(home, project):
    """Watcher re-reads and replayed outputs: no fsync of their own, still in the WAL (a later
    synced apply covers them), so a restarted process finds them."""
    st = os.stat(project.root)
    index = ProjectIndex(home, project, durability="wal", sync_interval_ms=60_000,
                         sync_batch_size=10**6).open()
    try:
        with index.lazy():
            index.apply([entry(1, st)])
        assert index.stats()["wal_fsyncs"] == 0 and index.stats()["wal_bytes"] > 0
        index.apply([entry(2, st)])
        assert index.stats()["wal_fsyncs"] == 1
    finally:
        index.close()
    with ProjectIndex(home, project).open() as again:
        assert again.get(b"f/1") == entry(1, st) and again.get(b"f/2") == entry(2, st)


def test_sync_mode_flushes_lazy_writes_at_close(home, project):
    st = os.stat(project.root)
    index = ProjectIndex(home, project, durability="sync").open()
    with index.lazy():
        index.apply([entry(1, st)])
    syncs = index._store.syncs
    index.flush()
    assert index._store.syncs == syncs + 1  # the lazy write is made durable by the flush
    index.flush()
    assert index._store.syncs == syncs + 1  # and nothing is left to sync
    index.close()
