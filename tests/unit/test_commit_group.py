"""Group commit on the daemon's write path: blobs stored without fsync are made durable, as one
round per group, before the index entries that name them are written (docs/durability.md)."""
from __future__ import annotations

import os
import threading

import pytest

from vrift.cas.store import CAS, FEW_BLOBS
from vrift.daemon.writer import IndexWriter
from vrift.identity import Project
from vrift.vdir.entry import Entry
from vrift.vdir.index import ProjectIndex


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    (root / "out").mkdir(parents=True)
    return Project.at(root)


@pytest.mark.parametrize("mode", ["sync", "wal"])
def test_a_groups_blobs_are_durable_before_its_entries_are_written(home, project, mode):
    cas = CAS(home.cas_dir)
    seen: list[tuple[list[bytes], list[bytes]]] = []  # per group: its blobs, digests indexed already
    gate = threading.Event()
    names = [f"out/f{i}.o".encode() for i in range(3 * FEW_BLOBS)]  # both ways of sync_blobs

    with ProjectIndex(home, project, durability=mode).open() as index:
        def make_durable(digests):
            gate.wait(30)  # hold the first group until every commit is queued: one group
            indexed = [e.digest for e in map(index.get, names) if e is not None]
            seen.append((list(digests), indexed))
            cas.sync_blobs(digests)

        writer = IndexWriter(index, make_durable=make_durable).start()
        try:
            futures = []
            for i, rel in enumerate(names):
                path = project.root / os.fsdecode(rel)
                path.write_bytes(b"object %d\n" % i)
                stored = cas.store_file(path, fsync=False)
                futures.append(writer.commit(Entry.from_stat(rel, os.lstat(path), stored.digest), b"out",
                                             stored.digest))
            gate.set()
            for f in futures:
                f.result(30)
        finally:
            writer.stop()
        # every commit's blob went through make_durable, before any entry naming it was written
        durable = [d for digests, _ in seen for d in digests]
        assert sorted(durable) == sorted(index.get(n).digest for n in names)
        for digests, indexed in seen:
            assert not set(digests) & set(indexed)
        for rel in names:
            assert cas.blob_path(index.get(rel).digest).read_bytes() == (project.root / os.fsdecode(rel)).read_bytes()


def test_a_failing_durability_round_fails_the_group_and_writes_nothing(home, project):
    with ProjectIndex(home, project, durability="wal").open() as index:
        def make_durable(digests):
            raise OSError(5, "Input/output error")

        writer = IndexWriter(index, make_durable=make_durable).start()
        try:
            path = project.root / "out" / "a.o"
            path.write_bytes(b"a")
            f = writer.commit(Entry.from_stat(b"out/a.o", os.lstat(path), b"\x07" * 32), b"out", b"\x07" * 32)
            with pytest.raises(OSError):
                f.result(30)
        finally:
            writer.stop()
        assert index.get(b"out/a.o") is None


def test_sync_blobs_does_not_sync_again_what_it_made_durable(home, tmp_path):
    cas = CAS(home.cas_dir)
    src = tmp_path / "a.o"
    src.write_bytes(b"object a\n")
    digest = cas.store_file(src, fsync=False).digest
    cas.sync_blobs([digest])
    hexd = digest.hex()
    assert cas._dir_durable(hexd[:2]) and cas._dir_durable(hexd[:4])  # the new fan-out is synced in
    blob = cas.blob_path(digest)
    blob.unlink()  # an fsync of it would fail now: the second round must not try one
    cas.sync_blobs([digest])
    # the same content stored again makes a new file: it is synced again
    assert cas.store_file(src, fsync=False).new
    blob.unlink()
    with pytest.raises(FileNotFoundError):
        cas.sync_blobs([digest])


def test_sync_blobs_forgets_a_removed_or_set_aside_blob(home, tmp_path):
    cas = CAS(home.cas_dir)
    src = tmp_path / "b.o"
    src.write_bytes(b"object b\n")
    digest = cas.store_file(src, fsync=False).digest
    cas.sync_blobs([digest])
    assert cas.remove(digest)
    with pytest.raises(FileNotFoundError):
        cas.sync_blobs([digest])
    cas.store_file(src, fsync=False)
    cas.sync_blobs([digest])
    cas.blob_path(digest).chmod(0o644)
    cas.blob_path(digest).write_bytes(b"short")  # damaged: a size that is not its own
    assert cas.store_file(src, fsync=False).new  # set aside, written again
    cas.blob_path(digest).unlink()
    with pytest.raises(FileNotFoundError):
        cas.sync_blobs([digest])
