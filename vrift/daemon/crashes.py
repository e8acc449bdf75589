"""What the coordinator (and a wrapper) learned about a project daemon's deaths.

`run/p-<id16>.crashes` holds one line per death seen ("<unix time> <pid>"): a daemon that was
killed or crashed, found dead with its pid file still there.  It outlives the coordinator, so
`vrift doctor` can say a daemon is crash-looping, and restarts are bounded: after CRASH_LOOP
deaths within CRASH_WINDOW_S the coordinator stops restarting the daemon by itself, and a
wrapper stops asking for one during its build (builds then run on the real filesystem).
"""
from __future__ import annotations

import os
import time

from .paths import RunFiles

CRASH_WINDOW_S = 300.0
CRASH_LOOP = 3  # deaths within the window: a crash loop
KEEP = 50


def path(files: RunFiles):
    return files.run_dir / f"{files.name}.crashes"


def record(files: RunFiles, pid: int | None) -> None:
    p = path(files)
    try:
        lines = p.read_text().splitlines()[-(KEEP - 1):]
    except OSError:
        lines = []
    lines.append(f"{time.time():.3f} {pid or 0}")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, ("\n".join(lines) + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except OSError:
        pass


def recent(files: RunFiles, window_s: float = CRASH_WINDOW_S) -> list[float]:
    """Times of the deaths within the last `window_s` seconds, oldest first."""
    try:
        text = path(files).read_text()
    except OSError:
        return []
    now, out = time.time(), []
    for line in text.splitlines():
        try:
            when = float(line.split()[0])
        except (ValueError, IndexError):
            continue
        if now - when <= window_s:
            out.append(when)
    return out


def looping(files: RunFiles) -> bool:
    return len(recent(files)) >= CRASH_LOOP
