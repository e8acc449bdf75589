"""One project's index: LMDB (cold, durable) + WAL + the shared-memory VDir (hot), kept in step.

Exactly one process owns a project's index at a time (the project daemon, or `vrift ingest`
when no daemon runs): an flock on db/<id>/owner.lock says who.  Every change goes through
`apply()`, which makes it durable as the mode promises *before* it reaches shared memory, so
the hot tier is never ahead of what survives a crash (SPEC §7):

    sync   LMDB commit + fsync, then shared memory
    wal    WAL append + fdatasync, then shared memory; LMDB in background batches
    async  LMDB commit without fsync, then shared memory; env.sync every sync_interval_ms

Start-up: WAL replay -> LMDB -> shared memory (an existing VDir file is kept when it is valid
and its index generation matches LMDB's).

Why one module of ~540 lines: the three tiers, the in-memory records and the background flush
share one lock and one generation counter, and every method's correctness depends on the
order the others keep (durable before published, flushed before released).  Split apart, the
ordering would live between files; the storage formats themselves are elsewhere (lmdb_store,
wal, shm).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from . import layout, wal
from .entry import Entry
from .lmdb_store import LmdbStore
from .shm import VDirCorrupt, VDirError, VDirWriter

log = logging.getLogger("vrift.index")

MODES = ("sync", "wal", "async")
BUILD_CHUNK = 16384  # entries a VDir rebuild publishes at once


class ProjectIndex:
    def __init__(self, home: Home, project: Project, durability: str = "wal", sync_interval_ms: int = 100,
                 sync_batch_size: int = 1000, mapsize_gb: float = 10, shm: bool = True, unconfirmed: bool = False):
        if durability not in MODES:
            raise VriftError(f"durability: expected one of {', '.join(MODES)}, got {durability!r}")
        self.home, self.project = home, project
        self.durability = durability
        self.sync_interval = max(1, int(sync_interval_ms)) / 1000
        self.sync_batch_size = max(1, int(sync_batch_size))
        self.mapsize_gb = mapsize_gb
        self.use_shm = shm
        # True while the published entries are not yet confirmed against the tree (a daemon's
        # start-up): the VDir it opens or builds has every entry DIRTY; the owner clears this
        # once it has reconciled (docs/daemons.md, "Start-up")
        self.unconfirmed = unconfirmed
        # called before LMDB is synced in async mode: whatever the index refers to (CAS blobs)
        # must reach the disk first
        self.before_sync: Callable[[], None] | None = None
        self.db_dir = home.db_dir(project.id)
        self.wal_path = home.wal_path(project.id)
        self.vdir_path = home.vdir_path(project.id)
        self._root = str(project.root)
        # path -> its 112-byte record (layout.RECORD, DIRTY never set): one bytes object per
        # path instead of an Entry and its field objects, a third of the memory and nothing to
        # build at open (LMDB's values are these records)
        self._records: dict[bytes, bytes] = {}
        self._children: dict[bytes, set[bytes]] = {}  # directory -> indexed paths directly in it
        self._gen = 0
        self._lock = threading.RLock()
        self._store: LmdbStore | None = None
        self._wal: wal.WriteAheadLog | None = None
        self._shm: VDirWriter | None = None
        self._owner_fd = -1
        # wal mode: changes acknowledged through the WAL and not yet written to LMDB
        self._pending: dict[bytes, Entry] = {}
        self._pending_records: list[tuple[int, Entry]] = []
        self._lmdb_gen = 0
        self._flush_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._flush_mutex = threading.Lock()  # one LMDB flush at a time; taken before _lock
        self._lazy = 0  # > 0: applies skip their own fsync (see lazy())
        self._unsynced = False  # sync mode: a lazy apply wrote LMDB without syncing it
        self.counters = {"applies": 0, "changes": 0, "flushes": 0, "replayed": 0, "shm_reused": 0,
                         "shm_rebuilt": 0}

    # ------------------------------------------------------------------ life cycle
    def open(self) -> "ProjectIndex":
        self.home.ensure()
        self.db_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._take_ownership()
        try:
            self._store = LmdbStore(self.db_dir, self.mapsize_gb)
            self._store.write_description(self._root, self.project.id)
            self._replay_wal()
            meta = self._store.meta()
            self._gen = self._lmdb_gen = meta["generation"]
            self._records = dict(self._store.records())
            for p in self._records:
                self._link(p)
            # a set grown one add at a time ends with up to 4 times its size in slots (CPython
            # quadruples small sets): a copy is sized for what it holds, ~40 bytes a path less
            for parent, kids in self._children.items():
                self._children[parent] = set(kids)
            if self.durability == "wal":
                self._wal = wal.WriteAheadLog(self.wal_path)
            if self.use_shm:
                try:
                    self._open_shm()
                except VDirError as exc:  # e.g. the shared memory is full: serve without it
                    log.warning("%s; builds run unaccelerated until it can be made", exc)
        except BaseException:
            self._release()
            raise
        if self.durability != "sync":
            self._flusher = threading.Thread(target=self._flush_loop, name="vrift-index-flush", daemon=True)
            self._flusher.start()
        return self

    def _take_ownership(self) -> None:
        lock = self.db_dir / "owner.lock"
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise VriftError(f"index of {self._root} is in use by another process (pid {holder}); "
                             f"stop it or go through its daemon") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._owner_fd = fd

    def _replay_wal(self) -> None:
        """Apply WAL records newer than LMDB, in one transaction, then empty the WAL."""
        records, good, size = wal.read(self.wal_path)
        lmdb_gen = self._store.meta()["generation"]
        newer = [(g, e) for g, e in records if g > lmdb_gen]
        if newer:
            latest: dict[bytes, Entry] = {}
            for _, e in newer:
                latest[e.path] = e
            self._store.write(latest.values(), max(g for g, _ in newer), self._root, sync=True)
            self.counters["replayed"] = len(newer)
            log.info("replayed %d WAL records up to generation %d", len(newer), max(g for g, _ in newer))
        if size:
            if good < size:
                log.warning("WAL %s: dropped a torn tail of %d bytes", self.wal_path, size - good)
            log_ = wal.WriteAheadLog(self.wal_path)
            try:
                log_.reset()
            finally:
                log_.close()

    def _open_shm(self) -> None:
        try:
            writer = VDirWriter.open_existing(self.vdir_path, self._root, self.project.id,
                                              unconfirmed=self.unconfirmed)
        except (VDirError, OSError):
            writer = None
        if writer is not None:
            if writer.index_generation == self._gen and len(writer) == len(self._records):
                self._shm = writer
                self.counters["shm_reused"] += 1
                return
            writer.close()
        self._build_shm()

    def _build_shm(self) -> None:
        writer = VDirWriter.create(self.vdir_path, self._root, self.project.id,
                                   capacity_hint=len(self._records), index_generation=self._gen)
        try:
            # published a chunk at a time (one put_many of 10^6 entries held an Entry of each,
            # ~560 bytes a path); a reader meanwhile misses what is not in yet and asks the
            # kernel, except below a COMPLETE_DIR directory: those go in with the last chunk
            dirty = layout.F_DIRTY if self.unconfirmed else 0  # not yet checked: readers ask the kernel
            chunk: list[Entry] = []
            complete: list[Entry] = []
            for e in self._unpacked(self._records.items()):
                if dirty:
                    e = e.with_flags(e.flags | dirty)
                (complete if e.flags & layout.F_COMPLETE_DIR else chunk).append(e)
                if len(chunk) == BUILD_CHUNK:
                    writer.put_many(chunk, index_generation=self._gen)
                    chunk = []
            if chunk or complete:
                writer.put_many(chunk + complete, index_generation=self._gen)
        except BaseException:
            writer.close(unlink=True)
            raise
        old, self._shm = self._shm, writer
        if old is not None:
            old.retire()  # its file may not be at the name any more: its readers must let go
            old.close()
        self.counters["shm_rebuilt"] += 1

    def _publish(self, batch: list[Entry], **kw) -> bool:
        """put_many on the VDir; False when its file was found damaged under the writer (then
        the caller rebuilds it from the index once its own state is up to date)."""
        try:
            self._shm.put_many(batch, **kw)
            return True
        except VDirCorrupt as exc:
            log.warning("%s: rebuilding it from the index", exc)
            return False

    def rebuild_shm(self) -> None:
        """A fresh VDir file from the index (the old one was corrupted or removed).  When no new
        file can be made (shared memory full), clients run on the kernel until one can."""
        with self._lock:
            if self.use_shm:
                try:
                    self._build_shm()
                except VDirError as exc:
                    log.warning("%s; builds run unaccelerated meanwhile", exc)
                    old, self._shm = self._shm, None
                    if old is not None:  # damaged or stale: nobody may keep reading it
                        old.retire()
                        old.close(unlink=True)

    def damaged_shm(self, reader) -> list[int]:
        """Indices of the VDir entries failing their checksum, as `reader` (a VDirReader of the
        file at vdir_path) sees them; scanned through the writer's mapping when it is the same
        file."""
        with self._lock:
            shm = self._shm
        return reader.damaged() if shm is None else shm.damaged_view_of(reader)

    def flush(self) -> None:
        """Everything acknowledged so far written to LMDB and synced; the WAL emptied."""
        with self._flush_mutex, self._lock:
            self._flush_locked()

    def heartbeat(self) -> None:
        """The daemon is alive: readers may keep trusting the VDir (docs/vdir.md)."""
        shm = self._shm
        if shm is not None:
            shm.heartbeat()

    def close(self, unlink_shm: bool = False) -> None:
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None
        with self._flush_mutex, self._lock:
            try:
                if self._store is not None:
                    self._flush_locked()
            finally:
                if self._shm is not None:
                    self._shm.mark_dead()  # nobody keeps it true from now on: readers fall back
                    self._shm.close(unlink=unlink_shm)
                    self._shm = None
                self._release()

    def _release(self) -> None:
        if self._wal is not None:
            self._wal.close()
            self._wal = None
        if self._store is not None:
            self._store.close()
            self._store = None
        if self._owner_fd >= 0:
            os.close(self._owner_fd)
            self._owner_fd = -1

    def __enter__(self) -> "ProjectIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ reads
    @property
    def generation(self) -> int:
        return self._gen

    def __len__(self) -> int:
        return len(self._records)

    def get(self, rel: bytes) -> Entry | None:
        record = self._records.get(rel)
        return None if record is None else Entry.unpack_record(rel, record)

    def record(self, rel: bytes) -> bytes | None:
        """The packed record of `rel` (layout.RECORD), for comparisons without an Entry."""
        return self._records.get(rel)

    def record_getter(self) -> Callable[[bytes], bytes | None]:
        """`record` without the method call, for a loop over every path: the table's own
        lookup, valid until the index is reopened (apply changes the table in place)."""
        return self._records.get

    def paths(self) -> list[bytes]:
        """Every indexed path (a snapshot)."""
        with self._lock:
            return list(self._records)

    def snapshot(self, records: bool = True) -> tuple[bytes, bytes | None, int]:
        """(paths joined by NUL, their records joined in that order or None, count): for a C walk."""
        with self._lock:
            joined = b"".join(self._records.values()) if records else None
            return b"\0".join(self._records), joined, len(self._records)

    def entries(self) -> Iterator[Entry]:
        with self._lock:
            snapshot = self._records.copy()  # a copy of the table: half a list of (path, record)
        return self._unpacked(snapshot.items())

    @staticmethod
    def _unpacked(items: Iterable[tuple[bytes, bytes]]) -> Iterator[Entry]:
        unpack = Entry.unpack_record
        return (unpack(p, r) for p, r in items)

    def under(self, rel: bytes) -> list[Entry]:
        """Entries strictly below directory `rel` (b"" is the root), in O(size of the subtree)."""
        out: list[Entry] = []
        with self._lock:
            stack = [rel]
            while stack:
                for child in self._children.get(stack.pop(), ()):
                    out.append(Entry.unpack_record(child, self._records[child]))
                    stack.append(child)
        return out

    def _link(self, path: bytes) -> None:
        if path:
            self._children.setdefault(path.rpartition(b"/")[0], set()).add(path)

    def _unlink(self, path: bytes) -> None:
        if path:
            parent = path.rpartition(b"/")[0]
            kids = self._children.get(parent)
            if kids is not None:
                kids.discard(path)
                if not kids:
                    del self._children[parent]

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def lazy(self):
        """Applies inside skip their own fsync (sync and wal modes): for changes the tree itself
        will show again — the watcher's re-reads, outputs replayed from the CAS, whose blobs are
        already durable.  Lost in a crash, they come back from the start-up rescan; the next
        synced apply or background flush makes them durable anyway (the WAL is append-only and
        one fdatasync covers every earlier record).  Commits never run inside."""
        with self._lock:
            self._lazy += 1
        try:
            yield self
        finally:
            with self._lock:
                self._lazy -= 1

    def apply(self, entries: Iterable[Entry]) -> int:
        """Make `entries` (DELETED ones remove) durable per the mode, then publish them.
        Returns the new generation (unchanged when nothing differs).  DIRTY is not part of an
        entry's state: it is kept as clients set it in shared memory."""
        with self._lock:
            if self._flush_error:
                raise VriftError(self._flush_error)
            changes: dict[bytes, Entry] = {}
            records: dict[bytes, bytes | None] = {}
            placeholders: list[Entry] = []
            for e in entries:
                if e.flags & layout.F_DIRTY:
                    if e.is_deleted and e.path not in self._records:
                        # a path about to be created: a DIRTY tombstone in shared memory only,
                        # so readers go to the disk and the entry written later stays DIRTY
                        placeholders.append(e)
                        continue
                    e = e.with_flags(e.flags & ~layout.F_DIRTY)
                cur = self._records.get(e.path)
                packed = None if e.is_deleted else e.pack_record()
                if cur == packed or (cur is None and e.is_deleted):
                    changes.pop(e.path, None)  # back to (or still) what is published
                    continue
                changes[e.path] = e
                records[e.path] = packed
            keep = layout.F_DIRTY
            if placeholders and self._shm is not None and not self._publish(placeholders, keep_flags=keep):
                self.rebuild_shm()
                if self._shm is not None:
                    self._publish(placeholders, keep_flags=keep)
            if not changes:
                return self._gen
            gen = self._gen + 1
            batch = list(changes.values())
            if self.durability == "sync":
                self._store.write(batch, gen, self._root, sync=not self._lazy)
                self._unsynced = bool(self._lazy)  # a synced write covers the earlier ones
                self._lmdb_gen = gen
            elif self.durability == "wal":
                self._wal.append(gen, batch, fsync=not self._lazy)
                self._pending.update(changes)
                self._pending_records.extend((gen, e) for e in batch)
                if len(self._pending) >= self.sync_batch_size:
                    self._wake.set()
            else:
                self._store.write(batch, gen, self._root, sync=False)
                self._lmdb_gen = gen
            # durable as promised: now the world may see it
            published = self._shm is None or self._publish(batch, index_generation=gen, keep_flags=layout.F_DIRTY)
            for p in changes:
                packed = records[p]
                if packed is None:
                    if self._records.pop(p, None) is not None:
                        self._unlink(p)
                else:
                    if p not in self._records:
                        self._link(p)
                    self._records[p] = packed
            self._gen = gen
            if not published:
                self.rebuild_shm()  # from the entries just updated, this batch included
            self.counters["applies"] += 1
            self.counters["changes"] += len(batch)
            return gen

    def dirty_paths(self) -> list[bytes]:
        """Paths whose published entry is DIRTY (the shared memory's view, tombstones included)."""
        if self._shm is None:
            return []
        return [e.path for e in self._shm.entries() if e.flags & layout.F_DIRTY]

    def set_dirty(self, rel: bytes, dirty: bool) -> bool:
        """Set or clear DIRTY on the published entry; False when there is none."""
        if self._shm is None:
            return False
        try:
            if dirty:
                return self._shm.set_flags(rel, layout.F_DIRTY)
            return self._shm.clear_flags(rel, layout.F_DIRTY)
        except VDirCorrupt as exc:
            log.warning("%s: rebuilding it from the index", exc)
            self.rebuild_shm()
            return False

    def clear_dirty_many(self, rels: Iterable[bytes]) -> int:
        """set_dirty(rel, False) for many paths at once; returns how many had an entry."""
        if self._shm is None:
            return 0
        try:
            return self._shm.clear_dirty_many(rels)
        except VDirCorrupt as exc:
            log.warning("%s: rebuilding it from the index", exc)
            self.rebuild_shm()
            return 0

    def with_vdir(self, fn):
        """fn(base, size) of the published VDir under its writer's lock (a C walk that clears DIRTY)."""
        try:
            return None if self._shm is None else self._shm.native_call(fn)
        except VDirCorrupt as exc:
            log.warning("%s: rebuilding it from the index", exc)
            self.rebuild_shm()
            return None

    # ------------------------------------------------------------------ background durability
    def _flush_locked(self) -> None:
        if self.durability == "wal" and self._pending:
            self._store.write(self._pending.values(), self._gen, self._root, sync=True)
            self._lmdb_gen = self._gen
            self._pending.clear()
            self._pending_records.clear()
            self._wal.reset()
            self.counters["flushes"] += 1
        elif self.durability == "async" and self._store is not None:
            if self.before_sync is not None:
                self.before_sync()
            self._store.sync()
            self.counters["flushes"] += 1
        elif self.durability == "sync" and self._store is not None and self._unsynced:
            self._store.sync()
            self._unsynced = False

    def _flush_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.sync_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._flush_mutex:
                    self._background_flush()
            except VriftError as e:
                log.error("%s", e)
                self._flush_error = str(e)
            except Exception:  # the writer must hear of it, not a dead thread
                log.exception("index flush failed")
                self._flush_error = f"index {self._root}: background flush failed (see the daemon log)"

    def _background_flush(self) -> None:
        if self.durability == "async":
            if self._store is not None:
                if self.before_sync is not None:
                    self.before_sync()
                self._store.sync()
                self.counters["flushes"] += 1
            return
        # wal: write the pending batch to LMDB outside the lock (fsync is slow), then drop from
        # the WAL exactly the records LMDB now holds; commits go on meanwhile.
        with self._lock:
            if not self._pending or self._store is None:
                return
            batch, gen = dict(self._pending), self._gen
            n_records = len(self._pending_records)
            self._pending.clear()
        try:
            self._store.write(batch.values(), gen, self._root, sync=True)
        except BaseException:
            with self._lock:
                for p, e in batch.items():
                    self._pending.setdefault(p, e)
            raise
        with self._lock:
            self._lmdb_gen = max(self._lmdb_gen, gen)
            keep = self._pending_records[n_records:]
            self._pending_records = keep
            if self._wal is not None:
                self._wal.reset(keep)
            self.counters["flushes"] += 1

    # ------------------------------------------------------------------ insight
    def stats(self) -> dict:
        with self._lock:
            return {
                "durability": self.durability, "generation": self._gen, "lmdb_generation": self._lmdb_gen,
                "entries": len(self._records), "pending": len(self._pending),
                "wal_bytes": self._wal.size if self._wal else 0,
                "wal_fsyncs": self._wal.fsyncs if self._wal else 0,
                "lmdb_bytes": self._store.size_bytes() if self._store else 0,
                "vdir_bytes": self._shm.size_bytes if self._shm else 0,
                **self.counters,
            }
