"""The storage interface, in the manner of ccache's Storage and sccache's multi-level cache.

Two protocols.  A BlobStore keeps blobs named by their BLAKE3 digest; an EntryStore keeps, for
an action key, the fingerprints recorded under it (newest first).  The local CAS and action
cache implement them (local.py); a remote backend is one module with one class implementing
`RemoteBackend` below, registered in spec.SCHEMES.

Remote backends move opaque payloads: `pack()` frames a blob (zstd when large), the tiers verify
every blob they fetch against its BLAKE3 digest, so a backend never has to be trusted for
integrity, only for availability.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Protocol, runtime_checkable


class RemoteError(Exception):
    """A remote failed; `kind` is what the counters and the circuit breaker see."""

    kind = "error"


class RemoteTimeout(RemoteError):
    kind = "timeout"


class RemoteRefused(RemoteError):
    """Authentication or permission refused (a wrong password, a read-only token)."""

    kind = "refused"


class RemoteFull(RemoteError):
    """The server would not take more data (Redis maxmemory with noeviction, HTTP 507/413)."""

    kind = "full"


@runtime_checkable
class BlobStore(Protocol):
    """Blobs by BLAKE3 digest (32 bytes)."""

    def has_many(self, digests: Iterable[bytes]) -> set[bytes]: ...

    def put_bytes(self, digest: bytes, data: bytes) -> None: ...

    def put_file(self, digest: bytes, path: os.PathLike | str) -> None: ...

    def fetch(self, digest: bytes, dest: os.PathLike | str) -> bool:
        """Write the blob to `dest` (verified); False when the store does not have it."""

    def flush(self) -> None: ...


@runtime_checkable
class EntryStore(Protocol):
    """Action entries: key (32 bytes) -> [(fingerprint id, fingerprint JSON)], newest first."""

    def candidates(self, key: bytes) -> list[tuple[bytes, dict]]: ...

    def put(self, key: bytes, fid: bytes, fingerprint: dict, counters: dict | None = None) -> None: ...

    def counters(self) -> dict: ...


class RemoteBackend(Protocol):
    """What one remote server offers: named byte strings in two namespaces, `cas` and `ac`.

    Names are lowercase hex.  `get` returns None for an absent name; every failure raises a
    RemoteError subclass.  A backend may choose the names its blobs are stored under
    (`blob_name`): the HTTP backend names them by SHA-256 of the payload so bazel-remote's
    validation accepts them; the tiers record the name in the remote entry."""

    url: str              # for messages: the URL with any password masked

    def blob_name(self, digest: bytes, payload: bytes) -> str: ...

    def has(self, namespace: str, names: list[str]) -> set[str]: ...

    def get(self, namespace: str, name: str) -> bytes | None: ...

    def put(self, namespace: str, name: str, payload: bytes) -> None: ...

    def close(self) -> None: ...
