"""The meter of a project daemon's full ingest, drawn by the process that waits for it.

A daemon that starts indexes its tree before it answers SYNC (a first `vrift wrap` of a big
tree waits for that), and `vrift ingest` through a running daemon waits for its INGEST reply.
Meanwhile a thread here asks the daemon how far it is (STATS with the ingest flag: answered
without the busy writer thread) a few times a second and draws the usual meter on stderr.
Only on a terminal; never imported by the wrapper's common path (the daemon already runs).
"""
from __future__ import annotations

import sys
import threading

from ..progress import Progress
from .daemonlink import ingest_progress

POLL_S = 0.2
POLL_TIMEOUT_S = 2.0


class IngestMeter:
    def __init__(self, socket_path: str, enabled: bool = True, stream=None):
        self.socket_path = socket_path
        self.bar = Progress(None, "indexing", enabled=enabled, stream=stream if stream is not None else sys.stderr)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "IngestMeter":
        if self.bar.drawing:
            self._thread = threading.Thread(target=self._poll, name="ingest-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            running = (ingest_progress(self.socket_path, POLL_TIMEOUT_S) or {}).get("ingest")
            if not isinstance(running, dict):
                continue
            count, total = running.get("count"), running.get("total")
            if isinstance(count, int) and count >= self.bar.count:
                self.bar.set_total(total if isinstance(total, int) and total > 0 else None)
                self.bar.advance(count - self.bar.count)
