"""The daemon's side of the cwd ('C') record and of stdin from a file (docs/cache.md, "The
working directory", "stdin"), with logs written by hand in the library's format."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from support.cache import FakeAction
from vrift.cache import actionlog
from vrift.cache.fingerprint import Context, Fingerprint, build, match
from vrift.cas import CAS


def tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src/a.c").write_text("int a;\n")
    (root / "feed.txt").write_text("data\n")
    return root


def ctx_for(tmp_path: Path, root: Path) -> Context:
    return Context(root, CAS(tmp_path / "cas", fsync=False))


def test_a_cwd_read_makes_the_root_an_input(tmp_path):
    one = tree(tmp_path / "one")
    a = FakeAction(one)
    (one / "a.o").write_bytes(b"OBJ with " + bytes(one))
    a.log(("R", bytes(one / "src/a.c")), ("C", bytes(one / "src")), ("W", bytes(one / "a.o")))
    logs = actionlog.take(a.dir)
    assert logs.cwd_read() == bytes(one / "src")
    fp = Fingerprint.from_json(build(logs, ctx_for(tmp_path, one), 0, time.time_ns()).to_json())
    assert ["C", str(one / "src"), str(one)] in fp.inputs
    assert all(k != "R" or p != str(one / "src") for k, p, *_ in fp.inputs), "the directory is no file input"
    assert match(fp, ctx_for(tmp_path, one)) is None
    two = tmp_path / "two"
    shutil.copytree(one, two)
    assert match(fp, ctx_for(tmp_path, two)) == f"cwd differs and is read (the project is at {two}, it was at {one})"


def test_without_a_cwd_read_another_checkout_matches(tmp_path):
    one = tree(tmp_path / "one")
    a = FakeAction(one)
    (one / "a.o").write_bytes(b"OBJ")
    a.log(("R", bytes(one / "src/a.c")), ("W", bytes(one / "a.o")))
    fp = build(actionlog.take(a.dir), ctx_for(tmp_path, one), 0, time.time_ns())
    two = tmp_path / "two"
    shutil.copytree(one, two)
    assert match(fp, ctx_for(tmp_path, two)) is None


def test_stdin_read_is_kept_with_its_end_offset(tmp_path):
    root = tree(tmp_path / "p")
    ctx = ctx_for(tmp_path, root)
    feed = bytes(root / "feed.txt")
    a = FakeAction(root)
    (root / "out.txt").write_text("data\n")
    a.log(("R", feed), ("W", bytes(root / "out.txt")))
    fp = build(actionlog.take(a.dir), ctx, 0, time.time_ns(), stdin=feed, stdin_end=5)
    assert fp.stdin == ["feed.txt", 5] and "stdin" in fp.content()
    assert match(fp, ctx, stdin=feed) is None
    (root / "other.txt").write_text("data\n")
    assert match(fp, ctx, stdin=bytes(root / "other.txt")) == "stdin is other.txt (it was feed.txt)"
    assert match(fp, ctx, None) == "stdin is not a file read from its start (it was feed.txt)"

    # stdin named at LOOKUP but never read: no condition on it, and the id is as before
    b = FakeAction(root)
    b.log(("W", bytes(root / "out.txt")))
    fp2 = build(actionlog.take(b.dir), ctx, 0, time.time_ns(), stdin=feed, stdin_end=0)
    assert fp2.stdin is None and "stdin" not in fp2.content()
    assert match(fp2, ctx, None) is None
