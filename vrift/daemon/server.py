"""The project daemon: sole writer of one project's VDir (SPEC §5.2).

    python -m vrift.daemon.server --root ROOT

On start: lock, open the index (WAL replay → LMDB → shared memory), watch the tree, reconcile
it with a full (digest-reusing) ingest, then serve.  Exits after `daemon.idle_timeout_s` without
clients or requests, flushing everything.
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

from ..project import Home, Project, VriftError
from ..vdir import layout
from ..vdir.entry import Entry
from . import process
from .commit import CommitService
from .listener import Connection, Listener, RequestError
from .paths import project_files
from .pathcheck import PathPolicy
from .protocol import Err, Frame, Msg, Tag, reply
from .watcher import Watcher
from .writer import IndexWriter

log = logging.getLogger("vrift.daemon")

TICK_S = 0.05
HEALTH_EVERY_S = 1.0
ROLLBACK_GRACE_S = 2.0  # how long a dropped client's process may take to finish exiting
REQUEST_TIMEOUT_S = 600.0
STATS_CACHE_ONLY = 1  # STATS FLAGS: only the action cache's counters (no writer round trip)
STATS_EXPLAIN = 2     # STATS FLAGS: with the explanations of misses newer than SIZE (a sequence number)


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
                                  mapsize_gb=cfg["lmdb_mapsize_gb"])
        # A commit's blob is fsynced on its connection's thread, so concurrent commits' fsyncs
        # overlap (the filesystem's journal groups them).  syncfs per commit group was tried:
        # it flushes everything dirty on the filesystem and cost 3.8 ms here, against 0.24 ms.
        # In async mode blobs are not fsynced one by one: the index syncs them (syncfs) before
        # each periodic LMDB sync, so LMDB never durably names a blob that is not on disk.
        self.cas = CAS(home.cas_dir, link_strategy=cfg["link_strategy"], fsync=self.durability != "async")
        if self.durability == "async":
            self.index.before_sync = self.cas.sync
        self.ingester_cls = Ingester
        self.index_filter = index_filter  # from plugins' vrift_index_filter, chosen by main()
        self.ingester = None
        self.idle_timeout = float(cfg["daemon.idle_timeout_s"])
        self.started = time.time()
        self.last_activity = time.monotonic()
        self.stop_event = threading.Event()
        self.exit_reason = "stopped"
        self.requests = 0
        self.rollbacks = 0
        self.vdir_rebuilds = 0
        self.full_rescans = 0
        self._beacon_waiting: set[bytes] = set()
        self._rollbacks: list[tuple[int | None, set[bytes], float]] = []
        self._lock = threading.Lock()
        self.writer: IndexWriter | None = None
        self.watcher: Watcher | None = None
        self.commits: CommitService | None = None
        self.listener = Listener(self.files.socket, self.handle, on_open=self._opened, on_close=self._closed)
        from .actions import ActionCache

        self.cache = ActionCache(self, cfg, plugin_key=cache_key)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self.index.open()
        self.ingester = self.ingester_cls(self.project, self.index, self.cas, ignore=self.cfg["ignore"],
                                          workers=self.cfg["hash_workers"], index_filter=self.index_filter)
        self.writer = IndexWriter(self.index, before_job=self._apply_watched, dir_entries=self._dir_entries).start()
        self.commits = CommitService(self)
        self.watcher = Watcher(os.fsencode(self.project.root), self.ingester.rules.ignored,
                               on_close_write=self._closed_write).start()
        # the tree may have changed while nobody watched: reconcile it (digests are reused)
        self.writer.call(self._full_rescan)
        self.writer.call(self._sweep_staging)
        self.cache.start()
        self.listener.start()

    def serve_forever(self) -> None:
        next_health = time.monotonic() + HEALTH_EVERY_S
        while not self.stop_event.wait(TICK_S):
            now = time.monotonic()
            if self._beacon_waiting or self._rollbacks:
                self.writer.call(self._retry_pending)
            if now >= next_health:
                next_health = now + HEALTH_EVERY_S
                self.cache.tick()
                self.writer.call(self._check_vdir)
                if (self.idle_timeout > 0 and self.listener.client_count == 0
                        and now - self.last_activity > self.idle_timeout):
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
        self.index.close(unlink_shm=self.exit_reason == "requested")
        if self.exit_reason == "idle":
            process.write_private(self.files.idle_file, f"{time.time():.3f}\n")
        log.info("exiting (%s)", self.exit_reason)

    # -- connections ----------------------------------------------------------------------------
    def _opened(self, conn: Connection) -> None:
        self.last_activity = time.monotonic()

    def _closed(self, conn: Connection) -> None:
        self.last_activity = time.monotonic()
        with conn.lock:
            paths = set(conn.pending_writes)
        if paths or conn.client_pid:
            with self._lock:
                self._rollbacks.append((conn.client_pid, paths, time.monotonic() + ROLLBACK_GRACE_S))

    # -- requests ---------------------------------------------------------------------------------
    def handle(self, conn: Connection, req: Frame) -> Frame:
        self.last_activity = time.monotonic()
        self.requests += 1
        handler = self.HANDLERS.get(req.type)
        if handler is None:
            raise RequestError(Err.BAD_REQUEST, f"unknown request type 0x{req.type:04x}")
        if self.stop_event.is_set() and req.type != Msg.PING:
            raise RequestError(Err.SHUTTING_DOWN, "project daemon is shutting down")
        return handler(self, conn, req)

    def _hello(self, conn: Connection, req: Frame) -> Frame:
        pid = req.int(Tag.PID)
        root = req.get(Tag.ROOT)
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

    def _invalidate(self, conn: Connection, req: Frame) -> Frame:
        rels = [self.policy.target(p) for p in req.all(Tag.PATH)]
        if not rels:
            raise RequestError(Err.BAD_REQUEST, "INVALIDATE needs at least one PATH")
        with conn.lock:
            conn.pending_writes.difference_update(rels)
        reread, held = self.writer.run(lambda: self._reread(rels), REQUEST_TIMEOUT_S)
        return (reply(req).add(Tag.COUNT, reread).add(Tag.FLAGS, held)
                .add(Tag.GENERATION, self.index.generation))

    def _stats(self, conn: Connection, req: Frame) -> Frame:
        flags = req.int(Tag.FLAGS, 0) or 0
        if flags & STATS_CACHE_ONLY:  # the wrapper, before and after a build: cheap, no writer
            out = {"cache": self.cache.stats()}
            if flags & STATS_EXPLAIN:
                out["explain"] = self.cache.explanations(req.int(Tag.SIZE, 0) or 0)
            return reply(req).add_json(out).add(Tag.GENERATION, self.index.generation)
        stats = self.writer.run(self.stats, REQUEST_TIMEOUT_S)
        return reply(req).add_json(stats).add(Tag.GENERATION, stats["generation"])

    def _ingest(self, conn: Connection, req: Frame) -> Frame:
        self.watcher.drain()
        report = self.writer.run(self._full_rescan, REQUEST_TIMEOUT_S)
        return reply(req).add_json(report).add(Tag.GENERATION, self.index.generation)

    def _shutdown(self, conn: Connection, req: Frame) -> Frame:
        self.exit_reason = "requested"
        self.stop_event.set()
        return reply(req)

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

    # -- writer-thread work ----------------------------------------------------------------------
    def _full_rescan(self) -> dict:
        self.full_rescans += 1
        return self.ingester.ingest().to_json()

    def _apply_watched(self, for_sync: bool = False) -> None:
        # The tree shows these changes again after a crash (the start-up rescan): no fsync of
        # their own.  A process crash loses nothing (the WAL's pages are written); a machine
        # crash loses the shared-memory file with them.
        with self.index.lazy():
            self._apply_watched_now(for_sync)

    def _apply_watched_now(self, for_sync: bool) -> None:
        paths, dirs, full = self.watcher.take(for_sync)
        if full:
            self._full_rescan()
            return
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

    def _reread(self, rels: list[bytes]) -> tuple[int, int]:
        """Re-read paths and their directories; clear DIRTY where no writer still holds the file."""
        parents = {os.path.dirname(r) for r in rels if r}
        # Ask about the beacons *before* reading: a writer that lets go between our read and
        # the check would leave a clean entry describing the content before its last write.
        free = {rel for rel in rels if process.beacon_free(self.policy.absolute(rel))}
        # A directory named with one of its children (the preload library sends a changed path
        # with its parent) changed because of that child: refresh its own entry, do not rescan
        # its subtree (for build/ or the root that cost milliseconds on every unlink).
        dirs_only = {r for r in rels if r in parents and self._indexed_dir(r)}
        with self.index.lazy():  # what is re-read from disk is recovered by a rescan: no fsync
            self.ingester.reconcile([r for r in rels if r not in dirs_only])
            self._refresh_dirs(parents | dirs_only)
        held = 0
        for rel in rels:
            if rel in free:
                self.index.set_dirty(rel, False)
                self._beacon_waiting.discard(rel)
            else:
                held += 1
                self._beacon_waiting.add(rel)
                # a path first indexed now is published clean: a writer still holds it
                self.index.set_dirty(rel, True)
        for parent in parents:
            self.index.set_dirty(parent, False)
        return len(rels), held

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
            process.remove_unheld_files(self.project.staging_dir / str(pid))
        if paths:
            existing = [r for r in paths if self.index.get(r) is not None]
            self._reread(existing)

    def _sweep_staging(self) -> None:
        """Staging files of processes that died while no daemon ran (or before a restart)."""
        try:
            names = os.listdir(self.project.staging_dir)
        except OSError:
            return
        for name in names:
            if name.isdigit() and not process.pid_alive(int(name)):
                process.remove_unheld_files(self.project.staging_dir / name)

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
            "rollbacks": self.rollbacks, "vdir_rebuilds": self.vdir_rebuilds, "full_rescans": self.full_rescans,
            "bad_frames": self.listener.bad_frames, "rejected_uid": self.listener.rejected_uid,
            "beacon_waiting": len(self._beacon_waiting),
            "watcher": self.watcher.stats() if self.watcher else None,
            "index": index_stats,
            "cache": self.cache.stats(),
        }


def plugin_hooks(project: Project, cfg):
    """(index filter, cache-key contribution) from the plugins: vrift_index_filter as one
    predicate (None when no plugin filters) and vrift_cache_key as a callable of an action.
    The daemon's entry point composes the process, like the CLI does, so it may load plugins."""
    from ..hooks.manager import load

    manager = load(cfg["plugins"] or [], report=lambda line: log.warning("%s", line))
    return manager.index_filter(project), manager.cache_key


def plugin_index_filter(project: Project, cfg):
    return plugin_hooks(project, cfg)[0]


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
        cfg = config_mod.load(project.root, home=home)
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
    log.info("serving %s on %s (durability %s)", project.root, files.socket, daemon.durability)
    try:
        daemon.serve_forever()
    finally:
        process.remove_if_ours(files.pid_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
