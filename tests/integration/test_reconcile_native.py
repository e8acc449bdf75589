"""A restarted daemon's reconcile (docs/daemons.md "Start-up") in C and in Python: after a tree
was changed in every way while no daemon ran, the index the reconcile leaves is the tree, every
entry it could confirm is clean, and a directory whose flock a client holds stays unsettled
until the client lets go.  Real daemons, a real VDir, a real flock."""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

import blake3
import pytest

from support.build import vrift
from support.daemon import daemon_pid, daemons, make_project, track  # noqa: F401
from vrift.daemon.client import connect_project, wait_for
from vrift.vdir import layout
from vrift.vdir.shm import VDirReader

pytestmark = pytest.mark.usefixtures("daemons")

IGNORED = {".git", ".vrift", ".ninja_log", ".ninja_deps", ".ninja_lock"}


def _files() -> dict[str, bytes]:
    files = {f"src/d{d}/f{f}.c": f"int f{d}_{f};\n".encode() * (f + 1) for d in range(6) for f in range(20)}
    files.update({"include/top.h": b"#define TOP 1\n", ".git/HEAD": b"ref\n", "src/d1/.ninja_log": b"# log\n"})
    return files


def _change_everything(root: Path) -> None:
    (root / "src/d0/f1.c").write_bytes(b"edited\n")
    os.utime(root / "src/d0/f2.c", ns=(1_000_000_000, 1_000_000_000))
    os.chmod(root / "src/d0/f3.c", 0o600)
    os.link(root / "src/d0/f4.c", root / "src/d0/twin.c")
    (root / "src/d1/f0.c").unlink()
    for f in (root / "src/d2").iterdir():
        f.unlink()
    (root / "src/d2").rmdir()
    (root / "src/d3/f0.c").unlink()
    (root / "src/d3/f0.c").mkdir()
    (root / "src/d3/f0.c/inner.c").write_bytes(b"inner\n")
    os.symlink("../../include/top.h", root / "src/d3/top.h")
    (root / "src/new/deeper").mkdir(parents=True)
    (root / "src/new/deeper/n.c").write_bytes(b"new\n")
    with open(os.fsencode(root) + b"/src/d5/odd-\xff name:\n.c", "wb") as f:
        f.write(b"odd\n")
    (root / "src/d5/.git").mkdir()
    (root / "src/d5/.git/config").write_bytes(b"x\n")


def _tree_entries(root: Path) -> dict[bytes, os.stat_result]:
    out = {b"": os.lstat(root)}
    broot = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(broot):
        dirnames[:] = [d for d in dirnames if os.fsdecode(d) not in IGNORED]
        for name in dirnames + [f for f in filenames if os.fsdecode(f) not in IGNORED]:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, broot)] = os.lstat(full)
    return out


def _check_index_is_the_tree(vdir: Path, root: Path, busy: bytes | None) -> None:
    truth = _tree_entries(root)
    with VDirReader(vdir) as r:
        live = {e.path: e for e in r.entries() if not e.flags & layout.F_DELETED}
    assert sorted(live) == sorted(truth)
    for rel, st in truth.items():
        e = live[rel]
        assert e.same_file(st) and e.nlink == st.st_nlink, rel
        full = os.path.join(os.fsencode(root), rel)
        if os.path.isfile(full) and not os.path.islink(full):
            with open(full, "rb") as f:
                assert e.digest == blake3.blake3(f.read()).digest(), rel
        in_busy = busy is not None and (rel == busy or os.path.dirname(rel) == busy)
        if not in_busy:
            assert not e.flags & layout.F_DIRTY, rel


@pytest.mark.parametrize("walk", ["native", "python"])
def test_restart_reconcile_after_everything_changed(tmp_path, daemons, walk):
    home = daemons
    project = make_project(tmp_path, files=_files())
    root = project.root
    if walk == "python":  # an ignore glob: the walk runs in Python
        (root / ".vrift.yaml").write_text("ignore:\n  - '*.tmp'\n")
    vrift("sync", cwd=root, check=True)
    vrift("daemon", "stop", cwd=root, check=True)
    assert wait_for(lambda: daemon_pid(home, project) is None, 10)
    _change_everything(root)
    busy = os.open(root / "src/d4", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(busy, fcntl.LOCK_SH)  # a client between its mark and its rename
        vrift("sync", cwd=root, check=True)  # starts a daemon; waits for its reconcile
        track(home, daemon_pid(home, project))
        with connect_project(home, project) as c:
            rec = c.stats()["reconcile"]
        assert rec["walk"] == walk and not rec["running"] and rec["confirmed"] > 50
        vdir = home.vdir_path(project.id)
        _check_index_is_the_tree(vdir, root, busy=b"src/d4")
        with VDirReader(vdir) as r:  # nothing under the held flock was confirmed
            assert r.lookup(b"src/d4/f0.c").flags & layout.F_DIRTY
    finally:
        os.close(busy)  # the client lets go: a later re-read settles the directory

    def settled() -> bool:
        with VDirReader(home.vdir_path(project.id)) as r:
            return not any(e.flags & layout.F_DIRTY for e in r.entries() if not e.flags & layout.F_DELETED)

    assert wait_for(settled, 30)
    _check_index_is_the_tree(home.vdir_path(project.id), root, busy=None)
