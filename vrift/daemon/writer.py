"""The one thread that writes a project's index.

Every mutation of the index (commits, reconciles, ingests, DIRTY bits, shared-memory rebuilds)
runs here, so the index needs no locking of its own.  Commits queued while an apply is in
progress are applied together in the next one: with `sync` and `wal` durability this is group
commit: one round of blob durability (`make_durable`: the group's blobs, stored without
fsync, made durable together), then one index fsync, acknowledge many clients.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

log = logging.getLogger("vrift.daemon")

MAX_GROUP = 512  # commits per apply: bounds the latency of the first one in a group
# After a commit group, watcher changes are applied at most this often: each application is an
# index write (an fsync in wal mode) and during a build most events are the commits' own
# renames.  Calls (SYNC, INVALIDATE, …) and idle ticks still apply them first.
WATCH_COALESCE_S = 0.025


class _Commit:
    __slots__ = ("entry", "parent", "blob", "future")

    def __init__(self, entry, parent, blob, future):
        self.entry = entry
        self.parent = parent
        self.blob = blob  # digest of a blob to make durable before the entry that names it
        self.future = future


class _Call:
    __slots__ = ("fn", "future")

    def __init__(self, fn, future):
        self.fn = fn
        self.future = future


class IndexWriter:
    def __init__(self, index, before_job: Callable[[], None] | None = None,
                 dir_entries: Callable[[set[bytes]], list] | None = None,
                 clear_dirty: Callable[[list[bytes]], object] | None = None,
                 make_durable: Callable[[list[bytes]], None] | None = None):
        self.index = index
        self.make_durable = make_durable  # CAS.sync_blobs: blobs on disk before the index names them
        # clears DIRTY on committed paths and their directories (the daemon's checks the tree first)
        self.clear_dirty = clear_dirty or (lambda rels: [index.set_dirty(r, False) for r in rels])
        self._last_watched = 0.0
        self.before_job = before_job  # apply pending watcher changes (before calls, after commits)
        self.dir_entries = dir_entries  # fresh entries of the committed files' directories
        self._q: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._stopped = False
        self.groups = 0
        self.commits = 0

    def start(self) -> "IndexWriter":
        self._thread.start()
        return self

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._q.put(None)
            self._thread.join()

    # -- submitting (any thread) -------------------------------------------------------------
    def commit(self, entry, parent: bytes, blob: bytes | None = None) -> Future:
        """Apply a committed file's entry with its refreshed directory entry, then clear DIRTY
        on both; the future gives the generation.  `blob`: the digest of a blob stored without
        fsync, made durable (with the group's others) before the entry is written."""
        f: Future = Future()
        self._q.put(_Commit(entry, parent, blob, f))
        return f

    def call(self, fn: Callable[[], object]) -> Future:
        f: Future = Future()
        if self._stopped:
            f.set_exception(RuntimeError("index writer stopped"))
            return f
        self._q.put(_Call(fn, f))
        return f

    def run(self, fn: Callable[[], object], timeout: float | None = None):
        """call() and wait for the result."""
        return self.call(fn).result(timeout)

    # -- the writer thread ------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job = self._q.get(timeout=0.05)
            except queue.Empty:
                self._watched()
                continue
            if job is None:
                return
            if isinstance(job, _Call):
                self._watched()
                self._do_call(job)
                continue
            group = [job]
            stop_after = False
            while len(group) < MAX_GROUP:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop_after = True
                    break
                if isinstance(nxt, _Call):
                    if group:  # calls in a row: no empty group (an index apply and a settle each)
                        self._do_group(group)
                        group = []
                    self._watched()
                    self._do_call(nxt)
                    continue
                group.append(nxt)
            if group:
                self._do_group(group)
            # after the group, not before: the commits' own renames are then seen as unchanged
            if time.monotonic() - self._last_watched >= WATCH_COALESCE_S:
                self._watched()
            if stop_after:
                return

    def _watched(self) -> None:
        self._last_watched = time.monotonic()
        if self.before_job is not None:
            try:
                self.before_job()
            except Exception:
                log.exception("applying watcher changes failed")

    def _do_call(self, job: _Call) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as e:  # handed to the waiting request
            job.future.set_exception(e)

    def _do_group(self, group: list[_Commit]) -> None:
        entries = [c.entry for c in group]
        parents = {c.parent for c in group}
        try:
            blobs = [c.blob for c in group if c.blob is not None]
            if blobs and self.make_durable is not None:
                self.make_durable(blobs)
            if self.dir_entries is not None:
                entries += self.dir_entries(parents)
            self.index.apply(entries)
            self.clear_dirty([c.entry.path for c in group] + sorted(parents))
            generation = self.index.generation
        except BaseException as e:
            for c in group:
                c.future.set_exception(e)
            return
        self.groups += 1
        self.commits += len(group)
        for c in group:
            c.future.set_result(generation)
