"""The action table: fingerprints the preload library checks and replays itself
(docs/cache.md, "The action table"; layout: vrift/native/vrift_actions.h).

The daemon keeps, per lookup identity (the ACTION_LOOKUP fields that decide the key and the
PATH search: exe path, cwd, argv, the cache.env variables with PATH, STREAMS, UMASK — the
exact bytes the library sends), the one fingerprint it last recorded or replayed for it,
translated into checks the library can make without hashing:

- a file read: its stat identity (dev, ino, size, mtime_ns, ctime_ns, mode) as it was when the
  daemon's memo gave it the recorded digest; inside the project, a clean VDir entry that
  describes the file on disk and carries the recorded digest passes too (an object a replay
  just put in place, read by the link);
- an absent path: ENOENT (lstat, or stat for a PATH candidate);
- a stat observation: exactly the fields the daemon compares (docs/cache.md);
- a name found through PATH: every earlier candidate absent, the found one an executable
  regular file whose realpath is the recorded one.

Anything else — a directory listing, an error answer, a read of stdin, a plugin's key part,
streams over STREAMS_MAX — is not published: the library then asks the daemon as before.  So
the table can only be stricter than the daemon's own match.

Outputs carry the blob's path relative to the CAS root (from the CAS API), size, mode and a
checksum of the content (vrift_act_sum64, computed here after the blob's BLAKE3 was
verified), which the library checks on what it installs.

The file is a snapshot: rebuilt from the in-memory records, written under a temporary name and
renamed over the table's name, at most every FLUSH_DELAY_S seconds (a cold build's records
reach the table a moment after each END).  The newest MAX_RECORDS identities are kept.
"""
from __future__ import annotations

import logging
import os
import stat as statmod
import struct
import threading
from collections import OrderedDict

from ..vdir import native
from . import search as pathsearch
from .fingerprint import Context, Fingerprint, observation_differs

log = logging.getLogger("vrift.daemon")

# mirrors of vrift/native/vrift_actions.h (tests/build/test_cache_fasthit.py checks them)
MAGIC = 0x56524143
VERSION = 1
NAME_PREFIX = "vrift_actions_"
HEADER_SIZE = 4096
CAS_OFFSET = 128
CAS_MAX = 3968
SLOT = struct.Struct("<QII")
HEADER = struct.Struct("<IIQQIIQQQI")  # up to cas_len; header_sum follows at 60
RECORD = struct.Struct("<IIQIIIIIIQQqqq")
STAMP_OFFSET, STAMP_SIZE = 64, 64  # header bytes the library ignores: which vrift wrote the table
CHECK = struct.Struct("<BBHIIIQQqqq32s")
OUTPUT = struct.Struct("<IIQQII")
CK_FILE, CK_ABSENT, CK_STAT, CK_FOUND = b"F"[0], b"A"[0], b"S"[0], b"Q"[0]
CM_TYPE, CM_PERM, CM_X, CM_SIZE, CM_MTIME, CM_TARGET = 1, 2, 4, 8, 16, 32
OUT_FILE, OUT_DIR = 1, 2

MAX_RECORDS = 8192
MAX_BYTES = 64 << 20
STREAMS_MAX = 64 * 1024
FLUSH_DELAY_S = 0.02
IDENTITY_SKIP = (3, 19, 30)  # PID, ACTION, STDIN: not part of what decides a hit
_FIELD = struct.Struct("<HI")
_TYPE_BITS = {"f": statmod.S_IFREG, "d": statmod.S_IFDIR, "l": statmod.S_IFLNK, "c": statmod.S_IFCHR,
              "b": statmod.S_IFBLK, "p": statmod.S_IFIFO, "s": statmod.S_IFSOCK}


def sum64(data: bytes) -> int:
    return native.lib().vrift_act_checksum64(data, len(data))


def sum32(data: bytes) -> int:
    return native.lib().vrift_act_checksum32(data, len(data))


def key_hash(data: bytes) -> int:
    return native.lib().vrift_act_key_hash(data, len(data))


def identity(fields) -> bytes:
    """The identity bytes of an ACTION_LOOKUP: its fields as they were sent, in order, without
    PID, ACTION and STDIN."""
    return b"".join(_FIELD.pack(t, len(v)) + v for t, v in fields if t not in IDENTITY_SKIP)


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 8)


def _check(kind: int, path: bytes, how: str = "f", mask: int = 0, st: os.stat_result | None = None,
           digest: bytes = b"", extra: bytes = b"", mode: int | None = None, size: int = 0,
           mtime_ns: int = 0) -> bytes:
    if st is not None:
        fields = (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    else:
        fields = (mode or 0, 0, 0, size, mtime_ns, 0)
    head = CHECK.pack(kind, ord(how), mask, len(path), len(extra), *fields, digest.ljust(32, b"\0"))
    return head + _pad(path + b"\0" + extra + b"\0")


class NotExpressible(Exception):
    """This fingerprint cannot be checked by the library exactly: not published."""


def compile_record(fp: Fingerprint, ctx: Context, ident: bytes, search, exe: bytes,
                   exe_digest: bytes) -> bytes:
    """The table record of `fp` for lookups with these identity bytes; raises NotExpressible.
    Call it when `fp` has just been recorded or matched: each file's identity is taken now and
    kept only where the daemon's own digest of it is the recorded one."""
    if fp.stdin is not None or not 0 <= fp.status <= 255:
        raise NotExpressible("reads stdin")
    exe_st = os.stat(exe)
    if ctx.memo.digest(exe, exe_st) != exe_digest:
        raise NotExpressible("the executable changed")
    checks = []
    dirs = pathsearch.search_dirs(*search) if search is not None else None
    for item in fp.inputs:
        kind, stored, digest = item[0], item[1], item[2]
        if kind == "C":
            if os.fsdecode(ctx.root) != digest:
                raise NotExpressible("cwd read in another root")
            continue
        if kind == "P":
            if dirs is None:
                raise NotExpressible("PATH lookup without PATH")
            checks.extend(_path_checks(os.fsencode(stored), dirs, digest, ctx))
            continue
        path = ctx.absolute(stored)
        if kind == "A":
            if os.path.lexists(path):
                raise NotExpressible("no longer absent")
            checks.append(_check(CK_ABSENT, path, "l"))
        elif kind == "S":
            checks.append(_stat_check(stored, path, item[3]))
        elif kind == "R":
            st = os.stat(path)
            if not statmod.S_ISREG(st.st_mode) or ctx.file_digest(path, st).hex() != digest:
                raise NotExpressible("changed")
            x = item[3].get("x") if len(item) > 3 else None
            if x is not None and st.st_mode & 0o111 != x:
                raise NotExpressible("mode changed")
            checks.append(_check(CK_FILE, path, "f", CM_X if x is not None else 0, st, bytes.fromhex(digest)))
        else:  # a directory listing ('D') or anything newer
            raise NotExpressible(f"input kind {kind}")
    outputs = []
    for rel, digest, mode, *rest in fp.outputs:
        path = ctx.root + b"/" + os.fsencode(rel)
        if digest is None:
            outputs.append(OUTPUT.pack(OUT_DIR, mode & 0o7777, 0, 0, len(path), 0) + _pad(path + b"\0\0"))
            continue
        data = ctx.cas.read_bytes(digest)  # verified against its BLAKE3 (BlobCorrupt otherwise)
        blob = os.fsencode(os.path.relpath(ctx.cas.blob_path(digest), ctx.cas.root))
        outputs.append(OUTPUT.pack(OUT_FILE, mode & 0o7777, len(data), sum64(data), len(path), len(blob))
                       + _pad(path + b"\0" + blob + b"\0"))
    streams = b""
    if fp.streams:
        from .fingerprint import unpack_streams

        for fd, data in unpack_streams(ctx.cas.read_bytes(fp.streams)):
            streams += _FIELD.pack(20 if fd == 1 else 21, len(data)) + data
        if len(streams) > STREAMS_MAX:
            raise NotExpressible("streams too large")
    body = (_pad(ident) + b"".join(checks) + b"".join(outputs) + _pad(streams))
    length = RECORD.size + len(body)
    h = key_hash(ident)
    rest = RECORD.pack(length, 0, h, len(ident), len(checks), len(outputs), len(streams), fp.status, 0,
                       exe_st.st_dev, exe_st.st_ino, exe_st.st_size, exe_st.st_mtime_ns, exe_st.st_ctime_ns)[8:] + body
    return struct.pack("<II", length, sum32(rest)) + rest


def _stat_check(stored: str, path: bytes, obs: dict) -> bytes:
    if "e" in obs or obs.get("t") not in _TYPE_BITS:
        raise NotExpressible("an error answer")
    if observation_differs(stored, path, obs) is not None:
        raise NotExpressible("answers differently now")
    mask, mode = CM_TYPE, _TYPE_BITS[obs["t"]]
    if "m" in obs:
        mask |= CM_PERM
        mode |= obs["m"] & 0o7777
    if "x" in obs:
        mask |= CM_X
        mode |= obs["x"] & 0o111
    size = mtime = 0
    if "z" in obs:
        mask, size = mask | CM_SIZE, int(obs["z"])
    if "n" in obs:
        mask, mtime = mask | CM_MTIME, int(obs["n"])
    target = b""
    if "target" in obs:
        mask, target = mask | CM_TARGET, os.fsencode(obs["target"])
    return _check(CK_STAT, path, "l" if obs.get("h") == "l" else "f", mask, mode=mode, size=size, mtime_ns=mtime,
                  extra=target)


def _path_checks(name: bytes, dirs: list[bytes], recorded: str | None, ctx: Context) -> list[bytes]:
    """Where `name` resolves through PATH, as checks: earlier candidates absent (stricter than
    the daemon, which also skips non-executables), the found one executable with the same
    realpath."""
    found = pathsearch.resolve(name, dirs)
    if (None if found is None else ctx.stored(found)) != recorded:
        raise NotExpressible("resolves elsewhere now")
    out = []
    for d in dirs:
        cand = d + b"/" + name
        try:
            st = os.stat(cand)
        except (FileNotFoundError, NotADirectoryError):
            out.append(_check(CK_ABSENT, cand, "f"))
            continue
        if found is not None and statmod.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            out.append(_check(CK_FOUND, cand, "f", extra=os.path.realpath(cand)))
            return out
        raise NotExpressible("a PATH candidate that is not absent")
    return out


def writer_stamp() -> bytes:
    """What a table's records depend on besides the files they check: the table format, the
    action key's version and vrift's own version.  A daemon keeps an earlier daemon's table
    only when its stamp is this one (a vrift whose rules changed starts afresh)."""
    from .. import __version__
    from .key import KEY_VERSION

    return (b"%d|%s|%s" % (VERSION, KEY_VERSION, __version__.encode())).ljust(STAMP_SIZE, b"\0")[:STAMP_SIZE]


def _skip_check(rec: bytes, off: int) -> int:
    c = CHECK.unpack_from(rec, off)
    return off + CHECK.size + len(_pad(b"\0" * (c[3] + 1 + c[4] + 1)))


def parse_outputs(rec: bytes) -> dict[bytes, bytes]:
    """{absolute path: BLAKE3 digest} of a record's file outputs (the digest is the blob's name)."""
    head = RECORD.unpack_from(rec, 0)
    off = RECORD.size + len(_pad(b"\0" * head[3]))
    for _ in range(head[4]):
        off = _skip_check(rec, off)
    out = {}
    for _ in range(head[5]):
        kind, _mode, _size, _sum, plen, blen = OUTPUT.unpack_from(rec, off)
        off += OUTPUT.size
        names = rec[off:off + plen + 1 + blen]
        if kind == OUT_FILE:
            out[names[:plen]] = bytes.fromhex(os.fsdecode(os.path.basename(names[plen + 1:])))
        off += len(_pad(b"\0" * (plen + 1 + blen + 1)))
    return out


def load_records(path: bytes) -> list[tuple[bytes, bytes]]:
    """(identity, record) of every sound record of the table at `path` written by a vrift with
    this stamp, newest last; [] for anything else (no file, another stamp, damage)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    if len(data) < HEADER_SIZE:
        return []
    magic, version, _gen, size, _slots, count, _so, records_offset, records_size, cas_len = HEADER.unpack_from(data, 0)
    if (magic != MAGIC or version != VERSION or size != len(data) or records_offset + records_size > size
            or data[STAMP_OFFSET:STAMP_OFFSET + STAMP_SIZE] != writer_stamp()):
        return []
    out, off, end = [], records_offset, records_offset + records_size
    while off + RECORD.size <= end and len(out) < count:
        length, rsum = struct.unpack_from("<II", data, off)
        if length < RECORD.size or length & 7 or off + length > end:
            break
        rec = data[off:off + length]
        off += length
        if sum32(rec[8:]) != rsum:
            continue  # a damaged record: dropped, the others kept
        ident_len = RECORD.unpack_from(rec, 0)[3]
        if RECORD.size + ident_len > length:
            continue
        try:
            parse_outputs(rec)
        except (struct.error, ValueError):
            continue
        out.append((rec[RECORD.size:RECORD.size + ident_len], rec))
    out.reverse()  # written newest first
    return out


class ActionTable:
    """The records in memory (newest last) and the snapshot file they are written to.

    The file outlives its daemon (an idle daemon exits; the next build's daemon takes the
    table over): every check a record holds is made again by the library at each use, against
    the files themselves, so a record stays as sound as when it was written — provided the
    rules that made it are the same, which the writer stamp says."""

    def __init__(self, path, cas_root):
        self.path = os.fsencode(path)
        self.cas_root = os.fsencode(cas_root)
        self._records: OrderedDict[bytes, bytes] = OrderedDict()  # identity -> record
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._closed = False
        self._written = False  # a snapshot of ours is at self.path (until someone removes it)
        self._fresh: set[bytes] = set()  # identities put since the last snapshot
        self.generation = 0
        self._done = 0  # the generation last written (or given up on)
        self.published = 0
        self.unpublishable = 0
        self.inherited = load_records(self.path)  # an earlier daemon's, if this vrift wrote it
        if self.inherited:
            self._records.update(self.inherited)
            self._written = True
        else:
            self.remove()

    def put(self, ident: bytes, record: bytes | None) -> None:
        """Set (or with None drop) the record of an identity, and schedule a write."""
        with self._lock:
            if self._closed:
                return
            self._records.pop(ident, None)
            self._fresh.add(ident)
            if record is not None:
                self._records[ident] = record
                self.published += 1
                while len(self._records) > MAX_RECORDS:
                    self._records.popitem(last=False)
            else:
                self.unpublishable += 1
            if self._timer is None:
                self._timer = threading.Timer(FLUSH_DELAY_S, self.write)
                self._timer.daemon = True
                self._timer.start()

    def drop(self, ident: bytes) -> None:
        with self._lock:
            present = self._records.pop(ident, None) is not None
        if present:
            self.put(ident, None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()
        self.write()

    def write(self) -> None:
        """Write the snapshot: temporary name in the same directory, then rename."""
        with self._lock:
            self._timer = None
            if self._closed:
                return
            if self._written and not os.path.lexists(self.path):
                # removed behind our back (`vrift cache clear`): only what came since stays
                self._records = OrderedDict((k, v) for k, v in self._records.items() if k in self._fresh)
            self._fresh = set()
            self._written = True
            records = list(self._records.values())
            self.generation += 1
            generation = self.generation
        total = 0
        kept = []
        for rec in reversed(records):  # newest first within the size bound
            if total + len(rec) > MAX_BYTES:
                break
            kept.append(rec)
            total += len(rec)
        slots = 16
        while slots * 7 < len(kept) * 10:
            slots *= 2
        table = bytearray(slots * SLOT.size)
        blob = bytearray()
        mask = slots - 1
        for rec in kept:
            h = struct.unpack_from("<Q", rec, 8)[0]
            i = h & mask
            while SLOT.unpack_from(table, i * SLOT.size)[2] != 0:
                i = (i + 1) & mask
            SLOT.pack_into(table, i * SLOT.size, h, len(blob), len(rec))
            blob += rec
        slots_offset = HEADER_SIZE
        records_offset = slots_offset + len(table)
        size = records_offset + len(blob)
        cas = self.cas_root[:CAS_MAX - 1]
        head = HEADER.pack(MAGIC, VERSION, generation, size, slots, len(kept), slots_offset, records_offset,
                           len(blob), len(cas))
        header = bytearray(HEADER_SIZE)
        header[:len(head)] = head
        struct.pack_into("<I", header, 60, sum32(head) ^ sum32(cas))
        header[STAMP_OFFSET:STAMP_OFFSET + STAMP_SIZE] = writer_stamp()
        header[CAS_OFFSET:CAS_OFFSET + len(cas)] = cas
        tmp = self.path + b".tmp%d" % os.getpid()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(bytes(header) + bytes(table) + bytes(blob))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError as e:
            log.warning("action table %s not written: %s", os.fsdecode(self.path), e)
            try:
                os.unlink(tmp)
            except OSError:
                pass
        finally:
            with self._lock:
                self._done = max(self._done, generation)

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def close(self) -> None:
        """Stop writing; the last snapshot stays for the next daemon of the project."""
        with self._lock:
            pending = self._timer is not None
            if pending:
                self._timer.cancel()
                self._timer = None
        if pending:
            self.write()
        with self._lock:
            self._closed = True

    def stats(self) -> dict:
        with self._lock:
            return {"records": len(self._records), "published": self.published, "inherited": len(self.inherited),
                    "unpublishable": self.unpublishable, "generation": self.generation,
                    "write_pending": self._timer is not None or self._done != self.generation}
