"""The action cache's size and its limit, `cache.max_size` (docs/cache.md "Size and eviction").

The size is what the cache alone keeps on disk: the bytes of its entries (the fingerprints as
stored) plus the disk blocks (st_blocks * 512, as `du` counts them) of every blob that an entry
names and no project index does.  A blob shared with an index stays when the entry goes, so it
does not count.

Beyond the limit the least recently used fingerprints go first (last use: the latest hit, else
when it was recorded), each with the blobs only it held, until the size is within the limit.
A blob is unlinked only when, after the entries are gone, neither a remaining entry nor a
project index names it.  A build that reuses such a blob in the same instant loses nothing
but a replay: an entry whose blob is missing fails to materialise and its command runs.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..home import Home
from .fingerprint import Fingerprint
from .store import CacheStore

BLOCK = 512


@dataclass
class Usage:
    """What the cache holds now, with what eviction needs to choose."""

    entries: list = field(default_factory=list)  # (last use, fid, entry bytes, digests) oldest first
    blob_disk: dict = field(default_factory=dict)  # digest -> disk bytes, blobs only the cache holds
    entry_bytes: int = 0

    @property
    def blob_bytes(self) -> int:
        return sum(self.blob_disk.values())

    @property
    def size_bytes(self) -> int:
        return self.entry_bytes + self.blob_bytes


@dataclass
class EvictReport:
    size_before: int = 0
    size_after: int = 0
    max_size: int = 0
    evicted: int = 0       # fingerprints removed
    keys_removed: int = 0  # keys left without a fingerprint
    blobs_removed: int = 0
    bytes_removed: int = 0  # disk bytes of the removed blobs

    def to_json(self) -> dict:
        return dict(self.__dict__)


def disk_bytes(path) -> int:
    """Bytes the file takes on disk (0 when it is gone)."""
    try:
        return os.stat(path).st_blocks * BLOCK
    except OSError:
        return 0


def usage(store: CacheStore, cas, index_refs: set[bytes] | None = None) -> Usage:
    """The cache's entries and blobs; `index_refs` (digests a project index names) are not the
    cache's own.  Without them every blob an entry names counts (an upper bound, cheap)."""
    last_hit = store.last_hits()
    out = Usage()
    for fid, raw in store.iter_raw_fingerprints():
        data = Fingerprint.from_json(json.loads(raw))
        digests = data.digests()
        last = max(float(last_hit.get(fid.hex(), 0)), data.created)
        out.entries.append((last, fid, len(raw) + len(fid), digests))
        out.entry_bytes += len(raw) + len(fid)
        for d in digests:
            if d not in out.blob_disk and (index_refs is None or d not in index_refs):
                out.blob_disk[d] = disk_bytes(cas.blob_path(d))
    out.entries.sort(key=lambda e: (e[0], e[1]))
    return out


def size(home: Home, store: CacheStore, cas) -> int:
    """The cache's size as `vrift cache stats` reports it (project indexes read)."""
    return usage(store, cas, _index_refs(home)).size_bytes


def _index_refs(home: Home) -> set[bytes]:
    from ..vdir import readonly

    return readonly.live_digests(home)


def evict(home: Home, store: CacheStore, cas, max_bytes: int, progress: bool = False,
          index_refs: set[bytes] | None = None, delete: bool = True) -> EvictReport:
    """Remove least recently used entries until the cache fits in `max_bytes` (0: no limit);
    with delete=False only say what would go."""
    from ..progress import Progress

    report = EvictReport(max_size=max_bytes)
    if max_bytes <= 0:
        return report
    rough = usage(store, cas)  # every named blob counted: when even that fits, nothing to read
    report.size_before = report.size_after = rough.size_bytes
    if rough.size_bytes <= max_bytes:
        return report
    refs = _index_refs(home) if index_refs is None else index_refs
    now = usage(store, cas, refs)
    report.size_before = now.size_bytes
    # how many times each own blob is named: it is freed with the last entry naming it
    named: dict[bytes, int] = {}
    for _, _, _, digests in now.entries:
        for d in digests:
            if d in now.blob_disk:
                named[d] = named.get(d, 0) + 1
    total = now.size_bytes
    victims: list[bytes] = []
    freed: set[bytes] = set()
    for _, fid, nbytes, digests in now.entries:
        if total <= max_bytes:
            break
        victims.append(fid)
        total -= nbytes
        for d in digests:
            if d in named:
                named[d] -= 1
                if named[d] == 0:
                    freed.add(d)
                    total -= now.blob_disk[d]
    report.evicted = len(victims)
    report.size_after = max(0, total)
    if not delete:
        report.blobs_removed = len(freed)
        report.bytes_removed = sum(now.blob_disk[d] for d in freed)
        return report
    with Progress(len(victims) + len(freed), "cache eviction", enabled=progress) as bar:
        report.keys_removed = store.delete_fingerprints(victims)
        bar.advance(len(victims))
        still = store.named_digests()  # after the delete: what the remaining entries need
        for d in sorted(freed):
            bar.advance()
            if d in still or d in refs:
                continue
            nbytes = disk_bytes(cas.blob_path(d))
            if cas.remove(d):
                report.blobs_removed += 1
                report.bytes_removed += nbytes
    return report
