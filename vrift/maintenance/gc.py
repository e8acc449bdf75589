"""Garbage collection: remove blobs that nothing references, once they are old enough.

References are the digests of every project index plus those of the action cache.  The store
does not know where those live: gc sits above it, the indexes and the cache (vrift/maintenance/),
and `collect` takes the references as `referenced`, or gathers them itself when not given.  If
the project indexes cannot be read, gc refuses rather than guessing.

The grace period is counted from a blob's mtime: a new blob has a fresh one and a dedup hit
refreshes it (at most hourly), so content just stored or just reused by a build whose index
entry is not yet written is kept.  With a grace of 0 a gc running next to a build can remove a
blob that build is about to refer to; do that only when nothing runs.  Dry run by default.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..home import Home
from ..cache import references
from ..cas.store import CAS
from ..progress import Progress
from ..vdir import readonly

STALE_TEMP_S = 3600


@dataclass
class GCReport:
    referenced: int = 0          # blobs present and referenced
    unreferenced: int = 0        # blobs present and not referenced (young or old)
    removable: int = 0           # unreferenced and older than the grace period
    bytes_removable: int = 0
    removed: int = 0
    bytes_removed: int = 0
    kept_young: int = 0
    missing: int = 0             # referenced digests with no blob (an index points at nothing)
    blobs: int = 0
    bytes_total: int = 0
    temps_removed: int = 0
    deleted: bool = False
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def live_references(home: Home) -> tuple[set[bytes], list[str]]:
    """Digests referenced by every project index and by the action cache, and where from."""
    refs = set(readonly.live_digests(home)) | set(references.live_digests(home))
    return refs, ["project indexes", "action cache"]


def collect(home: Home, cas: CAS, older_than_s: float, delete: bool = False, extra_roots: Iterable[bytes] = (),
            progress: bool = False, referenced: set[bytes] | None = None, now: float | None = None) -> GCReport:
    report = GCReport(deleted=delete)
    if referenced is None:
        referenced, report.sources = live_references(home)
    else:
        report.sources = ["given"]
    keep = set(referenced) | set(extra_roots)
    now = time.time() if now is None else now
    cutoff = now - older_than_s
    present = 0
    with Progress(None, "gc", enabled=progress) as bar:
        for digest, path, size, mtime in cas.iter_blobs():
            bar.advance()
            report.blobs += 1
            report.bytes_total += size
            if digest in keep:
                report.referenced += 1
                present += 1
                continue
            report.unreferenced += 1
            if mtime > cutoff:
                report.kept_young += 1
                continue
            report.removable += 1
            report.bytes_removable += size
            if delete and _remove_if_still_old(path, cutoff):
                report.removed += 1
                report.bytes_removed += size
    report.missing = len({d for d in keep if len(d) == 32}) - present
    if delete:
        report.temps_removed = _sweep_temps(cas, now - STALE_TEMP_S)
    return report


def _remove_if_still_old(path: str, cutoff: float) -> bool:
    # stat again just before unlinking: a dedup hit since the walk refreshed the mtime
    try:
        if os.stat(path).st_mtime > cutoff:
            return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def _sweep_temps(cas: CAS, cutoff: float) -> int:
    """Temporaries left behind by writers that crashed (a live writer's are seconds old)."""
    removed = 0
    for path, mtime in cas.iter_temps():
        if mtime < cutoff:
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed
