"""The C walk (vrift/native/walk.c, settle.c) through its binding: the same answers on one
thread and on several, and the settle's flock protocol on a real VDir (a directory whose
flock a client holds confirms nothing; everything else is cleared)."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from vrift.cas import CAS
from vrift.identity import Project
from vrift.ingest import ALWAYS_IGNORED, Ingester
from vrift.vdir import layout, native
from vrift.vdir.index import ProjectIndex
from vrift.vdir.native_walk import FALLBACK, Snapshot


def _tree(root: Path, dirs: int = 30, files: int = 15) -> None:
    for d in range(dirs):
        sub = root / f"a{d % 3}" / f"d{d}"
        sub.mkdir(parents=True, exist_ok=True)
        for f in range(files):
            (sub / f"f{f}.c").write_bytes(b"x" * (d + f))
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")


@pytest.fixture
def indexed(home, tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    _tree(root)
    project = Project.at(root)
    index = ProjectIndex(home, project, durability="async").open()
    Ingester(project, index, CAS(home.cas_dir)).ingest()
    yield root, index
    index.close()


def _walk(root: Path, index, threads: int):
    paths, records, n = index.snapshot()
    with Snapshot(paths, records, n, os.fsencode(root), ALWAYS_IGNORED) as snap:
        r = snap.ingest_walk(threads=threads)
        return (sorted(r.changed), sorted(r.skipped), r.files, r.subdirs, r.symlinks,
                sorted(snap.unseen(listed_parents=False)))


def test_one_thread_and_several_agree(indexed):
    root, index = indexed
    (root / "a0/d0/f0.c").write_text("changed\n")
    (root / "a1/d1/new.c").write_text("new\n")
    (root / "a2/d2/f3.c").unlink()
    results = [_walk(root, index, t) for t in (1, 2, 4, 8)]
    assert all(r == results[0] for r in results)
    changed, skipped, files, subdirs, symlinks, unseen = results[0]
    # the edited file, the new one, and the directories whose mtime moved
    assert changed == sorted([b"a0/d0/f0.c", b"a1/d1/new.c", b"a1/d1", b"a2/d2"])
    assert skipped == [] and files == 30 * 15 - 2 and symlinks == 0
    assert b"a2/d2/f3.c" in unseen and b".git/HEAD" not in unseen


def test_a_path_too_long_for_the_c_walk_falls_back(indexed):
    root, index = indexed
    deep = root
    for _ in range(300):  # deeper than the C walk keeps directory fds for
        deep = deep / "d"
    os.makedirs(deep)
    paths, records, n = index.snapshot()
    with Snapshot(paths, records, n, os.fsencode(root), ALWAYS_IGNORED) as snap:
        assert snap.ingest_walk() is FALLBACK
    assert Ingester(Project.at(root), index, CAS(index.home.cas_dir)).ingest().walk == "python"


def _dirty(index) -> set[bytes]:
    return set(index.dirty_paths())


def test_settle_clears_dirty_except_under_a_held_flock(indexed):
    root, index = indexed
    index.with_vdir(lambda base, size: native.lib().vrift_flags_or_all(base, size, layout.F_DIRTY))
    assert len(_dirty(index)) == len(index)
    busy = os.open(root / "a1" / "d4", os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(busy, fcntl.LOCK_SH)  # a client between its mark and its rename
    try:
        paths, _, n = index.snapshot(records=False)
        with Snapshot(paths, None, n, os.fsencode(root), ALWAYS_IGNORED) as snap:
            todo, changed, refresh, done = [b""], [], [], 0
            while todo:
                batch, todo = todo[:5], todo[5:]
                r = index.with_vdir(lambda base, size: snap.settle(batch, base, size, 40, b".vrift", threads=2))
                assert r is not FALLBACK and r.dirs_done >= 1
                todo += batch[r.dirs_done:] + r.dirs
                changed += r.changed
                refresh += r.refresh
                done += r.dirs_done
            assert snap.unseen(listed_parents=True) == []
        assert done == 1 + 3 + 30
        held = {b"a1/d4"} | {b"a1/d4/f%d.c" % f for f in range(15)}
        assert _dirty(index) == held
        assert sorted(changed) == sorted(held - {b"a1/d4"}) and refresh == [b"a1/d4"]
    finally:
        os.close(busy)


@pytest.mark.parametrize("paths, records, count", [
    (b"a\0b", bytes(112), 2),        # fewer records than names
    (b"a\0b\0c", bytes(224), 2),     # more names than records
    (b"a", bytes(224), 2),           # fewer names than records
    (b"a\0b", bytes(224 + 1), 2),    # a record cut short
])
def test_a_snapshot_whose_names_and_records_disagree_is_refused(tmp_path, paths, records, count):
    with pytest.raises(ValueError, match="does not hold"):
        Snapshot(paths, records, count, os.fsencode(tmp_path), ALWAYS_IGNORED)
