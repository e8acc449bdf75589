"""Ingest and reconcile: make a project's index true to its tree.

A full ingest walks the tree; a reconcile re-reads a few paths (the daemon's watcher and
INVALIDATE requests).  Both reuse a digest whenever size, mtime, ctime, inode, device and
mode are unchanged, so re-ingesting an unchanged tree costs one lstat per path.  Hashing
runs on a thread pool: BLAKE3 and file I/O release the GIL.
"""
from __future__ import annotations

import contextlib
import fnmatch
import gc
import itertools
import os
import queue
import re
import threading
import stat as statmod
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from . import ingest_native
from .cas import CAS
from .progress import Progress
from .cas.store import hash_file
from .errors import VriftError
from .identity import STATE_DIR, Project
from .vdir import layout
from .vdir.entry import ZERO_DIGEST, Entry
from .vdir.index import ProjectIndex

# Build tools' private state: rewritten after every edge, read by nobody else; never indexed, and
# the preload library writes it straight through (the same list is in vrift/preload/write.c).
TOOL_STATE = (b".ninja_log", b".ninja_deps", b".ninja_lock")
ALWAYS_IGNORED = (b".git", STATE_DIR.encode(), *TOOL_STATE)
APPLY_BATCH = 4096
WALK_THREADS = 1  # listing threads: one overlaps the lstat calls with this thread; a second only fights for the GIL (measured)
# directories listed ahead of the comparisons at most: a first ingest hashes far slower than the
# listing thread lstats, and an unbounded look-ahead held the whole tree's (path, lstat) pairs,
# ~800 bytes a path (10^6 files: most of the CLI's peak)
LIST_AHEAD = 16
SMALL_BATCH = 32  # up to this many files to store: one fsync each, else one syncfs for all
HASH_RETRIES = 3  # a file that keeps changing while we hash it is reported, not indexed
SLICE = 256  # files per hashing thread at least: fewer go on the caller's thread


@dataclass
class IngestReport:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hashed: int = 0
    reused: int = 0
    new_blobs: int = 0
    bytes_hashed: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    strategy: str = ""
    walk: str = "python"  # "native": the tree was walked and compared in C (ingest_native)

    @property
    def paths(self) -> int:
        return self.files + self.dirs + self.symlinks

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in ("files", "dirs", "symlinks", "hashed", "reused", "new_blobs",
                                            "bytes_hashed", "updated", "deleted", "seconds", "strategy")}
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        d["files_per_s"] = round(self.paths / self.seconds) if self.seconds > 0 else None
        return d


@contextlib.contextmanager
def _no_cyclic_gc():
    """Python's cycle collector off for a full walk: it runs every 700 allocations and then
    traverses every tracked object, and a walk allocates a few objects per path and frees them
    all by reference count (measured: 9% of a first ingest of 100,000 files)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _Nothing:
    """The `seen` set of a first ingest: nothing indexed before it can be gone."""

    def add(self, _path: bytes) -> None:
        pass


class IgnoreRules:
    """Ignore globs from the config.  A pattern without '/' matches a name at any depth (like
    .gitignore); one with '/' matches the whole path relative to the root.  An ignored
    directory is not descended into."""

    def __init__(self, patterns: Iterable[str] = ()):
        names, paths = [], []
        for p in patterns:
            p = p.rstrip("/")
            (paths if "/" in p else names).append(fnmatch.translate(p.lstrip("/")))
        self._name = re.compile("|".join(names)) if names else None
        self._path = re.compile("|".join(paths)) if paths else None
        self.only_builtin = not (names or paths)  # then `name in ALWAYS_IGNORED` is the whole test

    def ignored(self, rel: bytes, name: bytes) -> bool:
        if name in ALWAYS_IGNORED:
            return True
        if self._name is not None and self._name.match(os.fsdecode(name)):
            return True
        return self._path is not None and self._path.match(os.fsdecode(rel)) is not None


class Ingester:
    native = True  # re-ingest with the C walk where it applies (ingest_native.applies); tests turn it off

    def __init__(self, project: Project, index: ProjectIndex, cas: CAS, *, ignore: Iterable[str] = (),
                 workers: int = 0, index_filter: Callable[[bytes], bool] | None = None,
                 store_blobs: bool = False):
        self.project = project
        self.index = index
        self.cas = cas
        # False (ingest_blobs: lazy): a full walk hashes sources, does not copy them; the CAS
        # gets a blob when something needs one.  A reconcile (the daemon's re-reads of paths a
        # build or the user just wrote, INVALIDATE) always stores: those are mostly outputs,
        # whose blobs a replay needs, and they are few.
        self.store_blobs = store_blobs
        self.rules = IgnoreRules(ignore)
        self.workers = workers or min(32, (os.cpu_count() or 2) * 2)
        self.index_filter = index_filter
        self._root = os.fsencode(project.root)

    # -- public -------------------------------------------------------------------------
    def ingest(self, progress: bool = False, bar: Progress | None = None) -> IngestReport:
        """Walk the whole tree; index what is new or changed; drop what disappeared.

        The meter counts paths done (a file once hashed); its total is the index's size, the
        last ingest's count (none on a first ingest).  `bar` is a meter of the caller's (the
        daemon counts without drawing, for STATS)."""
        t0 = time.perf_counter()
        report = IngestReport()
        # an empty index has nothing to drop: no set of every path walked (10^6 files: 32 MB)
        seen: set[bytes] | _Nothing = set() if len(self.index) else _Nothing()
        if bar is None:
            bar = Progress(len(self.index) or None, "ingest", enabled=progress)
        with bar, _no_cyclic_gc():
            maybe_gone = None
            if ingest_native.applies(self):  # an indexed tree again: seen is a set
                maybe_gone = ingest_native.ingest(self, report, seen, bar, ALWAYS_IGNORED, APPLY_BATCH)
            if maybe_gone is None:
                self._index_walk(self._walk_parallel(report), report, seen, bar, self.store_blobs)
                maybe_gone = self.index.paths() if isinstance(seen, set) else []
        gone = [Entry.deleted(p) for p in maybe_gone if p not in seen]
        self._apply(gone, report)
        report.deleted += len(gone)
        report.seconds = time.perf_counter() - t0
        return report

    def reconcile(self, paths: Iterable[bytes]) -> IngestReport:
        """Re-read the given relative paths (a directory means its whole subtree)."""
        t0 = time.perf_counter()
        report = IngestReport()
        for rel in sorted(set(paths), key=len):
            rel = rel.strip(b"/")
            if any(self.rules.ignored(rel, part) for part in rel.split(b"/") if part):
                continue
            seen: set[bytes] = set()
            st = self._lstat(rel)
            if st is None:
                items: Iterator = iter(())
            elif statmod.S_ISDIR(st.st_mode):
                items = self._walk(rel, report, top_stat=st)
            else:
                items = iter(([(rel, st)],))
            self._index_walk(items, report, seen, None, True)
            prefix = rel + b"/" if rel else b""
            gone = [Entry.deleted(e.path) for e in self._known_under(rel, prefix) if e.path not in seen]
            self._apply(gone, report)
            report.deleted += len(gone)
        report.seconds = time.perf_counter() - t0
        return report

    # -- walking ----------------------------------------------------------------------
    def _lstat(self, rel: bytes) -> os.stat_result | None:
        try:
            return os.lstat(self._abs(rel))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None

    def _abs(self, rel: bytes) -> bytes:
        return self._root + b"/" + rel if rel else self._root

    def _known_under(self, rel: bytes, prefix: bytes) -> Iterator[Entry]:
        entry = self.index.get(rel)
        if entry is not None and not entry.is_deleted:
            yield entry
        if entry is None or entry.flags & layout.F_DIR:  # children may be indexed
            yield from self.index.under(rel)

    def _list(self, rel: bytes) -> tuple[list[tuple[bytes, os.stat_result]], list[bytes], list[tuple[str, str]]]:
        """One directory: ((child, lstat) of each name not ignored, the children that are
        directories, (path, reason) skipped).  Never follows symlinks; safe on any thread
        (lstat releases the GIL)."""
        prefix = rel + b"/" if rel else b""
        items, dirs, skipped = [], [], []
        ignored = None if self.rules.only_builtin else self.rules.ignored
        try:
            with os.scandir(self._abs(rel)) as it:
                for d in it:
                    name = d.name
                    if name in ALWAYS_IGNORED:
                        continue
                    child = prefix + name
                    if ignored is not None and ignored(child, name):
                        continue
                    try:
                        st = d.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as e:
                        skipped.append((os.fsdecode(child), e.strerror or str(e)))
                        continue
                    items.append((child, st))
                    if st.st_mode & 0o170000 == statmod.S_IFDIR:
                        dirs.append(child)
        except OSError as e:
            skipped.append((os.fsdecode(rel), f"cannot list: {e.strerror}"))
        return items, dirs, skipped

    def _walk(self, top: bytes, report: IngestReport,
              top_stat: os.stat_result | None = None) -> Iterator[list[tuple[bytes, os.stat_result]]]:
        """Yield lists of (relative path, lstat) for `top` and everything under it (a list per
        directory), skipping ignored names and what the plugins' index filter rejects (a
        rejected directory is not entered)."""
        if top_stat is None:
            top_stat = self._lstat(top)
            if top_stat is None:
                return
        yield [(top, top_stat)]
        stack = [top]
        while stack:
            items, dirs, skipped = self._list(stack.pop())
            report.skipped.extend(skipped)
            yield self._kept(items, dirs, stack.append)

    def _kept(self, items, dirs, enter) -> list[tuple[bytes, os.stat_result]]:
        """The items the index filter keeps; `enter` is called with each kept directory."""
        keep = self.index_filter
        if keep is None:
            for child in dirs:
                enter(child)
            return items
        kept = [(child, st) for child, st in items if keep(child)]
        for child, st in kept:
            if statmod.S_ISDIR(st.st_mode):
                enter(child)
        return kept

    def _walk_parallel(self, report: IngestReport) -> Iterator[list[tuple[bytes, os.stat_result]]]:
        """The whole tree like _walk, with directories listed on worker threads: a re-ingest is
        one lstat per path, and the syscalls overlap with the comparisons this thread makes.
        The plugins' index filter runs on this thread."""
        top_stat = self._lstat(b"")
        if top_stat is None:
            return
        yield [(b"", top_stat)]
        todo: queue.SimpleQueue = queue.SimpleQueue()
        done: queue.SimpleQueue = queue.SimpleQueue()

        def lister() -> None:
            while (rel := todo.get()) is not None:
                done.put(self._list(rel))

        threads = [threading.Thread(target=lister, daemon=True) for _ in range(WALK_THREADS)]
        for t in threads:
            t.start()
        waiting = [b""]  # entered, not yet given to a lister: depth first, so this stays small too
        pending = 0

        def feed() -> None:
            nonlocal pending
            while waiting and pending < LIST_AHEAD:
                todo.put(waiting.pop())
                pending += 1

        try:
            feed()
            while pending:
                items, dirs, skipped = done.get()
                pending -= 1
                report.skipped.extend(skipped)
                kept = self._kept(items, dirs, waiting.append)
                feed()
                yield kept
        finally:
            for _ in threads:
                todo.put(None)

    def _index_walk(self, batches: Iterable[list[tuple[bytes, os.stat_result]]], report: IngestReport,
                    seen: set[bytes], bar: Progress | None, store: bool) -> None:
        updates: list[Entry] = []
        to_hash: list[tuple[bytes, os.stat_result]] = []
        get, record = self.index.get, self.index.record_getter()
        stat_record = Entry.stat_record
        fast = not store  # storing blobs, each reuse also asks the CAS for the blob
        advance = bar.advance if bar is not None else None
        for rel, st in itertools.chain.from_iterable(batches):
            mode = st.st_mode
            kind = mode & 0o170000
            if fast and kind == statmod.S_IFREG:
                # an unchanged file: its indexed record is exactly what its lstat packs to with
                # the same digest (one bytes compare; no Entry made)
                packed = record(rel)
                if packed is not None and packed[-32:] != ZERO_DIGEST and \
                        packed == stat_record(st, 0, packed[-32:]):
                    report.files += 1
                    report.reused += 1
                    seen.add(rel)
                    if advance is not None:
                        advance()
                    continue
            elif kind == statmod.S_IFDIR or kind == statmod.S_IFLNK:
                packed = record(rel)
                flags = layout.F_DIR if kind == statmod.S_IFDIR else layout.F_SYMLINK
                if packed is not None and packed == stat_record(st, flags, ZERO_DIGEST):
                    if kind == statmod.S_IFDIR:
                        report.dirs += 1
                    else:
                        report.symlinks += 1
                    seen.add(rel)
                    if advance is not None:
                        advance()
                    continue
            old = get(rel)
            queued = False
            if statmod.S_ISREG(mode):
                report.files += 1
                # storing blobs, a digest is reused only while its blob is in the CAS: one
                # quarantined by `vrift cas verify --quarantine`, or lost, is stored again
                if old is not None and not old.is_deleted and old.same_file(st) and any(old.digest) \
                        and (not store or self.cas.has(old.digest)):
                    seen.add(rel)
                    report.reused += 1
                    if old.nlink != st.st_nlink or old.uid != st.st_uid or old.gid != st.st_gid:
                        updates.append(Entry.from_stat(rel, st, old.digest))
                else:
                    to_hash.append((rel, st))
                    queued = True
            elif statmod.S_ISDIR(mode) or statmod.S_ISLNK(mode):
                if statmod.S_ISDIR(mode):
                    report.dirs += 1
                else:
                    report.symlinks += 1
                seen.add(rel)
                new = Entry.from_stat(rel, st)
                if new != old:
                    updates.append(new)
            else:
                report.skipped.append((os.fsdecode(rel), "not a regular file, directory or symlink"))
                continue
            if advance is not None and not queued:
                advance()  # a file to hash counts when hashed: that is where the time goes
            if len(updates) >= APPLY_BATCH:
                self._apply(updates, report)
                updates = []
            if len(to_hash) >= APPLY_BATCH:
                self._hash_batch(to_hash, report, seen, bar, store)
                to_hash = []
        self._apply(updates, report)
        self._hash_batch(to_hash, report, seen, bar, store)

    # -- hashing and storing -------------------------------------------------------------
    def _hash_batch(self, batch: list[tuple[bytes, os.stat_result]], report: IngestReport,
                    seen: set[bytes], bar: Progress | None, store: bool) -> None:
        if not batch:
            return
        # A few files (the daemon's watcher, INVALIDATE) are fsynced one by one; a large batch is
        # stored without and the filesystem synced once (syncfs costs milliseconds when the
        # filesystem is busy, far more than a handful of fsyncs).
        durable = len(batch) <= SMALL_BATCH
        results = self._run(batch, durable, bar, store)
        updates = []
        for (rel, _), outcome in zip(batch, results):
            if isinstance(outcome, str):
                report.skipped.append((os.fsdecode(rel), outcome))
                continue
            entry, new_blob, strategy = outcome
            seen.add(rel)
            updates.append(entry)
            report.hashed += 1
            report.bytes_hashed += entry.size
            report.new_blobs += new_blob
            report.strategy = report.strategy or strategy
        if updates and not durable and store:
            self.cas.sync()  # the batch's blobs are on disk before the index refers to them
        self._apply(updates, report)

    def _run(self, batch: list[tuple[bytes, os.stat_result]], durable: bool, bar: Progress | None,
             store: bool) -> list:
        """_store_one of every item, in order.  Each worker thread takes a contiguous slice
        and loops over it: a future per file (a thread pool's map) cost more than hashing a
        small file, and the threads only pay where I/O or BLAKE3 on large files releases the
        GIL."""
        results: list = [None] * len(batch)
        n = min(self.workers, max(1, len(batch) // SLICE))
        errors: list[BaseException] = []
        counted = threading.Lock()  # the meter's += is not atomic across threads

        def work(lo: int, hi: int) -> None:
            try:
                for i in range(lo, hi):
                    results[i] = self._store_one(*batch[i], durable, store)
                    if bar is not None:
                        with counted:
                            bar.advance()
            except BaseException as e:  # a fatal CAS error: raised again on the caller's thread
                errors.append(e)

        if n == 1:
            work(0, len(batch))
        else:
            step = -(-len(batch) // n)
            threads = [threading.Thread(target=work, args=(lo, min(lo + step, len(batch))), daemon=True)
                       for lo in range(0, len(batch), step)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        if errors:
            raise errors[0]
        return results

    def _store_one(self, rel: bytes, st: os.stat_result, durable: bool, store: bool):
        """Hash (and with `store`, store) one file; returns (Entry, new_blob, strategy) or
        a reason string.

        The entry's stat must describe the bytes that were hashed: stat again afterwards and
        retry if the file changed underneath."""
        path = self._abs(rel)
        for _ in range(HASH_RETRIES):
            try:
                if store:
                    result = self.cas.store_file(os.fsdecode(path), fsync=durable)
                    digest, size, new, strategy = result.digest, result.size, result.new, result.strategy
                else:
                    digest, size = hash_file(path)
                    new, strategy = False, "hash"
                after = os.lstat(path)
            except FileNotFoundError:
                return "vanished during ingest"
            except VriftError as e:
                if getattr(e, "fatal", False):
                    raise
                return str(e)
            except OSError as e:
                return e.strerror or str(e)
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == \
                    (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) and size == st.st_size:
                return Entry.from_stat(rel, after, digest), bool(new), strategy
            st = after
        return "kept changing during ingest"

    def _apply(self, updates: list[Entry], report: IngestReport) -> None:
        if updates:
            self.index.apply(updates)
            report.updated += len(updates)
