"""ACTION_LOOKUP and ACTION_END, server side (docs/cache.md, docs/protocol.md).

LOOKUP: compute the key, find a fingerprint that matches the files now, and on a hit
materialise its outputs from the CAS (atomically, fresh mtimes) and publish them in the index
like commits, all before replying with the recorded status and the stdout/stderr chunks in the
order they were written.

END: take the action's logs (read, then remove the directory), build the fingerprint while the
files are as the action left them, reply, and write the entry to LMDB on a background thread
(its fsync is not on the build's path).  Counters live in memory and are folded into the cache's
LMDB every few seconds and at shutdown.

The action table's side (publishing records, ACTION_REPLAYED, indexing replayed outputs) lives
here too because it shares the lookup's state (pending actions, the per-record hit info, the
counters) under one lock; the table itself is vrift/cache/fasttable.py.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import stat as statmod
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from ..cache import actionlog, fasttable, scope
from ..cache.fingerprint import Context, Fingerprint, Uncacheable, build, match, unpack_streams
from ..cache.key import Action, DigestMemo, action_key
from ..cache.store import CacheStore, merge_counters
from ..cas.store import BlobCorrupt
from ..errors import VriftError
from ..vdir import layout
from ..vdir.entry import Entry
from . import process
from .listener import Connection, RequestError
from .protocol import EndFlag, Err, Frame, LookupFlag, Tag, reply

log = logging.getLogger("vrift.daemon")

HIT = LookupFlag.HIT
NO_RECORD = LookupFlag.NO_RECORD
ACTION_ID = re.compile(rb"^[0-9a-f]{16}$")
PENDING_LIMIT = 100_000
STALE_S = 3600.0
EXPLAIN_KEEP = 2000
EVICT_QUIET_S = 2.0  # eviction runs once recording has paused this long (a build's end)


class ActionCache:
    def __init__(self, daemon, cfg, plugin_key=None):
        self.daemon = daemon
        self.enabled = bool(cfg["cache.enabled"])
        self.root = os.fsencode(daemon.project.root)
        self.actions_dir = daemon.project.state_dir / actionlog.ACTIONS_DIR
        self.plugin_key = plugin_key
        self.memo = DigestMemo()
        self.ctx = Context(daemon.project.root, daemon.cas, daemon.index, self.memo,
                           cache_failures=bool(cfg["cache.cache_failures"]), max_entry_mb=cfg["cache.max_entry_mb"],
                           never=cfg["cache.never"], always=cfg["cache.always"])
        self.store: CacheStore | None = None
        self.cfg = cfg
        self.remote = None  # storage.tiers.RemoteTiers when cache.remote names any
        self._pending: dict[bytes, dict] = {}
        self._lock = threading.Lock()
        self._folding = threading.Lock()  # held while counters move from _unflushed into LMDB
        self._recorder = ThreadPoolExecutor(1, thread_name_prefix="cache-recorder")
        self._queued = 0  # recorder jobs not yet finished: `stats` says when the table is settled
        self.counters = {"lookups": 0, "hits": 0, "misses": 0, "recorded": 0, "uncacheable": {},
                         "bytes_replayed": 0, "outputs_replayed": 0, "errors": 0, "corrupt_blobs": 0, "remote_hits": 0, "time_saved_s": 0.0,
                         "evicted": 0, "fast_hits": 0}
        self.max_size = _max_size(cfg)
        self.scope = cfg.get("cache.scope", "all")
        self._recorded_at: float | None = None  # monotonic time of the last entry stored, until evicted
        self._unflushed: dict = {}
        self._last_hit: dict[bytes, float] = {}
        self._explain: deque = deque(maxlen=EXPLAIN_KEEP)
        self._seq = 0
        self.table: fasttable.ActionTable | None = None  # hits the preload library replays itself
        self._fast: dict[int, tuple] = {}  # key hash of a table record -> (fid, wall_s, bytes, outputs)

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self.store = CacheStore(self.daemon.home)
        except VriftError as e:
            log.error("action cache unavailable: %s", e)
            self.enabled = False
        if self.enabled and self.cfg.get("cache.remote"):
            from ..storage import tiers

            self.remote = tiers.build(self.cfg, self.daemon.cas)
            self.remote_budget_s = self.cfg["daemon.socket_timeout_ms"] / 2000
        if self.enabled and not self._plugin_keyed():  # a plugin's key part: only the daemon can compute it
            vdir = os.fsencode(self.daemon.index.vdir_path)
            name = os.path.basename(vdir).replace(layout.VDIR_NAME_PREFIX.encode(), fasttable.NAME_PREFIX.encode(), 1)
            try:
                self.table = fasttable.ActionTable(os.path.join(os.path.dirname(vdir), name), self.daemon.cas.root)
                for ident, rec in self.table.inherited:  # replays of them index their outputs unhashed
                    outs = fasttable.parse_outputs(rec)
                    self._fast[fasttable.key_hash(ident)] = (None, 0.0, 0, len(outs), outs)
            except OSError as e:
                log.warning("action table unavailable: %s", e)
        self.sweep(startup=True)

    def _plugin_keyed(self) -> bool:
        """Does a plugin add to the keys (vrift_cache_key)?  Then no lookup is decided without
        the daemon."""
        if self.plugin_key is None:
            return False
        pm = getattr(getattr(self.plugin_key, "__self__", None), "pm", None)
        if pm is None:
            return True
        return bool(pm.hook.vrift_cache_key.get_hookimpls())

    def stop(self) -> dict | None:
        """Returns what flushing the remote uploads did (None without a remote)."""
        self._recorder.shutdown(wait=True)  # entries recorded so far reach the upload queue
        if self.table is not None:
            self.table.close()
        report = None
        if self.remote is not None:
            report = self.remote.stop()
            log.info("remote uploads flushed: %d pending after %.1f s", report["pending"], report["waited_s"])
        self._flush()
        if self.store is not None:
            self.store.close()
            self.store = None
        return report

    def tick(self) -> None:
        """Periodic work (from the daemon's loop): fold counters into LMDB, sweep stale logs,
        and keep the cache within cache.max_size once a build has stopped recording."""
        self._submit(self._flush)
        self._submit(self.sweep)
        recorded = self._recorded_at
        if recorded is not None and time.monotonic() - recorded >= EVICT_QUIET_S:
            self._recorded_at = None
            self._submit(self.evict)

    def evict(self):
        """Evict least recently used entries beyond cache.max_size (on the recorder thread)."""
        if self.store is None or self.max_size <= 0:
            return None
        from ..cache.evict import evict

        try:
            report = evict(self.daemon.home, self.store, self.daemon.cas, self.max_size)
        except Exception:  # noqa: BLE001 - an eviction that fails leaves the cache as it was
            log.exception("cache eviction failed")
            return None
        if report.evicted:
            self._count("evicted", report.evicted)
            log.info("cache over %d bytes: evicted %d entries, %d blobs (%d bytes)", self.max_size,
                     report.evicted, report.blobs_removed, report.bytes_removed)
        return report

    def _count(self, name: str, n: int = 1, reason: str | None = None) -> None:
        with self._lock:
            if reason is not None:
                self.counters["uncacheable"][reason] = self.counters["uncacheable"].get(reason, 0) + 1
                merge_counters(self._unflushed, {"uncacheable": {reason: 1}})
            else:
                self.counters[name] += n
                merge_counters(self._unflushed, {name: n})

    def _flush(self) -> None:
        # under _folding from the hand-over to the commit: a STATS in between would find the
        # counts neither unflushed here nor in LMDB yet (`vrift cache stats` showed 0 hits)
        with self._folding:
            with self._lock:
                delta, self._unflushed = self._unflushed, {}
                hits, self._last_hit = self._last_hit, {}
            if self.remote is not None and (remote := self.remote.take_deltas()):
                delta = merge_counters(delta, {"remote": remote})
            if self.store is not None and (delta or hits):
                try:
                    self.store.add(delta, hits)
                except Exception:  # noqa: BLE001 - counters are insight, not state
                    log.exception("folding cache counters into LMDB failed")

    def stats(self) -> dict:
        with self._folding, self._lock:
            out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.counters.items()}
            out["seq"] = self._seq
            out["pending"] = len(self._pending)
            out["recorder_queued"] = self._queued
            # not yet folded into LMDB (every second): `vrift cache stats` adds it, so totals
            # are current right after a build
            out["unflushed"] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._unflushed.items()}
        out["enabled"] = self.enabled
        out["hashed"] = self.memo.hashed
        if self.table is not None:
            out["table"] = self.table.stats()
        if self.remote is not None:
            out["remote"] = self.remote.stats()
        return out

    def explanations(self, since: int) -> list[dict]:
        with self._lock:
            return [e for e in self._explain if e["seq"] > since]

    def _note(self, kind: str, argv: list[bytes], why: str) -> None:
        with self._lock:
            self._seq += 1
            self._explain.append({"seq": self._seq, "kind": kind,
                                  "argv": " ".join(os.fsdecode(a) for a in argv)[:400], "why": why})
        if kind == "miss":
            log.debug("cache miss: %s: %s", " ".join(os.fsdecode(a) for a in argv)[:200], why)

    # -- LOOKUP -------------------------------------------------------------------------------
    def lookup(self, conn: Connection, req: Frame) -> Frame:
        exe, cwd, aid = req.get(Tag.PATH), req.get(Tag.CWD), req.get(Tag.ACTION)
        stdin = req.get(Tag.STDIN)
        if stdin is not None and not stdin.startswith(b"/"):
            raise RequestError(Err.BAD_REQUEST, "ACTION_LOOKUP: STDIN must be an absolute path")
        argv = req.all(Tag.ARG)
        if not exe or not exe.startswith(b"/") or not cwd or not cwd.startswith(b"/") or not argv or b"\0" in cwd:
            raise RequestError(Err.BAD_REQUEST, "ACTION_LOOKUP needs PATH (absolute), CWD (absolute) and ARG")
        if aid is None or not ACTION_ID.match(aid):
            raise RequestError(Err.BAD_REQUEST, "ACTION_LOOKUP needs ACTION (16 lowercase hex characters)")
        out = reply(req)
        self._count("lookups")
        # PATH is not in the key: the names the action looks up in it are inputs ('P'), so another
        # venv or PATH order hits where the same programs are found.  VRIFT_* never changes outputs.
        search_path, key_env = None, []
        for kv in req.all(Tag.ENV):
            if kv.startswith(b"PATH="):
                search_path = kv[5:]
            elif not kv.startswith(b"VRIFT_"):
                key_env.append(kv)
        umask = req.int(Tag.UMASK)
        action = Action(tuple(argv), os.path.normpath(cwd), exe, tuple(sorted(key_env)), self.root,
                        aid.decode(), req.get(Tag.STREAMS, b""),
                        umask=b"" if umask is None else b"%03o" % (umask & 0o7777))
        search = (search_path, action.cwd)
        if not self.enabled:
            return out.add(Tag.FLAGS, NO_RECORD)
        if self.ctx.excluded_tool(action.tool, os.fsdecode(argv[0])):
            self._count("", reason="tool in cache.never")
            return out.add(Tag.FLAGS, NO_RECORD)
        if not scope.in_scope(self.scope, action.tool, argv, self.ctx.always):
            self._count("", reason="not a compiler (cache.scope: compilers)")
            return out.add(Tag.FLAGS, NO_RECORD)
        try:
            exe_digest = self.memo.digest(exe)
            extra = self.plugin_key(action) if self.plugin_key is not None else b""
            key = action_key(action, exe_digest, extra)
        except OSError as e:
            raise RequestError(Err.IO_ERROR, f"{os.fsdecode(exe)}: cannot hash the executable: {e.strerror or e}") from None
        start_ns = time.time_ns()
        fast = {"ident": fasttable.identity(req.fields), "search": search, "exe": exe, "exe_digest": exe_digest}
        with self._lock:
            if len(self._pending) >= PENDING_LIMIT:
                self._pending.clear()  # roots that died without END: forget them rather than grow
            self._pending[aid] = {"key": key, "start_ns": start_ns, "pid": req.int(Tag.PID, 0) or 0,
                                  "tool": action.tool, "argv": list(argv), "search": search,
                                  "stdin": stdin, "fast": fast}
        why = "no entry for this key (new command line, tool, directory or environment)"
        local = self.store.candidates(key)
        for fid, data in local:
            fp = Fingerprint.from_json(data)
            difference = match(fp, self.ctx, search, stdin)
            if difference is None:
                difference = self._try_replay(key, fid, fp, aid, out)
                if difference is None:
                    self._submit(self._publish, fast, fid, fp)  # the next one is decided by the library
                    return out
            if why.startswith("no entry"):
                why = difference  # the newest fingerprint's first difference explains best
        if self.remote is not None:
            difference = self._lookup_remote(key, {fid for fid, _ in local}, aid, out, search, stdin)
            if difference is None:
                return out
            if why.startswith("no entry") and not difference.startswith("no entry"):
                why = difference
        self._count("misses")
        self._note("miss", argv, why)
        return out.add(Tag.FLAGS, 0)

    def _try_replay(self, key: bytes, fid: bytes, fp: Fingerprint, aid: bytes, out: Frame) -> str | None:
        """Replay a matching fingerprint into `out`; None on a hit, else why it failed."""
        try:
            # the streams first: a damaged blob is found before any output is touched
            chunks = unpack_streams(self.daemon.cas.read_bytes(fp.streams)) if fp.streams else []
            replayed = self._replay(fp)
        except BlobCorrupt as e:
            # quarantined by the CAS; the command runs instead and records a sound entry
            self._count("corrupt_blobs")
            log.warning("replaying %s: %s", key.hex()[:16], e)
            return "a blob of the entry was damaged (quarantined; the command runs)"
        except (RequestError, VriftError, OSError, ValueError) as e:
            self._count("errors")
            log.warning("replaying %s failed: %s", key.hex()[:16], e)
            return f"replay failed: {e}"
        with self._lock:
            self._pending.pop(aid, None)
            self._last_hit[fid] = round(time.time(), 3)
        self._count("hits")
        self._count("time_saved_s", fp.wall_s)
        self._count("bytes_replayed", replayed)
        self._count("outputs_replayed", len(fp.outputs))
        out.add(Tag.FLAGS, HIT).add(Tag.STATUS, fp.status)
        if fp.stdin is not None:  # the replay leaves the offset as the run did
            out.add(Tag.STDIN_OFFSET, int(fp.stdin[1]))
        for fd, data in chunks:  # in the order written: the library replays them so
            out.add(Tag.STDOUT if fd == 1 else Tag.STDERR, data)
        return None

    def _lookup_remote(self, key: bytes, seen: set[bytes], aid: bytes, out: Frame,
                       search=None, stdin: bytes | None = None) -> str | None:
        """Read through the remotes after a local miss: a fingerprint that matches the files
        has its blobs fetched (verified) into the CAS, is replayed, and backfills the local
        entry.  None on a hit, else why not.  Bounded by the remotes' timeouts; a remote
        that fails is skipped by its circuit breaker."""
        from ..storage import tiers

        # the whole remote part must end well before the preload library gives up waiting for
        # the reply (daemon.socket_timeout_ms); each request is also bounded by its own timeout
        deadline = time.monotonic() + self.remote_budget_s
        why = "no entry for this key (new command line, tool, directory or environment)"
        for remote, fid, data, names in self.remote.candidates(key, set(seen), deadline):
            try:
                fp = Fingerprint.from_json(data)
                if fp.id != fid:  # the id is the content's digest: anything else is damage
                    raise ValueError("its id is not its content's digest")
                # the outputs' blobs are fetched only for a match: count those the remote names
                ctx = copy.copy(self.ctx)
                ctx.cas = tiers.Named(self.daemon.cas, names)
                difference = match(fp, ctx, search, stdin)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError) as e:
                remote.count("corrupt")
                difference = f"a malformed remote fingerprint: {e}"
            if difference is None:
                difference = self.remote.fetch_blobs(remote, fp.digests(), names, deadline)
                if difference is None:
                    difference = self._try_replay(key, fid, fp, aid, out)
                    if difference is None:
                        remote.count("hits")
                        self._count("remote_hits")
                        self._submit(self._backfill, key, fid, data)
                        return None
            else:
                remote.count("misses")
            if why.startswith("no entry"):
                why = f"{remote.name}: {difference}"
        return why

    def _backfill(self, key: bytes, fid: bytes, data: dict) -> None:
        try:
            self.store.put(key, fid, data)
        except Exception:  # noqa: BLE001 - the next lookup reads through again
            log.exception("storing a remote entry locally failed")

    def _replay(self, fp: Fingerprint) -> int:
        """Materialise the outputs and publish them; returns the bytes written.

        One job on the index writer does it all: mark the paths DIRTY (readers go to the disk
        while the files change under them; shared memory only), put each file in place
        (reflink or copy from the CAS, temp + rename), then publish every output's entry and
        its directory's refreshed entry in one apply — one durable index write per hit, not
        one per file.  The blobs are already durable in the CAS, so the files themselves are
        not synced: after a crash an output is either whole or re-materialised from the index
        (docs/cache.md).  Running it on the writer keeps the watcher from re-reading the new
        files between the renames and the apply."""
        daemon = self.daemon
        targets = []
        for rel_s, digest, mode, *rest in fp.outputs:
            rel = daemon.policy.target(self.root + b"/" + os.fsencode(rel_s), allow_root=False)
            targets.append((rel, digest, mode))
        return daemon.writer.run(lambda: self._replay_lazily(targets), 600)

    def _replay_lazily(self, targets: list) -> int:
        # the outputs' blobs are durable in the CAS and the files are on disk: their index
        # entries need no fsync of their own (ProjectIndex.lazy)
        with self.daemon.index.lazy():
            return self._replay_on_writer(targets)

    def _replay_on_writer(self, targets: list) -> int:
        daemon, index = self.daemon, self.daemon.index
        rels = [t[0] for t in targets]
        placeholders = [Entry.deleted(r).with_flags(layout.F_DELETED | layout.F_DIRTY) for r in rels
                        if not index.set_dirty(r, True)]
        if placeholders:
            index.apply(placeholders)  # DIRTY tombstones: shared memory only, nothing durable
            for e in placeholders:
                index.set_dirty(e.path, True)
        created: list[bytes] = []
        entries: list[Entry] = []
        parents: set[bytes] = set()
        total = 0
        published = False
        try:
            for rel, digest, mode in targets:
                path = daemon.policy.absolute(rel)
                if digest is None:  # a directory the action created
                    if not os.path.isdir(path):
                        os.makedirs(path, exist_ok=True)
                        created.append(rel)
                    continue
                parent = os.path.dirname(path)
                if not os.path.isdir(parent):
                    os.makedirs(parent, exist_ok=True)
                    created.append(os.path.dirname(rel))
                raw = bytes.fromhex(digest)
                daemon.cas.materialize(raw, path, mode)
                st = os.lstat(path)
                total += st.st_size
                self.memo.remember(st, raw)
                entries.append(Entry.from_stat(rel, st, raw))
                parents.add(os.path.dirname(rel))
            if entries:
                index.apply(entries + daemon._dir_entries(parents))
                for e in entries:
                    index.set_dirty(e.path, False)
                for parent in parents:
                    index.set_dirty(parent, False)
            published = True
        finally:
            if created:  # new directories: index them (and what is now in them)
                daemon._reread(sorted(set(created)))
            if not published:  # a failed replay: put the index back in step with the disk
                daemon._reread(rels)
        return total

    # -- END ----------------------------------------------------------------------------------
    def end(self, conn: Connection, req: Frame) -> Frame:
        aid = req.get(Tag.ACTION)
        if aid is None or not ACTION_ID.match(aid):
            raise RequestError(Err.BAD_REQUEST, "ACTION_END needs ACTION (16 lowercase hex characters)")
        status = req.int(Tag.STATUS, 0) or 0
        directory = self.actions_dir / aid.decode()
        with self._lock:
            pending = self._pending.pop(aid, None)
        try:
            logs = actionlog.take(directory)
        except VriftError as e:
            self._count("", reason="the action's logs are missing")
            log.debug("%s", e)
            return reply(req).add(Tag.FLAGS, 0)
        if pending is None:
            self._count("", reason="no lookup seen for the action (daemon restarted?)")
            return reply(req).add(Tag.FLAGS, 0)
        try:
            fp = build(logs, self.ctx, status, pending["start_ns"], pending["tool"], pending["argv"],
                       pending["search"], pending.get("stdin"), req.int(Tag.STDIN_OFFSET, None))
            fp.wall_s = round(max(0, time.time_ns() - pending["start_ns"]) / 1e9, 4)
        except Uncacheable as u:
            log.debug("action %s uncacheable: %s", aid.decode(), u)
            self._count("", reason=u.reason)
            self._note("uncacheable", pending["argv"], str(u))
            return reply(req).add(Tag.FLAGS, 0)
        except Exception as e:  # noqa: BLE001 - a bug here costs one entry, not the build
            self._count("errors")
            log.exception("recording action %s failed", aid.decode())
            self._note("uncacheable", pending["argv"], f"internal error: {e}")
            return reply(req).add(Tag.FLAGS, 0)
        self._submit(self._put, pending["key"], fp, pending.get("fast"))
        return reply(req).add(Tag.FLAGS, EndFlag.RECORDING)

    def _put(self, key: bytes, fp: Fingerprint, fast: dict | None = None) -> None:
        if fast is not None:  # first: the next build may be a moment away; the table needs no LMDB
            self._publish(fast, fp.id, fp)
        try:
            self.store.put(key, fp.id, fp.to_json())
            self._count("recorded")
            self._recorded_at = time.monotonic()
            if self.remote is not None:  # write-behind: the upload thread, never the build's path
                self.remote.enqueue(key, fp.id, fp.to_json(), fp.digests())
        except Exception:  # noqa: BLE001
            self._count("errors")
            log.exception("storing a cache entry failed")

    # -- the action table (fasttable) ---------------------------------------------------------
    def _publish(self, fast: dict, fid: bytes, fp: Fingerprint) -> None:
        """Put `fp` in the action table for its lookup identity (on the recorder thread), or
        take the identity out when the library could not check it exactly."""
        if self.table is None:
            return
        try:
            record = fasttable.compile_record(fp, self.ctx, fast["ident"], fast["search"], fast["exe"],
                                              fast["exe_digest"])
        except fasttable.NotExpressible as e:
            log.debug("not in the action table: %s", e)
            record = None
        except (OSError, ValueError, KeyError, TypeError, VriftError) as e:
            log.debug("not in the action table: %s", e)
            record = None
        if record is not None:
            with self._lock:
                if len(self._fast) >= fasttable.MAX_RECORDS * 4:
                    self._fast.clear()
                outputs = {self.root + b"/" + os.fsencode(o[0]): bytes.fromhex(o[1]) for o in fp.outputs if o[1]}
                self._fast[fasttable.key_hash(fast["ident"])] = (fid, fp.wall_s, fp.size, len(fp.outputs), outputs)
        self.table.put(fast["ident"], record)

    def replayed(self, conn: Connection, req: Frame) -> None:
        """ACTION_REPLAYED (one-way): the library replayed a table record itself.  Counted as a
        lookup and a hit; each output (PATH, then IDENTITY: the stat identity of the inode the
        library renamed there, from its own fd) is published with the recorded digest."""
        h = req.int(Tag.KEY_HASH)
        with self._lock:
            info = self._fast.get(h) if h is not None else None
            if info is not None and info[0] is not None:
                self._last_hit[info[0]] = round(time.time(), 3)
        self._count("lookups")
        self._count("hits")
        self._count("fast_hits")
        if info is not None:
            self._count("time_saved_s", info[1])
            self._count("bytes_replayed", info[2])
            self._count("outputs_replayed", info[3])
        placed, path = [], None
        for tag, value in req.fields:
            if tag == Tag.PATH:
                path = value
            elif tag == Tag.IDENTITY and path is not None:
                try:
                    placed.append((self.daemon.policy.target(path, allow_root=False), path,
                                   tuple(int(x) for x in value.split())))
                except (ValueError, RequestError, VriftError):
                    pass
                path = None
        if placed:
            digests = info[4] if info is not None else {}
            self.daemon.writer.call(lambda: self._publish_replayed(placed, digests))

    def _publish_replayed(self, placed: list, digests: dict) -> None:
        """On the writer thread: an output whose path still holds the very inode the library
        renamed there, unchanged since (its stat identity, taken through the library's own fd),
        has the recorded digest — no hashing, no fsync (the blob is durable in the CAS; lost in
        a crash, the start-up rescan finds the file).  Anything else is simply re-read."""
        daemon, index = self.daemon, self.daemon.index
        entries, parents, reread = [], set(), []
        for rel, path, stamp in placed:
            digest = digests.get(path)
            try:
                st = os.lstat(path)
            except OSError:
                st = None
            if digest is None or st is None or not statmod.S_ISREG(st.st_mode) or DigestMemo.stamp(st) != stamp:
                reread.append(rel)
                continue
            self.memo.remember(st, digest)
            entries.append(Entry.from_stat(rel, st, digest))
            parents.add(os.path.dirname(rel))
        if entries:
            with index.lazy():
                index.apply(entries + daemon._dir_entries(parents))
            daemon._settle([e.path for e in entries] + sorted(parents))
        if reread:
            daemon._reread(reread)

    def _submit(self, fn, *args):
        with self._lock:
            self._queued += 1

        def job():
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._queued -= 1
        return self._recorder.submit(job)

    def drain(self, timeout: float = 30) -> None:
        """Wait until every entry handed to the recorder is written (tests, shutdown)."""
        self._submit(lambda: None).result(timeout)

    # -- stale logs -----------------------------------------------------------------------------
    def sweep(self, startup: bool = False) -> int:
        """Remove action directories whose root died without END (or that are over an hour old)."""
        try:
            names = os.listdir(self.actions_dir)
        except OSError:
            return 0
        removed = 0
        now = time.time()
        for name in names:
            aid = os.fsencode(name)
            path = self.actions_dir / name
            with self._lock:
                pending = self._pending.get(aid)
            if pending is not None:
                stale = not process.pid_alive(pending["pid"]) if pending["pid"] else False
            else:
                try:
                    age = now - os.stat(path).st_mtime
                except OSError:
                    continue
                pids = {int(n.split(".")[0]) for n in _names(path) if n.split(".")[0].isdigit()}
                stale = age > STALE_S or (startup or age > 60) and not any(process.pid_alive(p) for p in pids)
            if stale:
                with self._lock:
                    self._pending.pop(aid, None)
                actionlog.remove(path)
                removed += 1
        return removed


def _max_size(cfg) -> int:
    from ..config import parse_size

    try:
        return parse_size(cfg.get("cache.max_size", 0) or 0)
    except ValueError:
        return 0


def _names(path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
