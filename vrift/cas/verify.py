"""Rehash every blob and report those whose content no longer matches their name.

BLAKE3 and file reads release the GIL, so a thread pool keeps every core busy.  A bad blob is
reported; with `quarantine=True` it is also moved out of the store into `<cas>/quarantine/`, so
the next store of that content writes a sound copy.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..progress import Progress
from .store import CAS, hash_file


@dataclass
class VerifyReport:
    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (digest hex, reason)
    bytes: int = 0
    quarantined: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_json(self) -> dict:
        return {"checked": self.checked, "bytes": self.bytes, "ok": self.ok,
                "bad": [{"digest": d, "reason": r} for d, r in self.bad],
                "quarantined": self.quarantined}


def _check(item) -> tuple[bytes, str, int, str | None]:
    digest, path, size, _ = item
    try:
        actual, n = hash_file(path)
    except FileNotFoundError:
        return digest, path, 0, "vanished during verify"
    except OSError as e:
        return digest, path, 0, f"unreadable: {e.strerror or e}"
    if actual != digest:
        return digest, path, n, f"content hashes to {actual.hex()}"
    return digest, path, n, None


def verify(cas: CAS, progress: bool = False, workers: int = 0, quarantine: bool = False) -> VerifyReport:
    report = VerifyReport()
    blobs = list(cas.iter_blobs())
    workers = workers or min(8, (os.cpu_count() or 2))
    with Progress(len(blobs), "verify", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:
        # small blobs dominate: chunks keep the pool's per-task overhead down
        for digest, path, n, reason in pool.map(_check, blobs, chunksize=64):
            report.checked += 1
            report.bytes += n
            bar.advance()
            if reason is not None:
                report.bad.append((digest.hex(), reason))
                if quarantine:
                    moved = cas._set_aside(path, "bad")
                    if moved:
                        report.quarantined.append(moved)
    return report
