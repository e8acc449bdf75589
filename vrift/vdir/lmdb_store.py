"""The cold tier of one project index: an LMDB environment under db/<project_id>/ (SPEC §4.4).

Named databases:
    vdir_entries   key: b"/" + path relative to the root     value: layout.RECORD (112 bytes)
                   (LMDB keys are 1..511 bytes: a longer path is filed under b"#" + its BLAKE3
                   digest and its value is the record followed by the path)
                   (the "/" also gives the root's entry, path b"", a key: LMDB has no empty keys)
    metadata       generation, entry_count (u64 LE), project_root (bytes), format_version (u32 LE)

The environment is always opened without LMDB's own fsync; the index calls `sync()` where its
durability mode promises it.  That keeps one set of open flags per process (LMDB forbids two
handles on one environment in a process, so `lmdb_env` shares the handle).

LMDB reads through a shared mapping of data.mdb; what a read or a write looked at stays in the
process's resident set until released (`release_pages`, after each chunk of a write and while
the open loads every record), or a 10^6-entry index carried its whole file, ~260 MB, in RSS.
"""
from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import blake3
import lmdb

from ..errors import VriftError
from .. import lmdb_env
from . import layout, native
from .entry import Entry

FORMAT_VERSION = 1
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")

MAX_PLAIN_KEY = 500
# entries written between two releases of the map's resident pages (release_pages; records()
# reads 64 times as many, in key order): what LMDB touches in between stays resident, a few MB
RELEASE_EVERY = 512


def _key(path: bytes) -> bytes:
    return b"/" + path if len(path) < MAX_PLAIN_KEY else b"#" + blake3.blake3(path).digest()


def _value(e: Entry) -> bytes:
    record = e.pack_record(e.flags & ~layout.F_DIRTY)
    return record if len(e.path) < MAX_PLAIN_KEY else record + e.path


def _decode(key: bytes, value: bytes) -> Entry:
    if key[:1] == b"#":
        return Entry.unpack_record(value[layout.RECORD_SIZE:], value[:layout.RECORD_SIZE])
    return Entry.unpack_record(key[1:], value)


class LmdbStore:
    def __init__(self, path: Path, mapsize_gb: float = 10, readonly: bool = False):
        self.path = Path(path)
        self.mapsize_gb = mapsize_gb
        if readonly and not (self.path / "data.mdb").exists():
            raise VriftError(f"LMDB {self.path}: no index here (run `vrift ingest`)")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.env = lmdb_env.acquire(self.path, "LMDB", readonly=readonly, map_size=int(mapsize_gb * 2**30),
                                    max_dbs=4, sync=False, metasync=False, readahead=False, max_readers=256)
        try:
            self.entries_db = self.env.open_db(b"vdir_entries", create=not readonly)
            self.meta_db = self.env.open_db(b"metadata", create=not readonly)
        except lmdb.Error as e:
            lmdb_env.release(self.env)
            raise VriftError(f"LMDB {self.path}: {e}") from e
        self.syncs = 0
        self._unreleased = 0  # entries written since the last release_pages

    # ------------------------------------------------------------------ reads
    def meta(self) -> dict:
        with self.env.begin(db=self.meta_db) as txn:
            raw = {k: v for k, v in txn.cursor()}
        version = U32.unpack(raw[b"format_version"])[0] if b"format_version" in raw else FORMAT_VERSION
        if version != FORMAT_VERSION:
            raise VriftError(f"LMDB {self.path}: format version {version}, this vrift reads {FORMAT_VERSION}")
        return {
            "generation": U64.unpack(raw[b"generation"])[0] if b"generation" in raw else 0,
            "entry_count": U64.unpack(raw[b"entry_count"])[0] if b"entry_count" in raw else 0,
            "project_root": raw.get(b"project_root", b"").decode("utf-8", "surrogateescape"),
            "format_version": version,
        }

    def get(self, rel: bytes) -> Entry | None:
        key = _key(rel)
        with self.env.begin(db=self.entries_db) as txn:
            data = txn.get(key)
        return None if data is None else _decode(key, data)

    def records(self) -> Iterator[tuple[bytes, bytes]]:
        """(path, layout.RECORD bytes) of every entry from one consistent snapshot."""
        n = 0
        with self.env.begin(db=self.entries_db) as txn:
            for key, value in txn.cursor():
                if key[:1] == b"#":
                    yield value[layout.RECORD_SIZE:], value[:layout.RECORD_SIZE]
                else:
                    yield key[1:], value
                n += 1
                if n % (64 * RELEASE_EVERY) == 0:
                    self.release_pages()  # values are copies: nothing refers into the map
        self.release_pages()

    def entries(self) -> Iterator[Entry]:
        """Every entry from one consistent snapshot (path order, long paths last)."""
        with self.env.begin(db=self.entries_db) as txn:
            for key, value in txn.cursor():
                yield _decode(key, value)

    # ------------------------------------------------------------------ writes
    def write(self, changes: Iterable[Entry], generation: int, root: str, sync: bool) -> None:
        """Put or delete `changes` and record `generation`, in one transaction; with `sync`,
        durable when this returns.  A full map aborts the transaction: nothing is half-written."""
        try:
            with self.env.begin(write=True) as txn:
                last = {_key(e.path): None if e.is_deleted else e for e in changes}  # the last change wins
                for n, key in enumerate((k for k, e in last.items() if e is None), 1):
                    txn.delete(key, db=self.entries_db)
                    if n % RELEASE_EVERY == 0:
                        self.release_pages()
                # the puts in one C loop (putmulti) rather than a Python call each, a chunk at a
                # time: keys spread over the tree (a first ingest's directories, applied last)
                # fault a page each, and the kernel maps 16 neighbours with it (fault-around),
                # so one batch could make the whole file resident
                puts = [(k, _value(e)) for k, e in last.items() if e is not None]
                cursor = txn.cursor(db=self.entries_db)
                for at in range(0, len(puts), RELEASE_EVERY):
                    if at:
                        self.release_pages()
                    cursor.putmulti(puts[at:at + RELEASE_EVERY])
                count = txn.stat(self.entries_db)["entries"]
                txn.put(b"generation", U64.pack(generation), db=self.meta_db)
                txn.put(b"entry_count", U64.pack(count), db=self.meta_db)
                txn.put(b"project_root", os.fsencode(root), db=self.meta_db)
                txn.put(b"format_version", U32.pack(FORMAT_VERSION), db=self.meta_db)
        except lmdb.MapFullError as e:
            raise VriftError(f"LMDB {self.path}: map full ({self.mapsize_gb:g} GiB); raise lmdb_mapsize_gb "
                             f"(VRIFT_LMDB_MAPSIZE_GB)") from e
        except lmdb.DiskError as e:
            raise VriftError(f"LMDB {self.path}: disk error: {e}") from e
        except lmdb.Error as e:
            raise VriftError(f"LMDB {self.path}: write failed: {e}") from e
        # small writes (a commit's few paths, in sync and async modes) release once they add up:
        # reading /proc/self/maps costs ~0.3 ms
        self._unreleased += len(last)
        if self._unreleased >= RELEASE_EVERY:
            self.release_pages()
        if sync:
            self.sync()

    def release_pages(self) -> None:
        """Take the data file's pages out of this process's resident set.  LMDB reads through a
        shared mapping of the file, and every page a read or a write looked at stays resident
        (RssFile) while the environment is open: after loading 10^6 entries, the whole file,
        ~260 MB.  The bytes stay in the page cache; the next access maps them again."""
        self._unreleased = 0
        data = self.path / "data.mdb"
        try:
            st = os.stat(data)
            with open("/proc/self/maps", "rb") as f:
                maps = f.read().splitlines()
        except OSError:
            return
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}".encode()
        real = os.fsencode(os.path.realpath(data))  # overlay filesystems show another device
        for line in maps:
            fields = line.split(maxsplit=5)
            # start-end perms offset dev inode path: LMDB maps the file once, MAP_SHARED
            if len(fields) == 6 and fields[4] == b"%d" % st.st_ino and (fields[3] == dev or fields[5] == real):
                start, end = (int(x, 16) for x in fields[0].split(b"-"))
                native.drop_resident(start, min(end - start, max(0, st.st_size - int(fields[2], 16))))

    def sync(self) -> None:
        try:
            self.env.sync(True)
        except lmdb.Error as e:
            raise VriftError(f"LMDB {self.path}: sync failed: {e}") from e
        self.syncs += 1

    def size_bytes(self) -> int:
        info = self.env.info()
        return (info["last_pgno"] + 1) * self.env.stat()["psize"]

    def write_description(self, root: str, project_id: str) -> None:
        """metadata.json beside the environment: lets gc and status name a project without LMDB."""
        target = self.path / "metadata.json"
        data = {"project_root": root, "project_id": project_id, "format_version": FORMAT_VERSION}
        try:
            if json.loads(target.read_text()) == data:
                return
        except (OSError, ValueError):
            pass
        data_s = json.dumps(data, indent=2) + "\n"
        tmp = target.with_name(f".metadata.{os.getpid()}.{time.monotonic_ns()}")
        tmp.write_text(data_s)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)

    def close(self) -> None:
        if self.env is not None:
            lmdb_env.release(self.env)
            self.env = None
