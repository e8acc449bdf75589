"""The re-ingest of an indexed tree with the walk and compare in C (vrift/native/walk.c).

An unchanged path costs one fstatat and a 112-byte compare there; only what differs, is new or
could not be read comes back to Python, which handles it exactly as the Python walk would (its
lstat again, then Ingester._index_walk).  Used when the Python walk would do nothing the C side
cannot: no blobs to store (each reuse would ask the CAS), only the always-ignored names, no
plugin index filter; otherwise, or when the C side gives up (a tree deeper than it keeps fds
for, a path too long), the Python walk runs.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from .errors import VriftError
from .vdir.native_walk import FALLBACK, Snapshot


def applies(ingester) -> bool:
    if not ingester.native or ingester.store_blobs or not ingester.rules.only_builtin \
            or ingester.index_filter is not None or not len(ingester.index):
        return False
    try:
        from .vdir import native_walk
        native_walk._lib()
    except VriftError:  # the native library is not built: the Python walk
        return False
    return True


def ingest(ingester, report, seen: set[bytes], bar, ignored: tuple[bytes, ...], batch: int) -> list[bytes] | None:
    """Walk the tree in C; Python indexes what it reports.  Returns the indexed paths the C
    walk did not find unchanged (the caller drops those not in `seen` either), or None when
    the Python walk must run instead."""
    paths, records, count = ingester.index.snapshot()
    with Snapshot(paths, records, count, ingester._root, ignored) as snap:
        result = snap.ingest_walk()
        if result is FALLBACK:
            return None
        report.walk = "native"
        if result is not None:  # None: the root is gone, nothing is on disk
            matched = result.files + result.subdirs + result.symlinks
            report.files += result.files
            report.reused += result.files
            report.dirs += result.subdirs
            report.symlinks += result.symlinks
            report.skipped.extend(result.skipped)
            if bar is not None and matched:
                bar.advance(matched)
            ingester._index_walk(_restat(ingester, result.changed, report, batch), report, seen, bar, False)
        return snap.unseen(listed_parents=False)


def _restat(ingester, rels: list[bytes], report, batch: int) -> Iterator[list[tuple[bytes, os.stat_result]]]:
    """(path, lstat) of each path the C walk reported, as the Python walk lists them."""
    items = []
    for rel in rels:
        try:
            st = os.lstat(ingester._abs(rel))
        except (FileNotFoundError, NotADirectoryError):
            continue  # gone since: as if never listed
        except OSError as e:
            report.skipped.append((os.fsdecode(rel), e.strerror or str(e)))
            continue
        items.append((rel, st))
        if len(items) >= batch:
            yield items
            items = []
    yield items
