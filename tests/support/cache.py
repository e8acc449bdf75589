"""Playing the preload library's part of the action cache: logs in the contract's format
(docs/cache.md) written by hand, so the Python side is tested without the C side."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from vrift.cache.actionlog import record


class FakeAction:
    """One action: an id, its log directory, and per-process logs built record by record."""

    def __init__(self, root: Path, action_id: str | None = None):
        self.id = action_id or secrets.token_hex(8)
        self.dir = Path(root) / ".vrift" / "actions" / self.id
        self.n = 0

    def log(self, *records: tuple, pid: int | None = None, status: int | None = 0) -> Path:
        """Write one process log: records are (kind, payload); 'Z' with `status` is appended
        unless status is None (a process that did not finish)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n += 1
        path = self.dir / f"{pid or os.getpid()}.{self.n}.log"
        data = b"".join(record(k, p) for k, p in records)
        if status is not None:
            data += record("Z", status)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return path


def out(stamp: int, data: bytes, kind: str = "O") -> list[tuple]:
    return [("T", stamp), (kind, data)]
