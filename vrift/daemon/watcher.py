"""Keeps a project daemon told about every change on disk (inotify, recursive).

The traps (SPEC §5.2): a directory created or moved in gets its watch *before* it is scanned,
so files created in it before the watch existed are still found by the scan; a queue overflow
(IN_Q_OVERFLOW) means "rescan everything" once; watches running out (the user's
fs.inotify.max_user_watches, or `daemon.max_watches`) leaves the directories beyond the limit
unwatched: `covers()` says so, the daemon keeps their entries DIRTY (readers ask the kernel) and
re-reads those subtrees at every SYNC; both are reported in STATS, with the sysctl that fixes it.
A rename is two events paired by cookie, and the pair may be split across reads.
"""
from __future__ import annotations

import errno
import logging
import os
import select
import threading
import time
from collections.abc import Callable

from inotify_simple import INotify, flags, parse_events

log = logging.getLogger("vrift.daemon")

WATCH_MASK = (flags.CREATE | flags.DELETE | flags.MODIFY | flags.ATTRIB | flags.CLOSE_WRITE
              | flags.MOVED_FROM | flags.MOVED_TO | flags.DONT_FOLLOW | flags.ONLYDIR | flags.EXCL_UNLINK)
ENTRY_CHANGES = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
UNPAIRED_MOVE_S = 0.5  # a MOVED_FROM without its MOVED_TO after this long left the tree
LIMITS = "/proc/sys/fs/inotify/"


def inotify_limit(name: str) -> int | None:
    """fs.inotify.<name> (max_user_watches, max_user_instances), None when unreadable."""
    try:
        with open(LIMITS + name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def suggested_watches(limit: int | None, missing: int) -> int:
    """A max_user_watches that leaves room for `missing` more watches (and other programs')."""
    want = (limit or 8192) + missing + 8192
    return max(524288, -(-want // 65536) * 65536)


class Watcher:
    def __init__(self, root: bytes, ignored: Callable[[bytes, bytes], bool],
                 on_change: Callable[[], None] | None = None, on_close_write: Callable[[bytes], None] | None = None,
                 max_watches: int = 0):
        self.root = root
        self.ignored = ignored
        self.on_change = on_change
        self.on_close_write = on_close_write
        self.lock = threading.RLock()
        self.wd_path: dict[int, bytes] = {}
        self.changes: set[bytes] = set()
        self.dirs: set[bytes] = set()  # directories whose own entry (mtime, nlink) changed
        self.full_rescan = False
        self.overflows = 0
        self.watches_exhausted = False
        self.max_watches = max(0, int(max_watches or 0))  # 0: the kernel's limit only
        # roots of the subtrees left without watches: nothing there is ever reported
        self.unwatched: set[bytes] = set()
        self.dirs_unwatched = 0  # directories under those roots when the daemon started
        self.events = 0
        self._moves: dict[int, tuple[bytes, float]] = {}
        self._inotify = INotify(nonblocking=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> "Watcher":
        with self.lock:
            self.add_tree(b"")
            if self.unwatched:
                self._report_limit()
        self._thread.start()
        return self

    def _report_limit(self) -> None:
        """Once, at start: how many directories have no watch and what fixes it."""
        stack = list(self.unwatched)
        while stack:  # count them: the fix must name a number that is enough
            rel = stack.pop()
            self.dirs_unwatched += 1
            stack.extend(self._subdirs(rel))
        limit = inotify_limit("max_user_watches")
        how = (f"daemon.max_watches={self.max_watches}" if self.max_watches
               else f"fs.inotify.max_user_watches={limit}")
        log.warning("inotify: %d of %d directories have no watch (%s): their entries are answered by the "
                    "kernel and re-read at each sync; fix: %s", self.dirs_unwatched,
                    self.dirs_unwatched + len(self.wd_path), how, self.fix())

    def fix(self) -> str:
        if self.max_watches:
            return f"raise daemon.max_watches (now {self.max_watches}) in .vrift.yaml, or set it to 0"
        limit = inotify_limit("max_user_watches")
        return f"sudo sysctl fs.inotify.max_user_watches={suggested_watches(limit, self.dirs_unwatched)}"

    def covers(self, rel: bytes) -> bool:
        """True when a change at `rel` (a file, or a directory's own entry and names) is
        reported: no directory from `rel` up to the root lacks its watch."""
        if not self.unwatched:
            return True
        with self.lock:
            p = rel
            while True:
                if p in self.unwatched:
                    return False
                if not p:
                    return True
                p = p.rpartition(b"/")[0]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        self._inotify.close()

    @property
    def degraded(self) -> str | None:
        if self.watches_exhausted:
            return (f"inotify watches exhausted: {self.dirs_unwatched or len(self.unwatched)} directories "
                    f"unwatched (answered by the kernel, re-read at each sync); fix: {self.fix()}")
        if self.full_rescan:
            return "inotify queue overflowed: full rescan pending"
        return None

    def stats(self) -> dict:
        with self.lock:
            return {"watches": len(self.wd_path), "events": self.events, "overflows": self.overflows,
                    "watches_exhausted": self.watches_exhausted, "unwatched_dirs": self.dirs_unwatched,
                    "unwatched_roots": len(self.unwatched), "max_watches": self.max_watches,
                    "max_user_watches": inotify_limit("max_user_watches"), "pending": len(self.changes),
                    "degraded": self.degraded is not None, "reason": self.degraded}

    # -- reading events -------------------------------------------------------------------------
    def _run(self) -> None:
        fd = self._inotify.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            try:
                ready = poller.poll(200)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return
            if ready and self.drain() and self.on_change:
                self.on_change()

    def drain(self) -> int:
        """Read every event queued now; returns how many.  Called by the watcher thread and by
        SYNC (after the request arrived, so every earlier change is in the queue)."""
        n = 0
        with self.lock:
            while True:
                try:
                    data = os.read(self._inotify.fileno(), 1 << 16)
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno == errno.EINTR:
                        continue
                    if e.errno == errno.EBADF:
                        break
                    raise
                events = parse_events(data)
                n += len(events)
                for ev in events:
                    self._event(ev)
            self._expire_moves()
            self.events += n
        return n

    def take(self, for_sync: bool = False) -> tuple[set[bytes], set[bytes], bool]:
        """(paths to re-read, directories to refresh, full rescan?) and reset them."""
        with self.lock:
            paths, dirs = self.changes, self.dirs
            if for_sync and self.unwatched:  # nothing reports changes there: look again
                paths |= self.unwatched
            full = self.full_rescan
            self.changes, self.dirs, self.full_rescan = set(), set(), False
            return paths, dirs, full

    def _event(self, ev) -> None:
        mask = ev.mask
        if mask & flags.Q_OVERFLOW:
            self.overflows += 1
            self.full_rescan = True
            log.warning("inotify queue overflow: full rescan")
            return
        base = self.wd_path.get(ev.wd)
        if mask & flags.IGNORED:
            self.wd_path.pop(ev.wd, None)
            return
        if base is None or not ev.name:
            return  # events on a watched directory itself are reported by its parent
        name = os.fsencode(ev.name)
        rel = base + b"/" + name if base else name
        if self.ignored(rel, name):
            return
        self.changes.add(rel)
        if mask & ENTRY_CHANGES:
            self.dirs.add(base)
        if mask & flags.CLOSE_WRITE and self.on_close_write:
            self.on_close_write(rel)
        if not mask & flags.ISDIR:
            return
        if mask & flags.CREATE:
            self.add_tree(rel)
        elif mask & flags.MOVED_FROM:
            self._moves[ev.cookie] = (rel, time.monotonic())
        elif mask & flags.MOVED_TO:
            old = self._moves.pop(ev.cookie, None)
            if old is not None:
                self._rename_watches(old[0], rel)
            self.add_tree(rel)  # new subdirectories, or the whole tree when it came from outside

    # -- watches ------------------------------------------------------------------------------
    def add_tree(self, top: bytes) -> None:
        """Watch `top` and every directory under it (never through symlinks)."""
        stack = [top]
        while stack:
            rel = stack.pop()
            path = self.root + b"/" + rel if rel else self.root
            try:
                if self.watches_exhausted or (self.max_watches and len(self.wd_path) >= self.max_watches):
                    raise OSError(errno.ENOSPC, "watch limit")
                wd = self._inotify.add_watch(path, WATCH_MASK)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    if not self.watches_exhausted:
                        log.warning("inotify watches exhausted at %s (%d watches)", os.fsdecode(path),
                                    len(self.wd_path))
                    self.watches_exhausted = True
                    self.unwatched.add(rel)  # with everything below it, and what is still to do
                    self.unwatched.update(stack)
                    return
                continue  # vanished or not a directory any more: its parent's events cover it
            self.wd_path[wd] = rel
            self.unwatched.discard(rel)
            stack.extend(self._subdirs(rel))

    def _subdirs(self, rel: bytes) -> list[bytes]:
        path = self.root + b"/" + rel if rel else self.root
        out = []
        try:
            with os.scandir(path) as it:
                for d in it:
                    if d.is_dir(follow_symlinks=False):
                        child = rel + b"/" + d.name if rel else d.name
                        if not self.ignored(child, d.name):
                            out.append(child)
        except OSError:
            pass
        return out

    def _rename_watches(self, old: bytes, new: bytes) -> None:
        prefix = old + b"/"
        for wd, p in list(self.wd_path.items()):
            if p == old:
                self.wd_path[wd] = new
            elif p.startswith(prefix):
                self.wd_path[wd] = new + p[len(old):]

    def _expire_moves(self) -> None:
        """A directory moved out of the tree: stop watching it."""
        now = time.monotonic()
        for cookie, (rel, when) in list(self._moves.items()):
            if now - when < UNPAIRED_MOVE_S:
                continue
            del self._moves[cookie]
            prefix = rel + b"/"
            for wd, p in list(self.wd_path.items()):
                if p == rel or p.startswith(prefix):
                    try:
                        self._inotify.rm_watch(wd)
                    except OSError:
                        pass
                    self.wd_path.pop(wd, None)
