"""A restarted daemon's reconcile with the tree, in the background (docs/daemons.md "Start-up").

A daemon that finds an index serves it at once: the VDir its predecessor left (or one rebuilt
from LMDB) is published with every entry DIRTY — "ask the kernel" — and this walk takes the
mark off entry by entry as it confirms them against the disk.  Nothing stale is answered from
memory meanwhile, and what is confirmed is answered from memory from then on.

Natively (`_walk_native`, vrift/native/settle.c vrift_walk_settle; the usual case: no ignore
globs, no plugin filter) each batch of directories is listed, compared and settled in C by one
writer job: per directory, under its exclusive non-blocking flock, every name is lstat-ed
relative to the directory's fd and compared with its published VDir entry, and DIRTY cleared
where they agree, before the flock is released — the same protocol as `settle()`.  A directory
whose flock is busy confirms nothing (its names are re-read, and settled later); names that
differ or are new, and directories whose own entry differs, come back to Python and are handled
as below; indexed paths the walk did not see where it listed their directory are gone (a byte
per path of a snapshot of the index's paths, not a Python set) and re-read at the end.

Otherwise the walk lists directories on its own thread (read-only: nothing of the index is
touched there); the check of each batch of directories runs on the index writer thread, so
commits, SYNC requests and watcher changes interleave between batches and never race it:

- the names of a directory that have an entry are given to `settle()`, which clears DIRTY
  where the entry describes what is on disk, under the directory's exclusive flock — the same
  check that clears a commit's DIRTY, so a client renaming into the directory meanwhile either
  is seen by the comparison or marks its path again after the clear (commit.settle);
- what does not match, what is new and what is gone is re-read like a watcher event
  (`ProjectDaemon._reread`: a file whose writer still holds its beacon stays DIRTY);
- a directory's own entry is refreshed and settled when the directory itself is walked.

The watcher was started first, so every directory was watched before the walk lists it: a
change after the listing is an inotify event (applied before each writer job), one before it is
seen by the comparison.  Entries in directories the watcher could not watch (inotify limits) are
brought up to date but stay DIRTY (docs/daemons.md "Watcher").
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

from ..errors import VriftError
from ..ingest import ALWAYS_IGNORED
from ..locate import STATE_DIR
from ..vdir import native_walk
from ..vdir.entry import Entry
from .commit import settle

log = logging.getLogger("vrift.daemon")

BATCH_PATHS = 2048  # names checked per writer job: bounds how long a SYNC or commit waits behind one
IN_FLIGHT = 2       # batches listed ahead of the writer
DIRS_PER_JOB = 64   # directories handed to one native settle (it stops after BATCH_PATHS names)
STATE_DIR_B = STATE_DIR.encode()  # the one name a COMPLETE_DIR root may hold without an entry
MAX_WALKS = 3       # the VDir rebuilt during a walk (every entry DIRTY again): walk again, this often


class Reconciler:
    native = True  # the walk in C where it applies (_walk_native); tests turn it off to compare

    def __init__(self, daemon):
        self.daemon = daemon
        self.done = threading.Event()
        self.dirs = 0
        self.confirmed = 0
        self.reread = 0
        self.walks = 0
        self.walk = ""  # "native" (in C) or "python": how the last walk ran
        self.started = 0.0
        self.seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)

    def start(self) -> "Reconciler":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stats(self) -> dict:
        return {"running": not self.done.is_set(), "dirs": self.dirs, "confirmed": self.confirmed,
                "reread": self.reread, "walks": self.walks, "walk": self.walk, "seconds": self.seconds}

    # -- the walker thread ---------------------------------------------------------------------
    def _run(self) -> None:
        d = self.daemon
        try:
            for _ in range(MAX_WALKS):
                rebuilt = d.index.counters["shm_rebuilt"]
                self.walks += 1
                self.walk = "native"
                if not self._walk_native():
                    self.walk = "python"
                    self._walk()
                if d.writer.run(lambda r=rebuilt: self._finish(r)):
                    break
            else:
                log.warning("start-up reconcile: the VDir was rebuilt during each of %d walks; "
                            "what was not confirmed keeps asking the kernel", MAX_WALKS)
                d.index.unconfirmed = False
        except RuntimeError:
            pass  # the writer stopped: the daemon is shutting down
        except Exception:
            log.exception("start-up reconcile failed: unconfirmed entries keep asking the kernel")
        finally:
            self.seconds = round(time.monotonic() - self.started, 3)
            self.done.set()
        log.info("start-up reconcile: %d directories, %d entries confirmed, %d paths re-read in %.2f s",
                 self.dirs, self.confirmed, self.reread, self.seconds)

    def _finish(self, rebuilt_before: int) -> bool:
        """On the writer thread: the walk is over unless the VDir was rebuilt meanwhile."""
        if self.daemon.index.counters["shm_rebuilt"] != rebuilt_before:
            return False
        self.daemon.index.unconfirmed = False
        return True

    # -- the native walk --------------------------------------------------------------------------
    def _walk_native(self) -> bool:
        """The walk with the listing, the comparison and the clear in C (vrift/native/settle.c,
        vrift_walk_settle), a batch of directories per writer job; False when it does not apply
        (ignore globs or a plugin filter, no VDir, no native library) or gave up (the Python walk
        then runs: what was cleared so far is confirmed)."""
        d = self.daemon
        if not self.native or not d.ingester.rules.only_builtin or d.ingester.index_filter is not None:
            return False
        try:
            native_walk._lib()
        except VriftError:
            return False
        paths, _, count = d.writer.run(lambda: d.index.snapshot(records=False))
        root = os.fsencode(d.project.root)
        with native_walk.Snapshot(paths, None, count, root, ALWAYS_IGNORED) as snap:
            stack = [b""]
            while stack:
                if d.stop_event.is_set():
                    return True
                batch = stack[-DIRS_PER_JOB:]
                del stack[-DIRS_PER_JOB:]
                done = d.writer.run(lambda b=batch: self._settle_native(snap, b))
                if done is None:
                    return False
                stack.extend(batch[done[0]:])  # not reached within BATCH_PATHS names
                stack.extend(done[1])
            gone = snap.unseen(listed_parents=True)
        for i in range(0, len(gone), BATCH_PATHS):
            d.writer.run(lambda g=gone[i:i + BATCH_PATHS]: self._gone(g))
        return True

    def _settle_native(self, snap, batch: list[bytes]):
        """On the writer thread: settle `batch` in C under each directory's flock; re-read what
        it did not confirm.  Returns (directories done, subdirectories to settle) or None."""
        d, index = self.daemon, self.daemon.index
        result = index.with_vdir(lambda base, size: snap.settle(batch, base, size, BATCH_PATHS, STATE_DIR_B))
        if result is None or result is native_walk.FALLBACK:
            return None
        self.dirs += result.dirs_done
        self.confirmed += result.confirmed
        todo = sorted(set(result.changed))
        if todo:
            self.reread += len(todo)
            d._reread(todo)
        parents = {os.path.dirname(p) for p in todo}
        refresh = [r for r in result.refresh if r not in parents]
        if refresh:
            with index.lazy():
                for rel in refresh:
                    own = index.get(rel)
                    if own is None or own.is_deleted:  # the tree shows it again after a crash
                        try:
                            index.apply([Entry.from_stat(rel, os.lstat(d.policy.absolute(rel)))])
                        except OSError:
                            pass
                d._refresh_dirs(refresh)
            d._settle(refresh)
        self._mark_unwatched(batch[:result.dirs_done])
        return result.dirs_done, result.dirs

    def _mark_unwatched(self, dirs: list[bytes]) -> None:
        """What the Python walk's mark_unwatched([rel, *files]) does, for directories the
        watcher could not watch (none, unless inotify ran out of watches)."""
        d = self.daemon
        if d.watcher is None or not d.watcher.unwatched:
            return
        for rel in dirs:
            if d.watched(rel):
                continue
            try:
                names = os.listdir(d.policy.absolute(rel))
            except OSError:
                names = []
            prefix = rel + b"/" if rel else b""
            d.mark_unwatched([rel, *(prefix + n for n in names)])

    def _gone(self, gone: list[bytes]) -> None:
        """On the writer thread: indexed paths the walk did not find where it listed their
        directory: dropped if ignored now, else re-read (the re-read removes them)."""
        d, index = self.daemon, self.daemon.index
        hidden = [p for p in gone if self._dropped(p)]
        if hidden:
            with index.lazy():
                index.apply([Entry.deleted(q) for p in hidden for q in [p, *(e.path for e in index.under(p))]])
        rest = sorted(set(gone) - set(hidden))
        if rest:
            self.reread += len(rest)
            d._reread(rest)

    # -- the Python walk -----------------------------------------------------------------------------
    def _walk(self) -> None:
        d = self.daemon
        children: dict[bytes, list[bytes]] = {}
        for e in d.index.entries():
            if e.path:
                children.setdefault(e.path.rpartition(b"/")[0], []).append(e.path)
        stack = [b""]
        in_flight: deque = deque()
        while stack:
            if d.stop_event.is_set():
                return
            batch, size = [], 0
            while stack and size < BATCH_PATHS:
                rel = stack.pop()
                listed = self._list(rel)
                for child, is_dir in listed or ():
                    if is_dir:
                        stack.append(child)
                batch.append((rel, listed, children.pop(rel, [])))
                size += 1 + len(listed or ())
            in_flight.append(d.writer.call(lambda b=batch: self._check(b)))
            while len(in_flight) > IN_FLIGHT:
                in_flight.popleft().result()
        for f in in_flight:
            f.result()

    def _list(self, rel: bytes) -> list[tuple[bytes, bool]] | None:
        """(child, is a directory) of every name the index keeps; None when `rel` cannot be
        listed (gone, no directory any more, unreadable: its entries keep asking the kernel)."""
        d = self.daemon
        ignored, keep = d.ingester.rules.ignored, d.ingester.index_filter
        prefix = rel + b"/" if rel else b""
        out = []
        try:
            with os.scandir(d.policy.absolute(rel)) as it:
                for de in it:
                    child = prefix + de.name
                    if ignored(child, de.name) or (keep is not None and not keep(child)):
                        continue
                    try:
                        is_dir = de.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False
                    out.append((child, is_dir))
        except OSError:
            return None
        return out

    # -- the writer thread -----------------------------------------------------------------------
    def _check(self, batch) -> None:
        d, index = self.daemon, self.daemon.index
        for rel, listed, indexed in batch:
            self.dirs += 1
            if listed is None:
                continue  # changed since it was listed from its parent: the watcher re-reads it
            own = index.get(rel)
            if own is None or own.is_deleted:
                try:
                    st = os.lstat(d.policy.absolute(rel))
                except OSError:
                    continue
                with index.lazy():  # the tree shows it again after a crash
                    index.apply([Entry.from_stat(rel, st)])
            names = {child for child, _ in listed}
            files = [child for child, is_dir in listed if not is_dir]
            known = [p for p in files if index.get(p) is not None]
            unsettled = set(settle(index, d.policy, known))
            self.confirmed += len(known) - len(unsettled)
            new = [p for p in files if index.get(p) is None]
            gone = [p for p in indexed if p not in names]
            hidden = [p for p in gone if self._dropped(p)]
            if hidden:  # ignored or filtered out now: no entry, like a full ingest leaves none
                with index.lazy():
                    index.apply([Entry.deleted(q) for p in hidden for q in [p, *(e.path for e in index.under(p))]])
            todo = sorted(unsettled | set(new) | (set(gone) - set(hidden)))
            if todo:
                self.reread += len(todo)
                d._reread(todo)
            else:
                with index.lazy():
                    d._refresh_dirs([rel])
                d._settle([rel])
            d.mark_unwatched([rel, *files])  # where the watcher cannot see changes: DIRTY for good

    def _dropped(self, rel: bytes) -> bool:
        ingester = self.daemon.ingester
        name = rel.rpartition(b"/")[2]
        keep = ingester.index_filter
        return ingester.rules.ignored(rel, name) or (keep is not None and not keep(rel))
