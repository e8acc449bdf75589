"""COMMIT, server side (SPEC §5.4): hash and store the staging file, move it onto the real path,
record and publish the entry per durability mode, clear DIRTY, acknowledge.

Hashing, storing and the rename run on the client's connection thread (they release the GIL);
only the index update goes through the writer thread, where concurrent commits are grouped.
A per-path lock keeps "rename, then stat" of two commits of the same path from interleaving,
so the entry applied last always describes the file that is on disk.
"""
from __future__ import annotations

import os
import threading
import zlib

from ..project import VriftError
from ..vdir.entry import Entry
from .listener import Connection, RequestError
from .protocol import Err, Frame, Tag, reply

STRIPES = 64
MOVED = 1  # ERROR FLAGS bit: the staging file was already renamed onto the real path


class CommitService:
    def __init__(self, daemon):
        self.daemon = daemon
        self.policy = daemon.policy
        self.cas = daemon.cas
        self._stripes = [threading.Lock() for _ in range(STRIPES)]

    def commit(self, conn: Connection, req: Frame) -> Frame:
        target_raw, staging_raw = req.get(Tag.PATH), req.get(Tag.STAGING)
        if target_raw is None or staging_raw is None:
            raise RequestError(Err.BAD_REQUEST, "COMMIT needs PATH and STAGING")
        rel = self.policy.target(target_raw, allow_root=False)
        staging = self.policy.staging_file(staging_raw)
        target = self.policy.absolute(rel)
        parent = os.path.dirname(rel)
        try:
            stored = self.cas.store_file(os.fsdecode(staging))
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
            future = self.daemon.writer.commit(entry, parent)
        try:
            generation = future.result()
        except Exception as e:
            raise RequestError(Err.IO_ERROR, f"{os.fsdecode(target)}: index update failed: {_why(e)}", MOVED) from None
        with conn.lock:
            conn.pending_writes.discard(rel)
        return reply(req).add(Tag.DIGEST, stored.digest).add(Tag.SIZE, stored.size).add(Tag.GENERATION, generation)


def _why(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)
