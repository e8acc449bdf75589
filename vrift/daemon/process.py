"""Process plumbing of the daemons: lock and pid files, liveness, spawning, logs, beacons."""
from __future__ import annotations

import errno
import faulthandler
import fcntl
import logging
import os
import signal
import socket
import stat as statmod
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VriftError

# Variables of a wrapped build that must not reach a daemon (it must never run preloaded).
SCRUBBED_ENV = ("LD_PRELOAD", "VRIFT_SOCKET", "VRIFT_COUNTERS", "VRIFT_ENABLED", "VRIFT_STAGING_DIR",
                "VRIFT_FALLBACK_MODE")


def write_private(path: Path, text: str) -> None:
    """Write a small file atomically, mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def remove_if_ours(path: Path) -> None:
    if read_pid(path) == os.getpid():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def pid_alive(pid: int | None) -> bool:
    """True for a running process; a zombie (exited, not yet reaped) counts as dead."""
    if not pid or pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        return True
    state = data[data.rfind(b")") + 2:data.rfind(b")") + 3]
    return state not in (b"Z", b"X")


def processes_mapping(path: Path) -> list[int]:
    """Pids of this user's other processes that map the file at `path` (or a file once at that
    name: a replaced VDir shows as "<path> (deleted)").  The preload library keeps its VDir
    mapped for the life of a process, so this is "wrapped processes of the project still run".
    Reads /proc/<pid>/maps of every process: tens of ms, for the rare idle decision only."""
    want = os.fsencode(path)
    me, uid = os.getpid(), os.geteuid()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid != uid:
                continue
            with open(f"/proc/{d}/maps", "rb") as f:
                if any(line.rstrip(b"\n").split(b" ", 5)[-1].strip().startswith(want) for line in f):
                    found.append(int(d))
        except (OSError, IndexError):
            continue
    return found


def acquire_lock(path: Path):
    """An exclusive flock held for the life of the process, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def lock_held(path: Path) -> bool:
    """Whether some process holds the lock file (without taking it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def beacon_free(path: bytes) -> bool:
    """The preload library keeps a shared flock (the beacon) on every file a process may still
    write; an exclusive probe that succeeds means nobody holds one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True  # gone, a symlink, unreadable: nothing to wait for
    try:
        if not statmod.S_ISREG(os.fstat(fd).st_mode):
            return True
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def staging_owner(name: str) -> int | None:
    """The pid that a staging name belongs to: `<pid>.<n>` (a write), `<pid>.r<n>` (a replay),
    or `<pid>` (a directory of an earlier vrift's layout); None for anything else."""
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def remove_unheld_staging(staging_dir: Path, pid: int | None = None) -> int:
    """Remove the staging files of dead writers — of `pid`, or of every owner no longer
    alive — that no process still holds (a file's beacon, see beacon_free)."""
    removed = 0
    try:
        names = os.listdir(staging_dir)
    except OSError:
        return 0
    for name in names:
        owner = staging_owner(name)
        if owner is None or (owner != pid if pid is not None else pid_alive(owner)):
            continue
        path = staging_dir / name
        if "." not in name:  # an earlier layout's per-process directory
            for inner in _listdir(path):
                removed += _remove_unheld(path / inner)
            try:
                os.rmdir(path)
            except OSError:
                pass
        else:
            removed += _remove_unheld(path)
    return removed


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove_unheld(path: Path) -> int:
    raw = os.fsencode(path)
    if not beacon_free(raw):
        return 0
    try:
        os.unlink(raw)
        return 1
    except OSError:
        return 0


def setup_logging(name: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(message)s")
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: every thread's stack to the log


def spawn(module: str, args: list[str], log_file: Path) -> subprocess.Popen:
    """Start `python -m module args` as a daemon: own session, no controlling terminal,
    stdout/stderr appended to its log, no preload variables."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL, stdout=fd,
                                stderr=fd, start_new_session=True, close_fds=True, env=env, cwd="/")
    finally:
        os.close(fd)


def can_connect(path: Path, timeout: float = 1.0) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        s.connect(os.fsencode(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_ready(sock_path: Path, proc: subprocess.Popen | None, log_file: Path, timeout: float,
               what: str, lock_file: Path | None = None) -> None:
    """Wait until the socket accepts connections; a process that exits first is an error
    (unless another instance holds the lock: then that one is about to serve)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while time.monotonic() < deadline:
        if can_connect(sock_path):
            return
        if proc is not None and proc.poll() is not None:
            if proc.returncode == 0 and lock_file is not None and lock_held(lock_file):
                proc = None  # lost the start race to a twin that is still coming up
            else:
                raise VriftError(f"{what} exited with status {proc.returncode} before serving: {log_tail(log_file)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    raise VriftError(f"{what} did not start serving within {timeout:.0f}s (see {log_file})")


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
