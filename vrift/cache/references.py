"""Blobs the action cache refers to, for `vrift gc` (vrift/maintenance/gc.py asks this module)."""
from __future__ import annotations

from ..errors import VriftError
from ..home import Home
from .fingerprint import Fingerprint
from .store import CacheStore, cache_dir


def live_digests(home: Home) -> set[bytes]:
    if not (cache_dir(home) / "data.mdb").exists():
        return set()
    keep: set[bytes] = set()
    try:
        with CacheStore(home) as store:
            for _fid, data in store.iter_fingerprints():
                keep |= Fingerprint.from_json(data).digests()
    except (ValueError, KeyError) as e:
        # an unreadable entry must stop gc, not lose the blobs of the readable ones
        raise VriftError(f"action cache {cache_dir(home)}: unreadable entry ({e}); gc refuses to guess") from e
    return keep
