"""The native re-ingest walk (vrift/native/walk.c) gives what the Python walk gives: the same
report and the same index, on real trees changed in every way a tree changes between ingests.

Each test ingests one tree into two indexes of their own (two homes): one re-ingested with the C
walk, one with the Python walk, then compares the two (and the index with the tree)."""
from __future__ import annotations

import json
import os
import subprocess
import shutil
import tempfile
import traceback
from pathlib import Path

import blake3
import pytest

from vrift.cas import CAS
from vrift.home import Home
from vrift.identity import Project
from vrift.ingest import Ingester
from vrift.progress import Progress
from vrift.vdir import native
from vrift.vdir.index import ProjectIndex


class Pair:
    """The same tree in two indexes: `native` re-ingests with the C walk, `python` without."""

    def __init__(self, base: Path, root: Path):
        self.root = root
        project = Project.at(root)
        self.sides = {}
        for name in ("native", "python"):
            home = Home(root=base / f"home-{name}", shm_dir=base / f"shm-{name}").ensure()
            index = ProjectIndex(home, project, durability="async").open()
            ing = Ingester(project, index, CAS(home.cas_dir), workers=2)
            ing.native = name == "native"
            self.sides[name] = (index, ing)

    def ingest(self, bar_of=lambda name: None) -> dict:
        reports = {name: ing.ingest(bar=bar_of(name)) for name, (_, ing) in self.sides.items()}
        return reports

    def close(self) -> None:
        for index, _ in self.sides.values():
            index.close()

    def state(self, name: str) -> list[tuple[bytes, bytes]]:
        return sorted((e.path, e.pack_record()) for e in self.sides[name][0].entries())


def summary(report) -> dict:
    d = report.to_json()
    for k in ("seconds", "files_per_s"):
        d.pop(k)
    d["skipped"] = sorted((s["path"], s["reason"]) for s in d["skipped"])
    return d


def same(pair: Pair, first: bool = False) -> dict:
    """Re-ingest both sides; assert they agree; return the native side's report."""
    reports = pair.ingest()
    native, python = reports["native"], reports["python"]
    assert python.walk == "python"
    assert native.walk == ("python" if first else "native")
    assert summary(native) == summary(python)
    assert pair.state("native") == pair.state("python")
    return native


def build(root: Path) -> None:
    for d in range(4):
        for s in range(3):
            sub = root / f"d{d}" / f"s{s}"
            sub.mkdir(parents=True)
            for f in range(12):
                (sub / f"f{f}.c").write_bytes(f"int x{d}_{s}_{f};\n".encode() * (f + 1))
    (root / "top.h").write_text("#define TOP 1\n")
    os.symlink("top.h", root / "link.h")
    os.symlink("d0", root / "dirlink")
    os.symlink("nowhere", root / "dangling")
    os.link(root / "top.h", root / "d1" / "hard.h")
    for ign in (".git", "d2/.git"):
        (root / ign).mkdir()
        (root / ign / "HEAD").write_text("ref\n")
    (root / "d3" / ".ninja_log").write_text("# ninja log\n")
    (root / "d3" / ".ninja_deps").write_text("deps\n")
    odd = os.fsencode(root) + b"/d0/odd-\xff\xfe name:\n.c"
    with open(odd, "wb") as f:
        f.write(b"odd\n")
    os.mkfifo(root / "d1" / "fifo")


@pytest.fixture
def pair(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    build(root)
    p = Pair(tmp_path, root)
    yield p
    p.close()


def test_unchanged_tree_is_confirmed_in_c(pair):
    first = same(pair, first=True)
    assert first.hashed > 100 and ("d1/fifo", "not a regular file, directory or symlink") in first.skipped
    again = same(pair)
    assert again.hashed == 0 and again.updated == 0 and again.deleted == 0
    assert again.reused == again.files == first.files
    assert again.dirs == first.dirs and again.symlinks == first.symlinks == 3
    # nothing ignored was indexed
    index = pair.sides["native"][0]
    assert all(b".git" not in e.path.split(b"/") and not e.path.endswith(b".ninja_log") for e in index.entries())


def test_edits_new_files_deletions_and_kind_changes(pair):
    same(pair, first=True)
    root = pair.root
    (root / "d0/s0/f1.c").write_text("edited\n")                 # content and size
    os.utime(root / "d0/s0/f2.c", ns=(1, 2))                      # mtime only
    os.chmod(root / "d0/s0/f3.c", 0o600)                          # ctime and mode
    os.link(root / "d0/s1/f0.c", root / "d0/s1/twin.c")           # nlink of an unchanged file
    (root / "d1/s0/f0.c").unlink()
    for f in (root / "d1/s1").iterdir():
        f.unlink()
    (root / "d1/s1").rmdir()                                       # a whole directory gone
    (root / "d2/s0/f0.c").unlink()
    (root / "d2/s0/f0.c").mkdir()                                  # a file became a directory
    (root / "d2/s0/f0.c/inner.c").write_text("inner\n")
    (root / "d2/s1/f0.c").unlink()
    os.symlink("../s0", root / "d2/s1/f0.c")                       # a file became a symlink
    os.unlink(root / "link.h")
    os.symlink("d1/hard.h", root / "link.h")                       # a symlink retargeted
    (root / "d3/new").mkdir()
    (root / "d3/new/a.c").write_text("new\n")
    (root / "top.h").write_text("#define TOP 2\n")                 # a hard-linked file edited
    with open(os.fsencode(root) + b"/d3/\x01\x7f\xc3(.c", "wb") as f:
        f.write(b"odd bytes\n")
    r = same(pair)
    assert r.hashed >= 6 and r.deleted >= 12
    index = pair.sides["native"][0]
    assert index.get(b"d1/s1") is None and index.get(b"d1/s1/f3.c") is None
    assert index.get(b"d2/s0/f0.c/inner.c") is not None
    assert index.get(b"d1/hard.h").digest == blake3.blake3(b"#define TOP 2\n").digest()
    assert index.get(b"d0/s1/f0.c").nlink == 2
    again = same(pair)
    assert again.hashed == 0 and again.updated == 0 and again.deleted == 0


def test_a_file_changing_during_the_walk(pair):
    same(pair, first=True)
    target = pair.root / "d0/s2/f5.c"
    final = b"changed again while the walk ran, longer than before\n"

    class ChangeOnce(Progress):  # the meter's first tick comes after the walk listed the tree
        def __init__(self):
            super().__init__(None, "ingest", enabled=False)
            self.pending = True

        def advance(self, n: int = 1) -> None:
            if self.pending:
                self.pending = False
                target.write_bytes(final)
            super().advance(n)

    for name, (index, ing) in pair.sides.items():  # one side at a time: each rewrite is new
        target.write_text("changed before the walk\n")
        report = ing.ingest(bar=ChangeOnce())
        assert report.walk == name and [p for p, _ in report.skipped] == ["d1/fifo"]
        e = index.get(b"d0/s2/f5.c")
        assert e.digest == blake3.blake3(final).digest() and e.same_file(os.lstat(target)), name


def test_the_root_gone_empties_the_index(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "a.c").write_text("a\n")
    p = Pair(tmp_path, root)
    try:
        same(p, first=True)
        (root / "a.c").unlink()
        root.rmdir()
        r = same(p)
        assert r.deleted == 2 and len(p.sides["native"][0]) == 0
    finally:
        p.close()


def test_user_ignore_patterns_keep_the_python_walk(pair):
    same(pair, first=True)
    index, ing = pair.sides["native"]
    patterned = Ingester(ing.project, index, ing.cas, ignore=["*.h"])
    assert patterned.ingest().walk == "python"


NOBODY = 65534


def unreadable_scenario(base: Path) -> dict:
    root = base / "tree"
    p = Pair(base, root)
    try:
        p.ingest()
        os.chmod(root / "d0", 0)            # cannot be listed: its indexed children are dropped
        os.chmod(root / "d1/s0", 0o444)     # listed, but no name in it can be lstat-ed
        reports = p.ingest()
        out = {name: summary(r) for name, r in reports.items()}
        out["walks"] = [r.walk for r in reports.values()]
        out["same"] = p.state("native") == p.state("python")
        os.chmod(root / "d0", 0o755)
        os.chmod(root / "d1/s0", 0o755)
        return out
    finally:
        p.close()


def as_unprivileged(fn, base: Path) -> dict:
    """fn(base) in a forked child that runs as nobody (root may list any directory)."""
    native.lib()  # loaded before the fork: the child may not read the interpreter's files
    for dirpath, dirnames, filenames in os.walk(base):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirnames + filenames)]:
            os.lchown(n, NOBODY, NOBODY)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(w, json.dumps(fn(base)).encode())
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc().encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, data.decode(errors="replace")
    return json.loads(data)


def test_unreadable_directories_are_skipped_alike():
    """An unlistable directory and one whose names cannot be lstat-ed are reported alike by
    both walks (run as an unprivileged user)."""
    base = Path(tempfile.mkdtemp(prefix="vrift-nw-"))
    try:
        root = base / "tree"
        root.mkdir()
        build(root)
        out = as_unprivileged(unreadable_scenario, base) if os.geteuid() == 0 else unreadable_scenario(base)
        assert out["walks"] == ["native", "python"] and out["same"]
        assert out["native"] == out["python"]
        skipped = dict(map(tuple, out["native"]["skipped"]))
        assert skipped["d0"] == "cannot list: Permission denied"
        assert skipped["d1/s0/f0.c"] == "Permission denied"
        assert out["native"]["deleted"] >= 36
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)
