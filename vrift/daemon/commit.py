"""The write path, server side (SPEC §5.4, docs/protocol.md "Writes").

WRITTEN (the preload library's flow): the client has already renamed its staging file onto the
real path and does not wait; here the file is hashed and stored, its entry recorded per
durability mode and published, and DIRTY cleared once `settle()` has checked that the entry
describes what is on disk.  COMMIT (the older, synchronous request, kept for other clients):
hash and store the staging file, move it onto the real path, record, publish, acknowledge.

Hashing, storing and the rename run on the thread that reads the notification (a COMMIT: a
worker; they release the GIL); only the index update goes through the writer thread, where
concurrent commits are grouped.  The service holds no daemon: it is given the path policy, the
CAS, the index (read only here) and the writer, and two callbacks into the tree sync.
A per-path lock keeps "rename, then stat" of two commits of the same path from interleaving,
so the entry applied last always describes the file that is on disk.
"""
from __future__ import annotations

import fcntl
import logging
import os
import stat as statmod
import threading
import zlib
from collections.abc import Callable, Iterable

from .. import locate
from ..errors import VriftError
from ..vdir import layout
from ..vdir.entry import Entry
from .listener import Connection, RequestError
from .protocol import Err, ErrorFlag, Frame, Tag, reply

log = logging.getLogger("vrift.daemon")

STRIPES = 64
MOVED = ErrorFlag.MOVED

_STATE_DIR = os.fsencode(locate.STATE_DIR)


class CommitService:
    def __init__(self, policy, cas, index, writer, *, reread: Callable[[list[bytes]], None] | None = None,
                 release: Callable[[Iterable[bytes]], None] | None = None):
        self.policy = policy  # PathPolicy: what a client may name
        self.cas = cas
        self.index = index    # read only: is a file already indexed as it is on disk?
        self.writer = writer  # IndexWriter: commit() groups index updates, call() queues behind them
        self.reread = reread  # re-read paths from the tree (on the writer thread), not waited for
        self.release = release  # the watcher may look at these paths again (WRITING is over)
        self._stripes = [threading.Lock() for _ in range(STRIPES)]
        self.reused = 0  # WRITTEN files found indexed already (the watcher was first): not hashed again

    def written(self, conn: Connection, req: Frame) -> None:
        """WRITTEN: PATH holds a complete new file, put there by the client's own rename.  Runs
        on the connection's thread (hashing releases the GIL; the client is not waiting), so the
        writer thread only groups the index updates.  Anything unexpected — the file replaced or
        gone again, not regular, unreadable — becomes a plain re-read of the path."""
        raw = req.get(Tag.PATH)
        if raw is None:
            raise RequestError(Err.BAD_REQUEST, "WRITTEN needs PATH")
        rel = self.policy.target(raw, allow_root=False)
        with conn.lock:
            announced = rel in conn.pending_writes
            conn.pending_writes.discard(rel)

        def settled(_f=None) -> None:  # the watcher may look at the path again
            if announced and self.release is not None:
                self.release((rel,))

        target = self.policy.absolute(rel)
        with self._stripes[zlib.crc32(rel) % STRIPES]:
            try:
                before = os.lstat(target)
                if not statmod.S_ISREG(before.st_mode):
                    raise FileNotFoundError
                digest, blob = self._indexed(rel, before), None
                if digest is None:
                    # no fsync here: the writer makes the group's blobs durable at once
                    digest = blob = self.cas.store_file(target, fsync=False).digest
                    after = os.lstat(target)
                else:
                    after = before
            except (OSError, VriftError) as e:
                if not isinstance(e, FileNotFoundError):
                    log.warning("%s: written, but not stored: %s", os.fsdecode(target), _why(e))
                after = None
            if after is None or (before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns) != (
                    after.st_ino, after.st_dev, after.st_size, after.st_mtime_ns):
                future = None  # changed while we hashed it: whatever is there now is re-read
            else:
                future = self.writer.commit(Entry.from_stat(rel, after, digest), os.path.dirname(rel),
                                            blob if self.cas.fsync else None)
        if future is None:
            if self.reread is not None:
                self.reread([rel])
            self.writer.call(settled)  # behind the re-read
            return None
        # Not waited for: the next notification is read at once, so the writer thread's groups
        # (one fsync each) grow with the load.  A SYNC queues behind them on the same thread.
        future.add_done_callback(lambda f: f.exception() and log.warning(
            "%s: index update failed: %s", os.fsdecode(target), _why(f.exception())))
        future.add_done_callback(settled)
        return None

    def _indexed(self, rel: bytes, st) -> bytes | None:
        """The digest of the entry that already describes this file, with its blob in the CAS:
        when the daemon is behind its clients, the watcher may see a client's rename, and
        re-read and store the file, before the notification is read."""
        old = self.index.get(rel)
        if old is None or old.is_deleted or not old.same_file(st) or not any(old.digest) or not self.cas.has(old.digest):
            return None
        self.reused += 1
        return old.digest

    def commit(self, conn: Connection, req: Frame) -> Frame:
        target_raw, staging_raw = req.get(Tag.PATH), req.get(Tag.STAGING)
        if target_raw is None or staging_raw is None:
            raise RequestError(Err.BAD_REQUEST, "COMMIT needs PATH and STAGING")
        rel = self.policy.target(target_raw, allow_root=False)
        staging = self.policy.staging_file(staging_raw)
        target = self.policy.absolute(rel)
        parent = os.path.dirname(rel)
        try:
            stored = self.cas.store_file(os.fsdecode(staging), fsync=False)
        except FileNotFoundError:
            raise RequestError(Err.NOT_FOUND, f"{os.fsdecode(staging)}: staging file vanished") from None
        except (OSError, VriftError) as e:
            raise RequestError(Err.IO_ERROR, f"{os.fsdecode(staging)}: cannot store in the CAS: {_why(e)}") from None
        with self._stripes[zlib.crc32(rel) % STRIPES]:
            try:
                os.rename(staging, target)
            except OSError as e:
                raise RequestError(Err.IO_ERROR, f"{os.fsdecode(target)}: cannot move the staging file "
                                                 f"onto it: {_why(e)}") from None
            try:
                st = os.lstat(target)
                entry = Entry.from_stat(rel, st, stored.digest)
            except OSError as e:
                raise RequestError(Err.IO_ERROR, f"{os.fsdecode(target)}: vanished after commit: {_why(e)}",
                                   MOVED) from None
            future = self.writer.commit(entry, parent, stored.digest if self.cas.fsync else None)
        try:
            generation = future.result()
        except Exception as e:
            raise RequestError(Err.IO_ERROR, f"{os.fsdecode(target)}: index update failed: {_why(e)}", MOVED) from None
        with conn.lock:
            conn.pending_writes.discard(rel)
        return reply(req).add(Tag.DIGEST, stored.digest).add(Tag.SIZE, stored.size).add(Tag.GENERATION, generation)


def settle(index, policy, rels: Iterable[bytes]) -> list[bytes]:
    """Clear DIRTY on each path whose published entry describes what is on disk now; return
    the others (still DIRTY: re-read them later).

    Clients rename into a directory — and set DIRTY on the name and the directory just before —
    while holding a shared flock on that directory (write.c, vrift_place_staging()).  The comparison and the
    clear run under an exclusive flock of the same directory, taken without waiting: a rename is
    then either seen by the comparison, or comes after the clear and sets DIRTY again itself.  A
    single bit cannot tell one writer's DIRTY from another's; this ordering is what keeps a clear
    from erasing the mark of a write the entry does not describe."""
    unsettled: list[bytes] = []
    groups: dict[bytes | None, list[bytes]] = {}
    for rel in rels:
        e = index.get(rel)
        if e is None:
            continue  # no entry: no bit to clear
        lock_dir = rel if (e.flags & layout.F_DIR) else (os.path.dirname(rel) if rel else None)
        groups.setdefault(lock_dir, []).append(rel)
    for lock_dir, group in groups.items():
        fd = -1
        if lock_dir is not None:
            try:
                fd = os.open(policy.absolute(lock_dir), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                fd = -1  # gone or not a directory: nothing can be renamed into it
            if fd >= 0:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:  # a client is between its mark and its rename
                    os.close(fd)
                    unsettled.extend(group)
                    continue
        try:
            confirmed = []
            for rel in group:
                if _on_disk(index, policy, rel):
                    confirmed.append(rel)
                else:
                    unsettled.append(rel)
            index.clear_dirty_many(confirmed)  # still under the flock
        finally:
            if fd >= 0:
                os.close(fd)
    return unsettled


def _on_disk(index, policy, rel: bytes) -> bool:
    e = index.get(rel)
    if e is None:
        return True
    try:
        st = os.lstat(policy.absolute(rel))
    except (FileNotFoundError, NotADirectoryError):
        return e.is_deleted
    except OSError:
        return False
    if e.is_deleted or not e.same_file(st) or (e.flags & layout.F_DIR and e.nlink != st.st_nlink):
        return False
    if e.flags & layout.F_COMPLETE_DIR:  # a miss below it is answered ENOENT: every name must be known
        try:
            names = os.listdir(policy.absolute(rel))
        except OSError:
            return False
        prefix = rel + b"/" if rel else b""
        for name in names:
            if name == _STATE_DIR and not rel:
                continue
            child = index.get(prefix + name)
            if child is None or child.is_deleted:
                return False
    return True


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)
