"""One LMDB environment handle per path and process, shared and reference-counted.

LMDB forbids opening the same environment twice in one process (locks would be lost), yet
several parts of a process open the same one: a project index and a read-only view of it, the
action cache from a daemon thread and a CLI command.  `acquire` returns the open handle when
there is one; `release` closes it with the last user."""
from __future__ import annotations

import logging
import os
import struct
import threading
import time
from pathlib import Path

import lmdb

from .errors import VriftError

_ENVS: dict[str, list] = {}  # realpath -> [env, refcount]
_LOCK = threading.Lock()
log = logging.getLogger("vrift.lmdb")

# LMDB's on-disk meta page (lmdb.h / mdb.c, format 1): a 16-byte page header, then MDB_meta:
# magic u32, version u32, address, mapsize, two MDB_db of 48 bytes (the first one's md_pad is
# the page size), last_pg, txnid.
_MAGIC = 0xBEEFC0DE
_META = struct.Struct("<16xII8x8xI44x48xQQ")


def damage(path: Path) -> str | None:
    """Why <path>/data.mdb cannot be mapped safely, or None.  A file shorter than its last
    page (truncated by a crash of the disk, a full disk, a user) makes LMDB's reads SIGBUS;
    this reads the meta pages with pread, which cannot fault.  Page headers are not checked:
    a page on LMDB's free list keeps whatever it held (the middle of a freed overflow run has
    no header at all), so a healthy, busy file fails such a check — and a false "damaged"
    would throw a good index or the whole action cache away."""
    data = Path(path) / "data.mdb"
    try:
        fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None  # created, never written: LMDB initialises it
        metas = []
        for at in (0, 4096, 8192, 16384, 65536):  # the second meta page sits one page in
            raw = os.pread(fd, _META.size, at)
            if len(raw) == _META.size:
                magic, version, psize, last_pg, txnid = _META.unpack(raw)
                if magic == _MAGIC and version == 1 and psize in (4096, 8192, 16384, 65536) and (at in (0, psize)):
                    metas.append((txnid, psize, last_pg))
        if not metas:
            return f"no valid meta page ({size:,} bytes): not an LMDB file or its start is damaged"
        _, psize, last_pg = max(metas)
        need = (last_pg + 1) * psize
        if size < need:
            return f"truncated: {size:,} bytes, its last page ends at {need:,}"
        return None
    finally:
        os.close(fd)


def move_aside(path: Path, what: str, problem: str) -> Path:
    """Rename a damaged data.mdb out of the way (kept for a post-mortem) and drop its lock file."""
    data = Path(path) / "data.mdb"
    aside = data.with_name(f"data.mdb.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.rename(data, aside)
    try:
        os.unlink(Path(path) / "lock.mdb")
    except FileNotFoundError:
        pass
    log.warning("%s %s: %s; moved to %s and started afresh", what, path, problem, aside.name)
    return aside


def acquire(path: Path, what: str, *, readonly: bool = False, **options) -> lmdb.Environment:
    """The environment at `path` (`what` names it in errors); `options` go to `lmdb.open`
    when this call is the one that opens it.  A writer may not share a read-only handle."""
    key = os.path.realpath(path)
    with _LOCK:
        held = _ENVS.get(key)
        if held is not None:
            if not readonly and held[0].flags()["readonly"]:
                raise VriftError(f"{what} {path}: already open read-only in this process")
            held[1] += 1
            return held[0]
        problem = damage(path)
        if problem is not None:
            if readonly:
                raise VriftError(f"{what} {path}/data.mdb is damaged: {problem} "
                                 f"(its next writer — the daemon, `vrift ingest` — moves it aside and rebuilds)")
            move_aside(path, what, problem)
        try:
            env = lmdb.open(str(path), readonly=readonly, create=not readonly, subdir=True, lock=True,
                            mode=0o600, **options)
        except lmdb.Error as e:
            raise VriftError(f"{what} {path}: cannot open: {e}") from e
        _ENVS[key] = [env, 1]
        return env


def release(env: lmdb.Environment) -> None:
    with _LOCK:
        for key, held in list(_ENVS.items()):
            if held[0] is env:
                held[1] -= 1
                if held[1] == 0:
                    del _ENVS[key]
                    env.close()
                return
