"""A build asks for its project daemon back when it dies (docs/daemons.md "Restarts").

`vrift wrap` runs one while the tool runs: every CHECK_EVERY_S it looks at the daemon's pid file
(no socket round trip, nothing in the build's way).  When the daemon is gone — killed, crashed —
and no coordinator has brought a new one up, it asks for one (`ensure_daemon`: the coordinator,
started again when it is down too).  The new daemon takes the VDir over with every entry DIRTY
and confirms them in the background, so the build's later processes are served from memory
again; processes that saw the old daemon's beat stop keep asking the kernel (correct, slower).
Bounded: at most MAX_RESTARTS per build, and none while the daemon is crash-looping
(crashes.py) — the build then goes on unaccelerated, correct either way.
"""
from __future__ import annotations

import os
import threading

CHECK_EVERY_S = 0.5
MAX_RESTARTS = 2


def _pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:data.rfind(b")") + 3] not in (b"Z", b"X")


class DaemonWatch:
    def __init__(self, socket_path: str, root: str, env):
        self.socket_path = socket_path
        self.pid_file = socket_path[:-len(".sock")] + ".pid"
        self.root = root
        self.env = dict(env)
        self.restarts = 0
        self.gave_up: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daemon-watch", daemon=True)

    def start(self) -> "DaemonWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def note(self) -> str | None:
        """For the build's summary line."""
        if self.gave_up:
            return self.gave_up
        if self.restarts:
            return f"the project daemon died during the build: restarted it ({self.restarts}x)"
        return None

    def _run(self) -> None:
        last = _pid(self.pid_file)
        while not self._stop.wait(CHECK_EVERY_S):
            pid = _pid(self.pid_file)
            if _alive(pid):
                last = pid
                continue
            if self._stop.wait(CHECK_EVERY_S) or _alive(_pid(self.pid_file)):
                continue  # a coordinator restarted it meanwhile, or the build ended
            if not self._restart(last):
                return

    def _restart(self, dead: int | None) -> bool:
        from ..home import Home
        from ..identity import Project
        from . import crashes
        from .client import ensure_daemon
        from .paths import project_files

        try:
            home, project = Home.from_env(self.env), Project.at(self.root)
            files = project_files(home, project.id)
            if self.restarts >= MAX_RESTARTS or crashes.looping(files):
                self.gave_up = ("the project daemon keeps dying: the rest of the build ran on the real "
                                "filesystem (`vrift doctor` says why)")
                return False
            if dead and not _alive(dead) and os.path.exists(files.pid_file) and _pid(str(files.pid_file)) == dead:
                crashes.record(files, dead)
                try:
                    os.unlink(files.pid_file)
                except FileNotFoundError:
                    pass
            self.restarts += 1  # counted when asked: the build may end before the new daemon answers
            ensure_daemon(home, project)
            return True
        except Exception as e:  # noqa: BLE001 - said in the summary; the build goes on either way
            self.gave_up = f"the project daemon died during the build and could not be restarted: {e}"
            return False
