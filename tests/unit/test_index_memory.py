"""What keeps a big index's memory bounded, checked by its behaviour (the RSS figures are in
benchmarks/bench_index_memory.py): LMDB writes and reads in chunks with the map's pages
released between them, a VDir rebuilt a chunk at a time, the VDir scrub through the writer's
own mapping, the walk's bounded look-ahead."""
from __future__ import annotations

import os
import threading

import pytest

from vrift.cas import CAS
from vrift.identity import Project
from vrift.ingest import LIST_AHEAD, IngestReport, Ingester
from vrift.vdir import index as index_mod
from vrift.vdir import layout, lmdb_store
from vrift.vdir.entry import Entry
from vrift.vdir.index import ProjectIndex
from vrift.vdir.lmdb_store import RELEASE_EVERY, LmdbStore
from vrift.vdir.shm import VDirReader
from vrift.vdir.shm_format import read_header


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    return Project.at(root)


def entry(i: int, st: os.stat_result, flags: int = 0) -> Entry:
    return Entry.from_stat(b"d%d/f%d" % (i % 7, i), st, digest=i.to_bytes(8, "little").ljust(32, b"\x02"),
                           flags=flags)


def test_lmdb_chunked_write_with_releases_keeps_every_change(tmp_path):
    st = os.stat(tmp_path)
    store = LmdbStore(tmp_path / "db", 1)
    try:
        n = 3 * RELEASE_EVERY + 5  # several putmulti chunks, pages released between them
        store.write([entry(i, st) for i in range(n)], 1, "/r", sync=False)
        # one transaction: deletes of more than a chunk, puts, and a path changed twice
        changes = [Entry.deleted(entry(i, st).path) for i in range(RELEASE_EVERY + 3)]
        changes += [entry(n + i, st) for i in range(2 * RELEASE_EVERY)]
        changes += [entry(n, st).with_flags(layout.F_SYMLINK)]
        store.write(changes, 2, "/r", sync=True)
        got = dict(store.records())  # 64 * RELEASE_EVERY records read per release: crosses none here
        want = {e.path: e.pack_record() for e in
                [entry(i, st) for i in range(RELEASE_EVERY + 3, n)]
                + [entry(n + i, st) for i in range(1, 2 * RELEASE_EVERY)]
                + [entry(n, st).with_flags(layout.F_SYMLINK)]}
        assert got == want
        assert store.meta()["entry_count"] == len(want) and store.meta()["generation"] == 2
    finally:
        store.close()


def test_lmdb_records_survive_releases_during_the_read(tmp_path, monkeypatch):
    st = os.stat(tmp_path)
    monkeypatch.setattr(lmdb_store, "RELEASE_EVERY", 2)  # a release every 128 records read
    store = LmdbStore(tmp_path / "db", 1)
    try:
        entries = [entry(i, st) for i in range(1000)]
        store.write(entries, 1, "/r", sync=False)
        assert dict(store.records()) == {e.path: e.pack_record() for e in entries}
    finally:
        store.close()


def test_vdir_rebuild_in_chunks_publishes_everything_complete_dirs_last(home, project, monkeypatch):
    monkeypatch.setattr(index_mod, "BUILD_CHUNK", 4)
    st = os.stat(project.root)
    complete = Entry.from_stat(b"d3", st, flags=layout.F_COMPLETE_DIR)
    files = [entry(i, st) for i in range(30)]
    with ProjectIndex(home, project, durability="sync").open() as index:
        index.apply([complete, *files])
    index.vdir_path.unlink()  # the next open builds it from LMDB, like after a reboot
    with ProjectIndex(home, project, durability="sync", unconfirmed=True).open() as index:
        assert index.counters["shm_rebuilt"] == 1
        with VDirReader(index.vdir_path) as reader:
            published = reader.entries()
            assert reader.index_generation == index.generation
        assert {e.path for e in published} == {complete.path, *(e.path for e in files)}
        assert all(e.flags & layout.F_DIRTY for e in published)  # unconfirmed: readers ask the kernel
        # the dense array is in publication order: the COMPLETE_DIR directory after every file
        assert published[-1].path == complete.path


def test_vdir_scrub_through_the_writer_finds_what_a_reader_finds(home, project):
    st = os.stat(project.root)
    with ProjectIndex(home, project, durability="sync").open() as index:
        index.apply([entry(i, st) for i in range(50)])
        with VDirReader(index.vdir_path) as reader:
            assert index.damaged_shm(reader) == [] == reader.damaged()
            # a client scribbles on one record (it maps the file writable for DIRTY)
            with open(index.vdir_path, "r+b") as f:
                h = read_header(f.read(layout.HEADER_SIZE + 4096))
                at = h["entries_offset"] + 7 * layout.ENTRY_SIZE + layout.ENTRY_SIZE - 1
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0xFF]))
            assert index.damaged_shm(reader) == [7] == reader.damaged()


def test_walk_lists_a_bounded_number_of_directories_ahead(home, project):
    dirs = LIST_AHEAD * 4
    for d in range(dirs):
        (project.root / f"d{d}").mkdir()
        (project.root / f"d{d}" / "f").write_bytes(b"x")
    overrun = threading.Event()

    class Counting(Ingester):
        listed = 0

        def _list(self, rel):
            Counting.listed += 1
            if Counting.listed > 1 + LIST_AHEAD:  # the root, then more than the bound at once
                overrun.set()
            return super()._list(rel)

    with ProjectIndex(home, project, durability="async").open() as index:
        ingester = Counting(project, index, CAS(home.cas_dir))
        taken = 0
        for _ in ingester._walk_parallel(IngestReport()):
            taken += 1
            if taken == 2:  # the root's listing entered every directory: give the lister its chance
                overrun.wait(1.0)
            # at most LIST_AHEAD listed and not yet taken (the first batch is the root's own
            # entry, listed by nobody)
            assert Counting.listed <= (taken - 1) + LIST_AHEAD
        assert Counting.listed == dirs + 1 and taken == dirs + 2
