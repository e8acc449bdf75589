"""The action cache's entries: one LMDB environment, `$VRIFT_HOME/cache/`, shared by every
project of a user (docs/cache.md).

    actions       key (32 bytes)  -> fingerprint ids (32 bytes each), newest first, at most MAX_FINGERPRINTS
    fingerprints  id (32 bytes)   -> the fingerprint as JSON (fingerprint.Fingerprint.to_json)
    meta          b"counters"     -> JSON totals (hits, misses, uncacheable by reason, bytes replayed…)
                  b"last_hit"     -> JSON {id hex: unix time}

A fingerprint and the key's list are written in one transaction: a crash leaves the entry
whole or absent.  The id is BLAKE3 of the fingerprint's content, so two projects recording the
same action store one fingerprint.  Blobs (outputs, the stdout/stderr chunks) live in the shared CAS and
are stored before the transaction that names them.

The environment syncs data on commit but not the meta page (LMDB's `metasync=False`): a system
crash may forget the last entries, never corrupt the others.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb

from ..errors import VriftError
from ..home import Home
from .. import lmdb_env

MAX_FINGERPRINTS = 16  # per key: variants beyond this are forgotten, oldest first
DIGEST = 32
MAP_SIZE = 8 << 30

def cache_dir(home: Home) -> Path:
    return home.root / "cache"


def merge_counters(into: dict, delta: dict) -> dict:
    for k, v in delta.items():
        if isinstance(v, dict):
            merge_counters(into.setdefault(k, {}), v)
        elif isinstance(v, (int, float)):
            into[k] = into.get(k, 0) + v
    return into


class CacheStore:
    def __init__(self, home: Home, readonly: bool = False):
        self.path = cache_dir(home)
        if readonly and not (self.path / "data.mdb").exists():
            raise VriftError(f"{self.path}: the action cache is empty (nothing recorded yet)")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # always a read-write handle: a read-only one could not be shared with the daemon's
        self.env = lmdb_env.acquire(self.path, "action cache", map_size=MAP_SIZE, max_dbs=4, sync=True,
                                    metasync=False, readahead=False, max_readers=512)
        try:
            self.actions = self.env.open_db(b"actions")
            self.fingerprints = self.env.open_db(b"fingerprints")
            self.meta = self.env.open_db(b"meta")
        except lmdb.Error as e:
            lmdb_env.release(self.env)
            raise VriftError(f"action cache {self.path}: {e}") from e
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            lmdb_env.release(self.env)

    def __enter__(self) -> "CacheStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reads ----------------------------------------------------------------------------
    def fingerprint_ids(self, key: bytes) -> list[bytes]:
        with self.env.begin(db=self.actions) as txn:
            raw = txn.get(key)
        return _split(raw)

    def fingerprint(self, fid: bytes) -> dict | None:
        with self.env.begin(db=self.fingerprints) as txn:
            raw = txn.get(fid)
        return None if raw is None else json.loads(raw)

    def candidates(self, key: bytes) -> list[tuple[bytes, dict]]:
        """The key's fingerprints, newest first, in one read transaction."""
        with self.env.begin() as txn:
            ids = _split(txn.get(key, db=self.actions))
            out = []
            for fid in ids:
                raw = txn.get(fid, db=self.fingerprints)
                if raw is not None:
                    out.append((fid, json.loads(raw)))
        return out

    def keys(self) -> Iterator[tuple[bytes, list[bytes]]]:
        with self.env.begin(db=self.actions) as txn:
            for k, v in txn.cursor():
                yield bytes(k), _split(v)

    def iter_fingerprints(self) -> Iterator[tuple[bytes, dict]]:
        with self.env.begin(db=self.fingerprints) as txn:
            for k, v in txn.cursor():
                yield bytes(k), json.loads(v)

    def iter_raw_fingerprints(self) -> Iterator[tuple[bytes, bytes]]:
        """(id, stored JSON bytes) of every fingerprint (eviction weighs the stored size)."""
        with self.env.begin(db=self.fingerprints) as txn:
            for k, v in txn.cursor():
                yield bytes(k), bytes(v)

    def named_digests(self) -> set[bytes]:
        """Every blob digest a fingerprint names."""
        from .fingerprint import Fingerprint

        out: set[bytes] = set()
        for _, data in self.iter_fingerprints():
            out |= Fingerprint.from_json(data).digests()
        return out

    def find_keys(self, prefix_hex: str) -> list[bytes]:
        """Keys whose hex starts with `prefix_hex` (at least 4 characters)."""
        prefix_hex = prefix_hex.lower()
        try:
            start = bytes.fromhex(prefix_hex[:len(prefix_hex) // 2 * 2])
        except ValueError:
            raise VriftError(f"not a key (hex digits): {prefix_hex!r}") from None
        found = []
        with self.env.begin(db=self.actions) as txn:
            cur = txn.cursor()
            if cur.set_range(start):
                for k in cur.iternext(values=False):
                    k = bytes(k)
                    if not k.startswith(start):
                        break
                    if k.hex().startswith(prefix_hex):
                        found.append(k)
        return found

    def counters(self) -> dict:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"counters")
        return json.loads(raw) if raw else {}

    def stats(self) -> dict:
        with self.env.begin() as txn:
            keys = txn.stat(self.actions)["entries"]
            fps = txn.stat(self.fingerprints)["entries"]
        size = 0
        for _, fp in self.iter_fingerprints():
            size += int(fp.get("size", 0))
        info = self.env.info()
        return {"path": str(self.path), "keys": keys, "fingerprints": fps, "bytes": size,
                "lmdb_bytes": info["last_pgno"] * self.env.stat()["psize"], "counters": self.counters()}

    # -- writes ---------------------------------------------------------------------------
    def put(self, key: bytes, fid: bytes, fingerprint: dict, counters: dict | None = None) -> None:
        """Store one fingerprint under `key` (newest first), with counters, in one transaction."""
        data = json.dumps(fingerprint, separators=(",", ":")).encode()
        with self.env.begin(write=True) as txn:
            txn.put(fid, data, db=self.fingerprints)
            ids = [fid] + [i for i in _split(txn.get(key, db=self.actions)) if i != fid]
            dropped = ids[MAX_FINGERPRINTS:]
            txn.put(key, b"".join(ids[:MAX_FINGERPRINTS]), db=self.actions)
            for old in dropped:
                if not self._referenced(txn, old, skip=key):
                    txn.delete(old, db=self.fingerprints)
            if counters:
                self._add_counters(txn, counters)

    def add(self, counters: dict | None = None, last_hit: dict[bytes, float] | None = None) -> None:
        """Fold in-memory counters and hit times into the stored ones (one transaction)."""
        if not counters and not last_hit:
            return
        with self.env.begin(write=True) as txn:
            if counters:
                self._add_counters(txn, counters)
            if last_hit:
                raw = txn.get(b"last_hit", db=self.meta)
                hits = json.loads(raw) if raw else {}
                hits.update({fid.hex(): t for fid, t in last_hit.items()})
                txn.put(b"last_hit", json.dumps(hits).encode(), db=self.meta)

    def zero(self) -> None:
        """Reset the totals (hits, misses, time saved…) to zero, as `ccache -z` does; entries
        and their hit times stay."""
        with self.env.begin(write=True) as txn:
            txn.put(b"counters", json.dumps({"zeroed_at": now()}).encode(), db=self.meta)

    def last_hits(self) -> dict[str, float]:
        with self.env.begin(db=self.meta) as txn:
            raw = txn.get(b"last_hit")
        return json.loads(raw) if raw else {}

    def _add_counters(self, txn, delta: dict) -> None:
        raw = txn.get(b"counters", db=self.meta)
        total = json.loads(raw) if raw else {}
        txn.put(b"counters", json.dumps(merge_counters(total, delta)).encode(), db=self.meta)

    def _referenced(self, txn, fid: bytes, skip: bytes) -> bool:
        # another key may list the same fingerprint (identical content): a linear scan is fine,
        # it runs only when a key overflows MAX_FINGERPRINTS
        for k, v in txn.cursor(db=self.actions):
            if bytes(k) != skip and fid in _split(v):
                return True
        return False

    def delete_fingerprints(self, fids) -> int:
        """Remove these fingerprints from every key that lists them, and their hit times, in one
        transaction; returns how many keys were left empty (and removed)."""
        gone = set(fids)
        if not gone:
            return 0
        emptied = 0
        with self.env.begin(write=True) as txn:
            for k, v in list(txn.cursor(db=self.actions)):
                ids = _split(v)
                kept = [i for i in ids if i not in gone]
                if len(kept) == len(ids):
                    continue
                if kept:
                    txn.put(bytes(k), b"".join(kept), db=self.actions)
                else:
                    txn.delete(bytes(k), db=self.actions)
                    emptied += 1
            for fid in gone:
                txn.delete(fid, db=self.fingerprints)
            raw = txn.get(b"last_hit", db=self.meta)
            if raw:
                hits = json.loads(raw)
                for fid in gone:
                    hits.pop(fid.hex(), None)
                txn.put(b"last_hit", json.dumps(hits).encode(), db=self.meta)
        return emptied

    def clear(self) -> dict:
        """Remove every entry and the counters; returns what was removed."""
        with self.env.begin(write=True) as txn:
            keys = txn.stat(self.actions)["entries"]
            fps = txn.stat(self.fingerprints)["entries"]
            txn.drop(self.actions, delete=False)
            txn.drop(self.fingerprints, delete=False)
            txn.drop(self.meta, delete=False)
        return {"keys": keys, "fingerprints": fps}


def _split(raw) -> list[bytes]:
    if not raw:
        return []
    raw = bytes(raw)
    return [raw[i:i + DIGEST] for i in range(0, len(raw) - DIGEST + 1, DIGEST)]


def now() -> float:
    return round(time.time(), 3)
