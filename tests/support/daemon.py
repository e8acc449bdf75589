"""Helpers for the daemon tests: a fixture that starts nothing itself but guarantees every
daemon started under the test's VRIFT_HOME is gone afterwards, and small client helpers."""
from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path

import blake3
import pytest

from vrift.daemon import process
from vrift.daemon.client import CoordinatorClient, ProjectClient, connect_project, wait_for
from vrift.daemon.paths import coordinator_files, project_files
from vrift.home import Home
from vrift.identity import Project

FAST_DAEMONS = """\
daemon:
  health_interval_s: 0.2
  idle_timeout_s: 600
  cleanup_after_s: 600
"""


def all_daemon_pids(home: Home) -> set[int]:
    pids = set()
    if home.run_dir.is_dir():
        for pid_file in home.run_dir.glob("*.pid"):
            pid = process.read_pid(pid_file)
            if pid:
                pids.add(pid)
    return pids


TRACKED: dict[Path, set[int]] = {}


def processes_of(home: Home) -> set[int]:
    """Every live process started with this VRIFT_HOME: catches a daemon the coordinator
    restarted while the test ended, before it wrote its pid file."""
    want = b"VRIFT_HOME=" + os.fsencode(home.root) + b"\0"
    found = set()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read() + b"\0"
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if want in env and b"vrift.daemon" in cmd:
            found.add(int(d))
    return found


def track(home: Home, pid: int | None) -> None:
    """Remember a daemon pid a test learned (a restarted one) for the teardown check."""
    if pid:
        TRACKED.setdefault(home.root, set()).add(pid)


@pytest.fixture
def daemons(home):
    """The test's Home, with fast health checks; on teardown every daemon is shut down (kill -9
    when it does not stop) and no process named by a pid file survives."""
    home.user_config_path.write_text(FAST_DAEMONS)
    seen = TRACKED.setdefault(home.root, set())
    yield home
    TRACKED.pop(home.root, None)
    seen |= all_daemon_pids(home)
    try:
        with CoordinatorClient(coordinator_files(home).socket, 5000) as c:
            c.shutdown(flags=1)
    except Exception:
        pass
    for sock in home.run_dir.glob("p-*.sock"):  # daemons the coordinator did not know
        try:
            with ProjectClient(sock, 5000) as c:
                c.shutdown()
        except Exception:
            pass
    seen |= all_daemon_pids(home)
    wait_for(lambda: not any(process.pid_alive(p) for p in seen), 10)
    for _ in range(3):  # a coordinator may restart a daemon while it is being stopped
        for pid in seen | processes_of(home):
            if process.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        seen |= processes_of(home)
        if wait_for(lambda: not any(process.pid_alive(p) for p in seen), 2):
            break
    assert wait_for(lambda: not any(process.pid_alive(p) for p in seen | processes_of(home)), 5), \
        "a daemon survived the test"


def make_project(base: Path, name: str = "proj", files: dict[str, bytes] | None = None) -> Project:
    root = base / name
    root.mkdir(parents=True)
    (root / ".vrift.yaml").write_text("")
    for rel, data in (files or {"src/a.c": b"int a;\n", "README": b"hello\n"}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return Project.at(root)


class Writer:
    """Plays the preload library's part of a write: a staging file <staging>/<pid>.<n>."""

    def __init__(self, client: ProjectClient, project: Project, pid: int | None = None):
        self.client = client
        self.project = project
        self.pid = pid or os.getpid()
        self.dir = project.staging_dir
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.n = 0

    def stage(self, data: bytes, hold: bool = False) -> Path:
        self.n += 1
        path = self.dir / f"{self.pid}.{self.n}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        if hold:
            fcntl.flock(fd, fcntl.LOCK_SH)  # the beacon
        os.write(fd, data)
        if not hold:
            os.close(fd)
        return path

    def write(self, rel: str, data: bytes) -> tuple[bytes, int]:
        staging = self.stage(data)
        digest, size, generation = self.client.commit(self.project.root / rel, staging)
        assert digest == blake3.blake3(data).digest() and size == len(data)
        return digest, generation


def vdir_entry(home: Home, project: Project, rel: str):
    from vrift.vdir.shm import VDirReader

    with VDirReader(home.vdir_path(project.id)) as r:
        return r.lookup(rel.encode())


def daemon_pid(home: Home, project: Project) -> int | None:
    return process.read_pid(project_files(home, project.id).pid_file)


def wait_daemon_back(home: Home, project: Project, old_pid: int, timeout: float) -> int | None:
    """The pid of a new project daemon serving its socket, or None after the timeout."""
    files = project_files(home, project.id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = process.read_pid(files.pid_file)
        if pid and pid != old_pid and process.pid_alive(pid) and process.can_connect(files.socket, 0.2):
            return pid
        time.sleep(0.01)
    return None


__all__ = ["daemons", "track", "make_project", "Writer", "vdir_entry", "daemon_pid", "wait_daemon_back",
           "connect_project", "all_daemon_pids"]
