"""The local tier behind the storage interface: the CAS (vrift/cas/store.py) as a BlobStore and
the action cache's LMDB (vrift/cache/store.py) as an EntryStore.

CacheStore already has the EntryStore methods (candidates, put, counters) under those names;
the CAS keeps its own names (store_bytes, store_file, materialize, has, sync) and LocalBlobs
maps the protocol onto them, so existing callers are untouched."""
from __future__ import annotations

import os
from collections.abc import Iterable

from ..cache.store import CacheStore
from ..cas.store import CAS, CASError


class LocalBlobs:
    """The user's CAS as a BlobStore.  A blob stored under a digest that is not its content's is
    refused: the CAS names by content, so the mismatch can only be a caller's mistake or damage."""

    def __init__(self, cas: CAS):
        self.cas = cas

    def has_many(self, digests: Iterable[bytes]) -> set[bytes]:
        return {d for d in digests if self.cas.has(d)}

    def put_bytes(self, digest: bytes, data: bytes) -> None:
        got = self.cas.store_bytes(data).digest
        if got != digest:
            raise CASError(f"blob {digest.hex()}: its content hashes to {got.hex()}")

    def put_file(self, digest: bytes, path) -> None:
        got = self.cas.store_file(path).digest
        if got != digest:
            raise CASError(f"{os.fsdecode(path)}: hashes to {got.hex()}, not {digest.hex()}")

    def get_bytes(self, digest: bytes) -> bytes | None:
        try:
            return self.cas.read_bytes(digest)
        except CASError:
            return None

    def fetch(self, digest: bytes, dest) -> bool:
        if not self.cas.has(digest):
            return False
        self.cas.materialize(digest, dest)
        return True

    def flush(self) -> None:
        self.cas.sync()


def local_entries(store: CacheStore) -> CacheStore:
    """The action cache is its own EntryStore (see the module docstring)."""
    return store
