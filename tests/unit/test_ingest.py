"""Ingest and reconcile against a real tree, a real CAS, real LMDB and a real VDir file."""
from __future__ import annotations

import json
import os
import stat as statmod
from pathlib import Path

import pytest

from vrift.cas import CAS
from vrift.ingest import Ingester
from vrift.identity import Project
from vrift.vdir import layout
from vrift.vdir.index import ProjectIndex
from vrift.vdir.shm import VDirReader

import blake3


def make_tree(root: Path) -> None:
    (root / "src" / "sub").mkdir(parents=True)
    (root / "src" / "a.c").write_bytes(b"int a;\n")
    (root / "src" / "b.c").write_bytes(b"int a;\n")  # duplicate content
    (root / "src" / "sub" / "c.h").write_bytes(b"#define C 1\n" * 100)
    (root / "with space.txt").write_bytes(b"spaces")
    (root / os.fsdecode(b"bad-\xff-name")).write_bytes(b"non utf-8 name")
    (root / ("l" * 200)).write_bytes(b"long name")
    os.symlink("src/a.c", root / "link-in")
    os.symlink("/etc/passwd", root / "link-out")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: x")
    (root / "build").mkdir()
    (root / "build" / "out.o").write_bytes(b"obj")


@pytest.fixture
def project(tmp_path) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    make_tree(root)
    return Project.at(root)


def open_index(home, project, **kw) -> ProjectIndex:
    return ProjectIndex(home, project, **kw).open()


@pytest.mark.parametrize("store_blobs", [False, True], ids=["lazy", "copy"])
def test_ingest_indexes_files_dirs_symlinks_and_skips_ignored(home, project, store_blobs):
    index = open_index(home, project)
    try:
        cas = CAS(home.cas_dir)
        report = Ingester(project, index, cas, ignore=["build"], store_blobs=store_blobs).ingest()
        assert report.skipped == []
        paths = {e.path for e in index.entries()}
        assert b"src/a.c" in paths and b"src/sub/c.h" in paths and b"" in paths and b"src" in paths
        assert b"with space.txt" in paths and b"bad-\xff-name" in paths and b"l" * 200 in paths
        assert not any(p.startswith(b".git") or p.startswith(b"build") for p in paths)
        # every file entry's digest is BLAKE3 of the content; its blob is in the CAS when
        # ingest stores blobs, and nothing is copied when it does not
        for e in index.entries():
            full = os.path.join(os.fsencode(project.root), e.path) if e.path else os.fsencode(project.root)
            st = os.lstat(full)
            assert (e.ino, e.size, e.mtime_ns, e.mode) == (st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)
            if statmod.S_ISREG(st.st_mode):
                data = Path(os.fsdecode(full)).read_bytes()
                assert e.digest == blake3.blake3(data).digest()
                assert cas.has(e.digest) == store_blobs
                if store_blobs:
                    assert cas.read_bytes(e.digest) == data
        # symlinks recorded as symlinks, never followed (the one pointing out of the root too)
        for name in (b"link-in", b"link-out"):
            e = index.get(name)
            assert e.flags & layout.F_SYMLINK and statmod.S_ISLNK(e.mode) and not any(e.digest)
        # duplicate content stored once
        assert index.get(b"src/a.c").digest == index.get(b"src/b.c").digest
        assert report.hashed == report.files == 6
        assert cas.stats()[0] == (5 if store_blobs else 0) and report.new_blobs == cas.stats()[0]
    finally:
        index.close()


def test_reingest_of_unchanged_tree_only_stats(home, project):
    cas = CAS(home.cas_dir)
    index = open_index(home, project)
    try:
        first = Ingester(project, index, cas).ingest()
        gen = index.generation
        second = Ingester(project, index, cas).ingest()
        assert second.hashed == 0 and second.reused == first.files and second.updated == 0
        assert index.generation == gen  # nothing applied
    finally:
        index.close()


def test_reingest_sees_edit_delete_rename_and_publishes_to_shm(home, project):
    cas = CAS(home.cas_dir)
    index = open_index(home, project)
    try:
        ing = Ingester(project, index, cas)
        ing.ingest()
        (project.root / "src" / "a.c").write_bytes(b"int changed;\n")
        (project.root / "src" / "b.c").unlink()
        os.rename(project.root / "src" / "sub", project.root / "src" / "moved")
        report = ing.ingest()
        assert report.hashed == 2  # a.c edited, c.h seen under its new name (new inode path)
        assert index.get(b"src/b.c") is None
        assert index.get(b"src/sub/c.h") is None and index.get(b"src/sub") is None
        assert index.get(b"src/moved/c.h") is not None
        assert index.get(b"src/a.c").digest == blake3.blake3(b"int changed;\n").digest()
        reader = VDirReader(index.vdir_path)
        try:
            assert reader.lookup(b"src/a.c").digest == index.get(b"src/a.c").digest
            gone = reader.lookup(b"src/b.c")
            assert gone is None or gone.flags & layout.F_DELETED
        finally:
            reader.close()
    finally:
        index.close()


def test_reconcile_paths_and_subtrees(home, project):
    cas = CAS(home.cas_dir)
    index = open_index(home, project)
    try:
        ing = Ingester(project, index, cas)
        ing.ingest()
        (project.root / "src" / "new").mkdir()
        (project.root / "src" / "new" / "x.c").write_bytes(b"x")
        (project.root / "src" / "sub" / "c.h").unlink()
        report = ing.reconcile([b"src/new", b"src/sub/c.h"])
        assert index.get(b"src/new/x.c").digest == blake3.blake3(b"x").digest()
        assert index.get(b"src/sub/c.h") is None
        assert report.deleted == 1
        # reconciling a removed directory drops everything under it
        import shutil
        shutil.rmtree(project.root / "src")
        ing.reconcile([b"src"])
        assert not [e for e in index.entries() if e.path.startswith(b"src")]
    finally:
        index.close()


def test_unreadable_entries_are_reported_and_skipped(home, project):
    os.mkfifo(project.root / "a-fifo")
    index = open_index(home, project)
    try:
        report = Ingester(project, index, CAS(home.cas_dir)).ingest()
        assert [p for p, _ in report.skipped] == ["a-fifo"]
        assert index.get(b"a-fifo") is None
    finally:
        index.close()


@pytest.mark.parametrize("mode", ["lazy", "copy"])
def test_cli_ingest_stat_status(run_vrift, project, mode):
    out = run_vrift("ingest", "--json", cwd=project.root, check=True, env={"VRIFT_INGEST_BLOBS": mode})
    data = json.loads(out.stdout)
    assert data["files"] == 7 and data["via"] == "local"  # build/out.o is not ignored here
    st = json.loads(run_vrift("stat", "--json", project.root / "src" / "a.c", check=True).stdout)
    assert st["path"] == "src/a.c"
    assert st["digest"] == blake3.blake3(b"int a;\n").hexdigest()
    assert st["size"] == 7 and st["mtime_ns"] == os.stat(project.root / "src" / "a.c").st_mtime_ns
    assert st["flags"] == []
    status = json.loads(run_vrift("status", "--json", check=True).stdout)
    (p,) = status["projects"]
    assert p["root"] == str(project.root) and p["files"] == 7
    assert status["cas"]["blobs"] == (6 if mode == "copy" else 0)  # a.c and b.c share one blob
    assert status["dedup"]["referenced_blobs"] == 6  # counted from the digests either way
    doctor = run_vrift("doctor", env={"VRIFT_INGEST_BLOBS": mode}).stdout
    blobs = next(line for line in doctor.splitlines() if f"blobs {project.root}" in line)
    if mode == "lazy":  # a source without a blob is normal then
        assert "7 indexed files have no blob (0 quarantined): sources are hashed, not copied" in blobs
    else:
        assert "every indexed file has its blob" in blobs
    human = run_vrift("status", check=True).stdout
    assert any(line.split()[:1] == ["project"] and "shared" in line for line in human.splitlines())
    assert str(project.root) in human
    missing = run_vrift("stat", project.root / "nope.c")
    assert missing.returncode != 0 and "nope.c" in missing.stderr and "\n" not in missing.stderr.strip()


def test_index_filter_keeps_paths_and_subtrees_out(home, project):
    """The plugins' vrift_index_filter reaches the walker: a rejected file is not indexed and
    a rejected directory is not descended into."""
    asked = []

    def keep(rel: bytes) -> bool:
        asked.append(rel)
        return not (rel.endswith(b".txt") or rel == b"src/sub")

    index = open_index(home, project)
    try:
        Ingester(project, index, CAS(home.cas_dir), index_filter=keep).ingest()
        paths = {e.path for e in index.entries()}
        assert b"with space.txt" not in paths and b"src/sub" not in paths and b"src/sub/c.h" not in paths
        assert b"src/a.c" in paths
        assert b"src/sub/c.h" not in asked  # never listed
    finally:
        index.close()
