"""A one-line progress meter on stderr for long walks (ingest, verify, gc).

It draws only when enabled and stderr is a terminal, at most ten times a second, and clears
its line at the end.  Disabled, `advance()` is an addition and a comparison: callers may
call it once per file.
"""
from __future__ import annotations

import sys
import time

REDRAW_S = 0.1


class Progress:
    def __init__(self, total: int | None, label: str, enabled: bool = True, stream=None):
        self.total = total
        self.label = label
        self.count = 0
        self._stream = stream if stream is not None else sys.stderr
        try:
            tty = self._stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        self.drawing = bool(enabled and tty)
        self._start = time.monotonic()
        self._next = self._start + REDRAW_S if self.drawing else float("inf")
        self._width = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, n: int = 1) -> None:
        self.count += n
        if self.drawing:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + REDRAW_S
                self._draw(now)

    def set_total(self, n: int | None) -> None:
        self.total = n

    def line(self, now: float | None = None) -> str:
        elapsed = (time.monotonic() if now is None else now) - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        text = f"{self.label}: {self.count:,}"
        if self.total:
            text += f"/{self.total:,} ({min(100, 100 * self.count // self.total)}%)"
        text += f"  {rate:,.0f}/s"
        if self.total and rate > 0 and self.count < self.total:
            text += f"  ETA {_duration((self.total - self.count) / rate)}"
        return text

    def _draw(self, now: float) -> None:
        text = self.line(now)
        pad = max(0, self._width - len(text))
        self._width = len(text)
        try:
            self._stream.write("\r" + text + " " * pad)
            self._stream.flush()
        except (OSError, ValueError):
            self.drawing = False

    def close(self) -> None:
        if self.drawing and self._width:
            try:
                self._stream.write("\r" + " " * self._width + "\r")
                self._stream.flush()
            except (OSError, ValueError):
                pass
        self.drawing = False
        self._next = float("inf")


def _duration(s: float) -> str:
    s = int(s + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
