"""The inotify watcher against a real directory tree (no daemon needed)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time

import pytest

from vrift.daemon.watcher import Watcher


def ignore_state(rel: bytes, name: bytes) -> bool:
    return name in (b".git", b".vrift")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "a.c").write_text("a")
    (root / ".vrift" / "staging").mkdir(parents=True)
    return root


@pytest.fixture
def watcher(tree):
    w = Watcher(os.fsencode(tree), ignore_state)
    w.add_tree(b"")  # not started: the test drains by hand, deterministically
    yield w
    w.stop()


def changed(w: Watcher) -> set[bytes]:
    w.drain()
    paths, _dirs, _full = w.take()
    return paths


def test_watches_every_directory_but_ignored_ones(watcher):
    assert set(watcher.wd_path.values()) == {b"", b"src", b"src/deep"}


def test_file_changes_are_reported(tree, watcher):
    (tree / "src" / "a.c").write_text("changed")
    (tree / "new.h").write_text("x")
    os.unlink(tree / "src" / "a.c")
    assert {b"src/a.c", b"new.h"} <= changed(watcher)


def test_state_dir_changes_are_ignored(tree, watcher):
    (tree / ".vrift" / "staging" / "1").write_text("x")
    assert changed(watcher) == set()


def test_directory_created_with_content_before_its_watch(tree, watcher):
    # mkdir -p and files inside, all before the watcher reads the CREATE of the top directory
    subprocess.run(["sh", "-c", f"mkdir -p {tree}/gen/x/y && echo 1 > {tree}/gen/x/y/f.o"], check=True)
    paths = changed(watcher)
    assert b"gen" in paths  # the daemon re-reads gen/ recursively: finds f.o although no event named it
    assert {b"gen", b"gen/x", b"gen/x/y"} <= set(watcher.wd_path.values())
    (tree / "gen" / "x" / "y" / "g.o").write_text("2")  # now watched directly
    assert b"gen/x/y/g.o" in changed(watcher)


def test_rename_pairs_across_reads_and_moves_watches(tree, watcher):
    os.rename(tree / "src", tree / "lib")
    watcher.drain()  # the pair may be split across reads: the mapping follows the cookie
    assert b"lib/deep" in watcher.wd_path.values()
    assert b"src/deep" not in watcher.wd_path.values()
    watcher.take()
    (tree / "lib" / "deep" / "n.c").write_text("n")
    assert b"lib/deep/n.c" in changed(watcher)


def test_directory_moved_out_stops_being_watched(tree, watcher, tmp_path):
    os.rename(tree / "src", tmp_path / "outside")
    watcher.drain()
    time.sleep(0.6)  # an unpaired MOVED_FROM is given time for its MOVED_TO
    watcher.drain()
    assert not any(p.startswith(b"src") for p in watcher.wd_path.values())


def test_queue_overflow_asks_for_a_full_rescan(tree, watcher):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 50_000:
        pytest.skip(f"max_queued_events={limit}: too many files to overflow it quickly")
    d = tree / "src"
    for i in range(limit // 2 + 100):  # create + close_write per file: over the limit
        (d / f"f{i}").write_bytes(b"")
    watcher.drain()
    _paths, _dirs, full = watcher.take()
    assert full and watcher.overflows >= 1
    assert watcher.stats()["overflows"] >= 1
    shutil.rmtree(d)


def test_exhausted_watches_mean_the_unwatched_subtrees_are_reread_at_each_sync(tree, monkeypatch):
    w = Watcher(os.fsencode(tree), ignore_state)
    real_add = w._inotify.add_watch

    def add_watch(path, mask):
        # the kernel boundary: a user's inotify watch limit cannot be lowered for one test
        if path.endswith(b"deep"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(path, mask)

    monkeypatch.setattr(w._inotify, "add_watch", add_watch)
    try:
        w.add_tree(b"")
        assert w.watches_exhausted and "exhausted" in w.degraded
        unwatched = {p for p in w.unwatched if p.endswith(b"deep")}
        assert unwatched and not w.covers(next(iter(unwatched)) + b"/x.c") and w.covers(b"src")
        assert unwatched <= w.take(for_sync=True)[0]
        assert unwatched <= w.take(for_sync=True)[0]  # every sync, not once
        assert not unwatched & w.take(for_sync=False)[0]
    finally:
        w.stop()
