"""The project daemon: sole writer of one project's VDir (SPEC §5.2).

    python -m vrift.daemon.server --root ROOT

On start: lock, open the index (WAL replay → LMDB → shared memory), watch the tree, serve.  A
first start ingests the tree before SYNC answers; a restart serves the index it finds at once,
every entry DIRTY until the background reconcile (reconcile.py) has confirmed it on disk.  Exits after `daemon.idle_timeout_s` without
clients or requests, flushing everything.

Why one file of ~700 lines: it is the daemon's dispatch table and the writer-thread work the
handlers share (re-reads, settling DIRTY, directory entries, the health check); the parts that
stand alone are their own modules (commit.py, reconcile.py, listener.py, watcher.py, writer.py,
actions.py).  Moving the tree-sync helpers out is the next split.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from . import configrecord
from ..errors import VriftError
from ..home import Home
from ..identity import Project
from ..vdir import layout
from ..vdir.entry import Entry
from . import process
from .commit import CommitService, settle
from .listener import Connection, Listener, RequestError
from .paths import project_files
from .pathcheck import PathPolicy
from .protocol import ONE_WAY, ChangedFlag, Err, Frame, Msg, ShutdownFlag, ShutdownReplyFlag, StatsFlag, SyncFlag, Tag, reply
from .reconcile import Reconciler
from .watcher import Watcher
from .writer import IndexWriter

log = logging.getLogger("vrift.daemon")

TICK_S = 0.05
PASSIVE = frozenset({Msg.STATS, Msg.PING})  # requests that only look
SHUTDOWN_IF_IDLE = ShutdownFlag.IF_IDLE
# the settings `vrift daemon status` shows, as the daemon read them at its start
EFFECTIVE = ("durability", "link_strategy", "ignore", "hash_workers", "daemon.idle_timeout_s", "cache.enabled",
             "cache.scope", "cache.max_size", "cache.env", "cache.never", "cache.always", "cache.max_entry_mb",
             "cache.cache_failures")
HEALTH_EVERY_S = 1.0
ROLLBACK_GRACE_S = 2.0  # how long a dropped client's process may take to finish exiting
REQUEST_TIMEOUT_S = 600.0
STATS_CACHE_ONLY, STATS_EXPLAIN, STATS_INGEST = StatsFlag.CACHE_ONLY, StatsFlag.EXPLAIN, StatsFlag.INGEST
# SYNC FLAGS: answer without waiting for a restarted daemon's start-up reconcile (paths it has
# not confirmed yet are DIRTY: readers ask the kernel); `vrift wrap` sets it, a plain SYNC waits
SYNC_UNCONFIRMED_OK = SyncFlag.UNCONFIRMED_OK


# fields that name files (or hold argv/environment strings): a NUL in one is refused up front
NUL_FREE_TAGS = frozenset((Tag.PATH, Tag.STAGING, Tag.ROOT, Tag.STAGING_DIR, Tag.ARG, Tag.ENV, Tag.CWD))

class ProjectDaemon:
    def __init__(self, home: Home, project: Project, cfg, index_filter=None, cache_key=None):
        from ..cas import CAS
        from ..ingest import Ingester
        from ..vdir.index import ProjectIndex

        self.home = home
        self.project = project
        self.cfg = cfg
        self.files = project_files(home, project.id)
        self.policy = PathPolicy(project)
        self.durability = cfg["durability"]
        self.index = ProjectIndex(home, project, durability=self.durability,
                                  sync_interval_ms=cfg["sync_interval_ms"], sync_batch_size=cfg["sync_batch_size"],
                                  mapsize_gb=cfg["lmdb_mapsize_gb"], unconfirmed=True)
        # A commit's blob is stored without fsync; the writer makes a commit group's blobs
        # durable together before the index names them (CAS.sync_blobs: parallel fsyncs of the
        # blobs and their directories; syncfs flushes everything dirty on the filesystem, other
        # processes' writes too: 3.8 ms measured on a busy disk, against 0.24 ms for one blob).
        # In async mode blobs are not fsynced one by one: the index syncs them (syncfs) before
        # each periodic LMDB sync, so LMDB never durably names a blob that is not on disk.
        self.cas = CAS(home.cas_dir, link_strategy=cfg["link_strategy"], fsync=self.durability != "async")
        if self.durability == "async":
            self.index.before_sync = self.cas.sync
        self.ingester_cls = Ingester
        self.index_filter = index_filter  # from plugins' vrift_index_filter, chosen by main()
        self.ingester = None
        self.ingest_bar = None  # the running full ingest's meter (counts, never draws), for STATS
        self.idle_timeout = float(cfg["daemon.idle_timeout_s"])
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.stop_event = threading.Event()
        self.exit_reason = "stopped"
        self.requests = 0
        self.rollbacks = 0
        self.vdir_rebuilds = 0
        self.vdir_damaged_entries = 0  # entries found failing their checksum, summed over scrubs
        self.full_rescans = 0
        self.notices_refused = 0
        self._beacon_waiting: set[bytes] = set()
        # paths announced by WRITING on a live connection and not yet WRITTEN, re-read or rolled
        # back: the watcher leaves them to that (it saw the client's rename first and would hash
        # and store every output a second time)
        self._announced: dict[bytes, int] = {}
        self._rollbacks: list[tuple[int | None, set[bytes], float]] = []
        self._lock = threading.Lock()
        self.writer: IndexWriter | None = None
        self.watcher: Watcher | None = None
        self.commits: CommitService | None = None
        self.reconciler = Reconciler(self)
        self.listener = Listener(self.files.socket, self.handle, on_open=self._opened, on_close=self._closed)
        from .actions import ActionCache

        self.cache = ActionCache(self, cfg, plugin_key=cache_key)

    # -- lifecycle ----------------------------------------------------------------------------
    # -- the configuration it runs with ------------------------------------------------------------
    @property
    def config_path(self) -> str:
        return configrecord.daemon_config_path(str(self.home.run_dir), self.project.id)

    def _config_stamps(self) -> list:
        return configrecord.config_file_stamps(str(self.project.root), str(self.home.root))

    def record_config(self) -> None:
        """Say which configuration this daemon runs with (`vrift daemon status`, and `vrift
        wrap`, which restarts it when a file changed since)."""
        self._stamps = self._config_stamps()
        shown = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.cfg.items()
                 if k in EFFECTIVE}
        configrecord.store_daemon_config(self.config_path, self._stamps, shown)

    def _config_changed(self) -> bool:
        return getattr(self, "_stamps", None) is not None and self._config_stamps() != self._stamps

    def start(self) -> None:
        t0 = time.monotonic()
        self.index.open()
        t_index = time.monotonic()
        self.ingester = self.ingester_cls(self.project, self.index, self.cas, ignore=self.cfg["ignore"],
                                          workers=self.cfg["hash_workers"], index_filter=self.index_filter,
                                          store_blobs=self.cfg["ingest_blobs"] == "copy")
        self.writer = IndexWriter(self.index, before_job=self._apply_watched, dir_entries=self._dir_entries,
                                  clear_dirty=self._settle, make_durable=self.cas.sync_blobs).start()
        self.commits = CommitService(self.policy, self.cas, self.index, self.writer,
                                     reread=lambda rels: self.writer.call(lambda: self._reread(rels)),
                                     release=lambda rels: self.announce(rels, -1))
        self.watcher = Watcher(os.fsencode(self.project.root), self.ingester.rules.ignored,
                               on_close_write=self._closed_write,
                               max_watches=self.cfg.get("daemon.max_watches", 0)).start()
        t_watch = time.monotonic()
        self.writer.call(self._sweep_staging)
        # The tree may have changed while nobody watched it.  With an index to serve, every
        # published entry is DIRTY now (ProjectIndex unconfirmed): serve at once and confirm
        # entries in the background.  A first start has nothing to serve: ingest, then answer SYNC.
        if len(self.index):
            self.reconciler.start()
        else:
            self.index.unconfirmed = False
            self.writer.call(self._full_rescan)
            self.writer.call(self._settle_leftovers)
            self.writer.call(self.reconciler.done.set)
        self.cache.start()
        self.listener.start()
        log.info("ready in %.3f s (index %.3f s, %d entries; watches %.3f s; %s)", time.monotonic() - t0,
                 t_index - t0, len(self.index), t_watch - t_index,
                 "serving at once, reconciling in the background" if not self.reconciler.done.is_set()
                 else "first ingest before the first SYNC")

    def serve_forever(self) -> None:
        next_health = time.monotonic() + HEALTH_EVERY_S
        while not self.stop_event.wait(TICK_S):
            now = time.monotonic()
            self.index.heartbeat()
            if self._beacon_waiting or self._rollbacks:
                self.writer.call(self._retry_pending)
            if now >= next_health:
                next_health = now + HEALTH_EVERY_S
                self.cache.tick()
                self.writer.call(self._check_vdir)
                if self.listener.client_count == 0 and self._config_changed():
                    self.exit_reason = "config changed"  # the next build starts a daemon that reads it
                    break
                if (self.idle_timeout > 0 and self.listener.client_count == 0
                        and now - self.last_activity > self.idle_timeout):
                    if process.processes_mapping(self.index.vdir_path):
                        # wrapped processes still read the VDir: leaving would freeze their view
                        self.last_activity = now
                        continue
                    self.exit_reason = "idle"
                    break
        self.shutdown()

    def shutdown(self) -> None:
        self.listener.stop()
        uploads = self.cache.stop()
        if uploads is not None:  # for `vrift daemon stop` to report (uploads.json beside the socket)
            try:
                self.files.socket.with_suffix(".uploads.json").write_text(
                    json.dumps(dict(uploads, project=str(self.project.root))))
            except OSError:
                pass
        if self.watcher:
            self.watcher.stop()
        if self.writer:
            try:
                self.writer.run(self._drain_pending, timeout=30)
            except Exception:
                log.exception("final rollback failed")
            self.writer.stop()
        self.index.flush()
        # Asked to stop (`vrift daemon stop`, eviction): give the shared memory back now.  After
        # an idle exit the file stays for a quick restart; the coordinator removes it after
        # daemon.cleanup_after_s.
        self.index.close(unlink_shm=self.exit_reason in ("requested", "config changed"))
        try:
            os.unlink(self.config_path)
        except FileNotFoundError:
            pass
        if self.exit_reason == "idle":
            process.write_private(self.files.idle_file, f"{time.time():.3f}\n")
        log.info("exiting (%s)", self.exit_reason)

    # -- connections ----------------------------------------------------------------------------
    def _opened(self, conn: Connection) -> None:
        pass  # a connection alone (`vrift status` asking for STATS) is not use: requests are

    def announce(self, rels, delta: int) -> None:
        with self._lock:
            for rel in rels:
                n = self._announced.get(rel, 0) + delta
                if n > 0:
                    self._announced[rel] = n
                else:
                    self._announced.pop(rel, None)

    def _closed(self, conn: Connection) -> None:
        if getattr(conn, "used", False):
            self.last_activity = time.monotonic()
        with conn.lock:
            paths = set(conn.pending_writes)
        self.announce(paths, -1)
        if paths or conn.client_pid:
            with self._lock:
                self._rollbacks.append((conn.client_pid, paths, time.monotonic() + ROLLBACK_GRACE_S))

    # -- requests ---------------------------------------------------------------------------------
    def handle(self, conn: Connection, req: Frame) -> Frame | None:
        if req.type not in PASSIVE:  # STATS and PING (status, doctor) do not keep a daemon alive
            self.last_activity = time.monotonic()
            conn.used = True
        self.requests += 1
        if req.type in ONE_WAY:
            # nobody reads an answer: a refusal is logged, and the path stays DIRTY (safe)
            try:
                if not self.stop_event.is_set():
                    self.ONE_WAY_HANDLERS[req.type](self, conn, req)
            except RequestError as e:
                self.notices_refused += 1
                log.warning("%s refused: %s", Msg(req.type).name, e.reason)
            except Exception:
                self.notices_refused += 1
                log.exception("%s failed", Msg(req.type).name)
            return None
        handler = self.HANDLERS.get(req.type)
        if handler is None:
            raise RequestError(Err.BAD_REQUEST, f"unknown request type 0x{req.type:04x}")
        if self.stop_event.is_set() and req.type != Msg.PING:
            raise RequestError(Err.SHUTTING_DOWN, "project daemon is shutting down")
        for tag, value in req.fields:
            if tag in NUL_FREE_TAGS and b"\0" in value:  # no file name, argv or environment holds one
                code = Err.PATH_REJECTED if tag in (Tag.PATH, Tag.STAGING) else Err.BAD_REQUEST
                raise RequestError(code, f"field {Tag(tag).name} contains a NUL byte")
        return handler(self, conn, req)

    def _hello(self, conn: Connection, req: Frame) -> Frame:
        pid = req.int(Tag.PID)
        root = req.get(Tag.ROOT)
        if root is not None and (b"\0" in root or not root.startswith(b"/")):
            raise RequestError(Err.BAD_REQUEST, "ROOT must be an absolute path without NUL bytes")
        if root is not None and os.path.realpath(root) != os.fsencode(self.project.root):
            raise RequestError(Err.BAD_REQUEST, f"{os.fsdecode(root)}: this daemon serves {self.project.root}")
        conn.client_pid = pid
        # HELLO does not wait for the start-up rescan (a first ingest of a large tree takes
        # minutes and the coordinator is waiting): SYNC, queued behind it, is the barrier.
        return self._identity(reply(req))

    def _identity(self, out: Frame) -> Frame:
        return (out.add(Tag.ROOT, os.fsencode(self.project.root)).add(Tag.VDIR, os.fsencode(self.index.vdir_path))
                .add(Tag.SOCKET, os.fsencode(self.files.socket)).add(Tag.STAGING_DIR, os.fsencode(self.project.staging_dir))
                .add(Tag.GENERATION, self.index.generation).add(Tag.PROJECT_ID, self.project.id)
                .add(Tag.PID, os.getpid()))

    def _sync(self, conn: Connection, req: Frame) -> Frame:
        if not (req.int(Tag.FLAGS, 0) or 0) & SYNC_UNCONFIRMED_OK:
            self.reconciler.done.wait(REQUEST_TIMEOUT_S)  # "the index is the tree", not only "nothing stale"
        # every notification sent before this request is in some connection's queue by now
        self.listener.quiesce(but=conn, timeout=REQUEST_TIMEOUT_S)
        # every change made before the request was sent is queued in inotify by now
        self.watcher.drain()
        generation = self.writer.run(lambda: self._apply_watched(for_sync=True) or self.index.generation,
                                     REQUEST_TIMEOUT_S)
        return reply(req).add(Tag.GENERATION, generation)

    def _commit(self, conn: Connection, req: Frame) -> Frame:
        return self.commits.commit(conn, req)

    def _begin_write(self, conn: Connection, req: Frame) -> Frame:
        rels = [self.policy.target(p, allow_root=False) for p in req.all(Tag.PATH)]
        if not rels:
            raise RequestError(Err.BAD_REQUEST, "BEGIN_WRITE needs at least one PATH")

        def mark() -> int:
            placeholders = [Entry.deleted(r).with_flags(layout.F_DELETED | layout.F_DIRTY) for r in rels
                            if not self.index.set_dirty(r, True)]
            if placeholders:
                self.index.apply(placeholders)
                for e in placeholders:  # whether or not apply kept the flag of the record
                    self.index.set_dirty(e.path, True)
            return len(rels)

        count = self.writer.run(mark, REQUEST_TIMEOUT_S)
        with conn.lock:
            conn.pending_writes.update(rels)
        return reply(req).add(Tag.COUNT, count).add(Tag.GENERATION, self.index.generation)

    def _writing(self, conn: Connection, req: Frame) -> None:
        """One-way: these paths are being written by the peer; re-read them if it dies first.  A
        path without an entry needs no placeholder: with no entry, readers ask the kernel."""
        rels = [self.policy.target(p, allow_root=False) for p in req.all(Tag.PATH)]
        with conn.lock:
            if conn.client_pid is None:
                conn.client_pid = conn.peer_pid
            new = set(rels) - conn.pending_writes
            conn.pending_writes.update(new)
        self.announce(new, +1)

    def _written(self, conn: Connection, req: Frame) -> None:
        self.commits.written(conn, req)

    def _changed(self, conn: Connection, req: Frame) -> None:
        """One-way INVALIDATE: re-read on the writer thread, nobody waits."""
        rels = [self.policy.target(p) for p in req.all(Tag.PATH)]
        with conn.lock:
            done = conn.pending_writes.intersection(rels)
            conn.pending_writes.difference_update(rels)
        shallow = bool((req.int(Tag.FLAGS, 0) or 0) & ChangedFlag.SHALLOW)

        def reread() -> None:
            try:
                if rels:
                    self._reread(rels, shallow)
            finally:
                self.announce(done, -1)  # after the re-read

        self.writer.call(reread)  # one writer call, not two

    def _invalidate(self, conn: Connection, req: Frame) -> Frame:
        rels = [self.policy.target(p) for p in req.all(Tag.PATH)]
        if not rels:
            raise RequestError(Err.BAD_REQUEST, "INVALIDATE needs at least one PATH")
        with conn.lock:
            done = conn.pending_writes.intersection(rels)
            conn.pending_writes.difference_update(rels)
        shallow = bool((req.int(Tag.FLAGS, 0) or 0) & ChangedFlag.SHALLOW)
        try:
            reread, held = self.writer.run(lambda: self._reread(rels, shallow), REQUEST_TIMEOUT_S)
        finally:
            self.announce(done, -1)
        return (reply(req).add(Tag.COUNT, reread).add(Tag.HELD, held)
                .add(Tag.GENERATION, self.index.generation))

    def _stats(self, conn: Connection, req: Frame) -> Frame:
        flags = req.int(Tag.FLAGS, 0) or 0
        if flags & STATS_INGEST:  # a wrapper or `vrift ingest` drawing the meter of a first ingest
            bar = self.ingest_bar
            out = {"ingest": None if bar is None else {"count": bar.count, "total": bar.total},
                   "entries": len(self.index)}
            return reply(req).add_json(out).add(Tag.GENERATION, self.index.generation)
        if flags & STATS_CACHE_ONLY:  # the wrapper, before and after a build: cheap, no writer
            out = {"cache": self.cache.stats(), "entries": len(self.index)}
            if flags & STATS_EXPLAIN:
                # or SIZE, the tag clients older than SEQUENCE send
                since = req.int(Tag.SEQUENCE) if req.get(Tag.SEQUENCE) is not None else req.int(Tag.SIZE, 0)
                out["explain"] = self.cache.explanations(since or 0)
            return reply(req).add_json(out).add(Tag.GENERATION, self.index.generation)
        stats = self.writer.run(self.stats, REQUEST_TIMEOUT_S)
        return reply(req).add_json(stats).add(Tag.GENERATION, stats["generation"])

    def _ingest(self, conn: Connection, req: Frame) -> Frame:
        self.watcher.drain()
        report = self.writer.run(self._full_rescan, REQUEST_TIMEOUT_S)
        return reply(req).add_json(report).add(Tag.GENERATION, self.index.generation)

    def _shutdown(self, conn: Connection, req: Frame) -> Frame:
        flags = req.int(Tag.FLAGS, 0) or 0
        if flags & SHUTDOWN_IF_IDLE:
            with self.listener.lock:  # another open connection that did more than look: a build
                busy = any(getattr(c, "used", False) for c in self.listener.connections if c is not conn)
            if busy:
                return reply(req).add(Tag.FLAGS, 0)
        self.exit_reason = "config changed" if flags & SHUTDOWN_IF_IDLE else "requested"
        self.stop_event.set()
        return reply(req).add(Tag.FLAGS, ShutdownReplyFlag.STOPPING)

    def _ping(self, conn: Connection, req: Frame) -> Frame:
        return reply(req)

    def _vdir_bad(self, conn: Connection, req: Frame) -> Frame:
        log.warning("client reports an unusable VDir: %s", req.text() or "(no detail)")
        self.writer.run(self._check_vdir, REQUEST_TIMEOUT_S)
        return reply(req).add(Tag.GENERATION, self.index.generation)

    def _action_lookup(self, conn: Connection, req: Frame) -> Frame:
        return self.cache.lookup(conn, req)

    def _action_end(self, conn: Connection, req: Frame) -> Frame:
        return self.cache.end(conn, req)

    HANDLERS = {Msg.HELLO: _hello, Msg.SYNC: _sync, Msg.COMMIT: _commit, Msg.BEGIN_WRITE: _begin_write,
                Msg.INVALIDATE: _invalidate, Msg.STATS: _stats, Msg.INGEST: _ingest, Msg.SHUTDOWN: _shutdown,
                Msg.PING: _ping, Msg.VDIR_BAD: _vdir_bad, Msg.ACTION_LOOKUP: _action_lookup,
                Msg.ACTION_END: _action_end}

    def _action_replayed(self, conn: Connection, req: Frame) -> None:
        self.cache.replayed(conn, req)

    ONE_WAY_HANDLERS = {Msg.WRITING: _writing, Msg.WRITTEN: _written, Msg.CHANGED: _changed,
                        Msg.ACTION_REPLAYED: _action_replayed}

    # -- writer-thread work ----------------------------------------------------------------------
    def _full_rescan(self) -> dict:
        from ..progress import Progress

        self.full_rescans += 1
        self.ingest_bar = Progress(len(self.index) or None, "ingest", enabled=False)
        try:
            return self.ingester.ingest(bar=self.ingest_bar).to_json()
        finally:
            self.ingest_bar = None
            if self.watcher is not None:
                self.mark_unwatched(list(self.watcher.unwatched), subtrees=True)

    def _apply_watched(self, for_sync: bool = False) -> None:
        # The tree shows these changes again after a crash (the start-up rescan): no fsync of
        # their own.  A process crash loses nothing (the WAL's pages are written); a machine
        # crash loses the shared-memory file with them.
        with self.index.lazy():
            self._apply_watched_now(for_sync)

    def _apply_watched_now(self, for_sync: bool) -> None:
        if self.watcher is None:  # the writer's first ticks, while the watches are being added
            return
        paths, dirs, full = self.watcher.take(for_sync)
        if full:
            self._full_rescan()
            return
        if paths and self._announced:
            with self._lock:
                paths = [p for p in paths if p not in self._announced]
        if paths:
            # A file a process under the preload library still holds open for writing (its
            # beacon) is DIRTY, so readers bypass its entry; re-reading it at each of its writes
            # (ninja appends to .ninja_log after every edge) would hash it again and again.
            # It is re-read once, when the beacon is released (_closed_write, _retry_pending).
            held = [p for p in paths if not process.beacon_free(self.policy.absolute(p))]
            for rel in held:
                self.index.set_dirty(rel, True)
                self._beacon_waiting.add(rel)
            if held:
                paths = set(paths) - set(held)
            self.ingester.reconcile(paths)
            self.mark_unwatched(paths, subtrees=True)
        if dirs:
            self._refresh_dirs(dirs)

    def _indexed_dir(self, rel: bytes) -> bool:
        e = self.index.get(rel)
        return e is not None and bool(e.flags & layout.F_DIR)

    def _refresh_dirs(self, rels) -> None:
        updates = self._dir_entries(rels)
        if updates:
            self.index.apply(updates)

    def _dir_entries(self, rels) -> list[Entry]:
        """Directories' own entries (mtime, nlink) without rescanning what is under them."""
        updates = []
        for rel in rels:
            try:
                st = os.lstat(self.policy.absolute(rel))
            except OSError:
                continue
            old = self.index.get(rel)
            if old is None or old.is_deleted or not old.flags & layout.F_DIR:
                continue
            keep = old.flags & ~(layout.F_DIR | layout.F_SYMLINK | layout.F_DELETED)
            new = Entry.from_stat(rel, st, flags=keep)
            if new != old:
                updates.append(new)
        return updates

    def _reread(self, rels: list[bytes], shallow: bool = False) -> tuple[int, int]:
        """Re-read paths and their directories; clear DIRTY where no writer still holds the file.
        `shallow`: a directory among them changed itself only (mkdir over it, utimes): its own
        entry is refreshed, its subtree not walked."""
        parents = {os.path.dirname(r) for r in rels if r}
        # Ask about the beacons *before* reading: a writer that lets go between our read and
        # the check would leave a clean entry describing the content before its last write.
        free = {rel for rel in rels if process.beacon_free(self.policy.absolute(rel))}
        # A directory named with one of its children (the preload library sends a changed path
        # with its parent) changed because of that child: refresh its own entry, do not rescan
        # its subtree (for build/ or the root that cost milliseconds on every unlink).
        dirs_only = {r for r in rels if (shallow or r in parents) and self._indexed_dir(r)}
        with self.index.lazy():  # what is re-read from disk is recovered by a rescan: no fsync
            self.ingester.reconcile([r for r in rels if r not in dirs_only])
            self._refresh_dirs(parents | dirs_only)
        held = 0
        for rel in rels:
            if rel in free:
                self._beacon_waiting.discard(rel)
            else:
                held += 1
                self._beacon_waiting.add(rel)
                # a path first indexed now is published clean: a writer still holds it
                self.index.set_dirty(rel, True)
        self._settle(sorted(free | parents))
        return len(rels), held

    def _settle(self, rels: list[bytes]) -> None:
        """Clear DIRTY where the entry matches the tree; the rest is re-read on the next tick."""
        for rel in settle(self.index, self.policy, rels):
            self._beacon_waiting.add(rel)
        self.mark_unwatched(rels)

    def watched(self, rel: bytes) -> bool:
        return self.watcher is None or self.watcher.covers(rel)

    def mark_unwatched(self, rels, subtrees: bool = False) -> None:
        """DIRTY on the entries (and with `subtrees`, everything indexed below them) of
        directories the watcher has no watch for: nothing would tell us of a change there, so
        readers ask the kernel for good."""
        if self.watcher is None or not self.watcher.unwatched:
            return
        for rel in rels:
            if self.watcher.covers(rel):
                continue
            self.index.set_dirty(rel, True)
            if subtrees:
                for e in self.index.under(rel):
                    self.index.set_dirty(e.path, True)

    def _closed_write(self, rel: bytes) -> None:
        if rel in self._beacon_waiting and self.writer is not None:
            self.writer.call(self._retry_pending)

    def _retry_pending(self) -> None:
        waiting = list(self._beacon_waiting)
        free = [r for r in waiting if process.beacon_free(self.policy.absolute(r))]
        if free:
            self._reread(free)
        now = time.monotonic()
        with self._lock:
            due = [rb for rb in self._rollbacks if rb[2] <= now or not process.pid_alive(rb[0])]
            self._rollbacks = [rb for rb in self._rollbacks if rb not in due]
        for pid, paths, _ in due:
            self._rollback(pid, paths)

    def _rollback(self, pid: int | None, paths: set[bytes]) -> None:
        """A client went away with uncommitted work: drop its staging files, re-read its paths."""
        self.rollbacks += 1
        if pid is not None and not process.pid_alive(pid):
            process.remove_unheld_staging(self.project.staging_dir, pid)
        if paths:
            # a new file's name had no entry, but its directory was marked
            existing = {r for r in paths if self.index.get(r) is not None}
            self._reread(sorted(existing | {os.path.dirname(r) for r in paths}))

    def _sweep_staging(self) -> None:
        """Staging files of processes that died while no daemon ran (or before a restart)."""
        process.remove_unheld_staging(self.project.staging_dir)

    def _settle_leftovers(self) -> None:
        """DIRTY bits a reused VDir kept from before the start (a writer whose WRITTEN the last
        daemon never read, a client killed mid-write): re-read those paths and clear what the
        tree confirms.  A writer still at work keeps its bits: its beacon is held, or its rename
        marks the path again (write.c, vrift_place_staging())."""
        dirty = self.index.dirty_paths()
        if not dirty:
            return
        dirs = [r for r in dirty if self._indexed_dir(r)]
        files = sorted(set(dirty) - set(dirs))
        if files:
            self._reread(files)
        with self.index.lazy():  # the directories' own entries, not their subtrees again
            self._refresh_dirs(dirs)
        self._settle(dirs)

    def _drain_pending(self) -> None:
        with self._lock:
            due, self._rollbacks = self._rollbacks, []
        for pid, paths, _ in due:
            self._rollback(pid, paths)

    def _check_vdir(self) -> None:
        """The shared-memory file must be structurally sound and as new as the index: a client
        may have scribbled on it (it maps it writable for the DIRTY bit) or removed it."""
        from ..vdir.shm import VDirError, VDirReader

        try:
            with VDirReader(self.index.vdir_path) as reader:
                problem = None if reader.index_generation == self.index.generation else (
                    f"generation {reader.index_generation}, index at {self.index.generation}")
                damaged = self.index.damaged_shm(reader) if problem is None else []
                if damaged:
                    problem = f"{len(damaged)} entries fail their checksum"
                    self.vdir_damaged_entries += len(damaged)
        except VDirError as e:
            problem = str(e)
        if problem is not None:
            log.warning("VDir %s unusable (%s): rebuilding from LMDB", self.index.vdir_path, problem)
            self.vdir_rebuilds += 1
            self.index.rebuild_shm()

    def stats(self) -> dict:
        index_stats = self.index.stats()
        return {
            "root": str(self.project.root), "project_id": self.project.id, "pid": os.getpid(),
            "socket": str(self.files.socket), "vdir": str(self.index.vdir_path),
            "generation": self.index.generation, "entries": len(self.index),
            "clients": self.listener.client_count, "durability": self.durability,
            "uptime_s": round(time.time() - self.started, 3), "requests": self.requests,
            "commits": self.writer.commits if self.writer else 0,
            "commit_groups": self.writer.groups if self.writer else 0,
            "commits_reused": self.commits.reused if self.commits else 0,
            "reads": self.listener.wakeups, "frames": self.listener.frames,
            "rollbacks": self.rollbacks, "vdir_rebuilds": self.vdir_rebuilds,
            "vdir_damaged_entries": self.vdir_damaged_entries, "full_rescans": self.full_rescans,
            "notices_refused": self.notices_refused,
            "bad_frames": self.listener.bad_frames, "rejected_uid": self.listener.rejected_uid,
            "beacon_waiting": len(self._beacon_waiting),
            "reconcile": self.reconciler.stats(),
            "watcher": self.watcher.stats() if self.watcher else None,
            "index": index_stats,
            "cache": self.cache.stats(),
        }


def plugin_hooks(project: Project, cfg):
    """(index filter, cache-key contribution) from the plugins: vrift_index_filter as one
    predicate (None when no plugin filters) and vrift_cache_key as a callable of an action.
    The daemon's entry point composes the process, like the CLI does, so it may load plugins."""
    from ..hooks.manager import project_hooks

    return project_hooks(project, cfg["plugins"] or [], report=lambda line: log.warning("%s", line))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vrift.daemon.server")
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    from .. import config as config_mod

    home = Home.from_env().ensure()
    project = Project.at(args.root)
    files = project_files(home, project.id)
    process.setup_logging(f"p-{project.id[:8]}")
    try:
        files.check_socket_length()
        lock = process.acquire_lock(files.lock_file)
        if lock is None:
            log.info("a project daemon already runs for %s", project.root)
            return 0
        # VRIFT_CACHE turns the cache off for one build, in that build's wrapper: the daemon
        # serves every build and must not keep the switch of the one that happened to start it
        cfg = config_mod.load(project.root, home=home, env={k: v for k, v in os.environ.items() if k != "VRIFT_CACHE"})
        index_filter, cache_key = plugin_hooks(project, cfg)
        daemon = ProjectDaemon(home, project, cfg, index_filter=index_filter, cache_key=cache_key)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: daemon.stop_event.set())
        daemon.start()
    except VriftError as e:
        print(f"vrift daemon: error: {e}", file=sys.stderr)
        return 1
    try:
        os.unlink(files.idle_file)
    except FileNotFoundError:
        pass
    process.write_private(files.pid_file, f"{os.getpid()}\n")
    daemon.record_config()
    log.info("serving %s on %s (durability %s)", project.root, files.socket, daemon.durability)
    try:
        daemon.serve_forever()
    finally:
        process.remove_if_ours(files.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
