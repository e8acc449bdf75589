"""Python client of the daemons, used by the CLI and the tests (docs/protocol.md)."""
from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from . import process
from .paths import coordinator_files, project_files
from .protocol import Err, Frame, LookupFlag, Msg, ProtocolError, StatsFlag, Tag, read_frame

DEFAULT_TIMEOUT_MS = 30_000
START_TIMEOUT_S = 30.0
LONG_WAIT_S = 600.0  # the daemon bounds every request by the same time (server.REQUEST_TIMEOUT_S)


class DaemonError(VriftError):
    """An ERROR frame from a daemon."""

    def __init__(self, code: int, reason: str, flags: int = 0):
        try:
            name = Err(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"daemon refused the request ({name}): {reason}")
        self.code = code
        self.reason = reason
        self.flags = flags


class DaemonUnavailable(VriftError):
    """No daemon answers on the socket."""


class Client:
    def __init__(self, sock_path: Path | str, timeout_ms: int = DEFAULT_TIMEOUT_MS):
        self.path = Path(sock_path)
        self.timeout_ms = timeout_ms
        self._ids = itertools.count(1)
        self.sock: socket.socket | None = None
        self.connect()

    def connect(self) -> None:
        self.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout_ms / 1000)
        try:
            s.connect(os.fsencode(self.path))
        except OSError as e:
            s.close()
            raise DaemonUnavailable(f"{self.path}: no daemon answers ({e.strerror or e})") from None
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, mtype: int, *fields: tuple[int, bytes | str | int], wait_s: float | None = None) -> Frame:
        """One request.  `wait_s`: how long the answer may take, for requests that wait for
        queued work (SYNC and INGEST behind a first ingest of a large tree); the socket
        timeout otherwise."""
        if self.sock is None:
            self.connect()
        self.sock.settimeout(wait_s if wait_s is not None else self.timeout_ms / 1000)
        frame = Frame(mtype, next(self._ids) & 0xFFFFFFFF)
        for tag, value in fields:
            frame.add(tag, value)
        try:
            self.sock.sendall(frame.encode())
            answer = read_frame(self.sock)
        except (OSError, ProtocolError) as e:
            self.close()
            raise DaemonUnavailable(f"{self.path}: connection lost ({e})") from None
        if answer is None:
            self.close()
            raise DaemonUnavailable(f"{self.path}: the daemon closed the connection")
        if answer.is_error:
            raise DaemonError(answer.int(Tag.ERROR_CODE, 0), answer.text(default=""), answer.int(Tag.FLAGS, 0) or 0)
        if answer.request_id != frame.request_id or answer.base_type != mtype:
            self.close()
            raise DaemonUnavailable(f"{self.path}: reply does not match the request")
        return answer

    def notify(self, mtype: int, *fields: tuple[int, bytes | str | int]) -> None:
        """A one-way notification (WRITING, WRITTEN, CHANGED): sent, never answered."""
        if self.sock is None:
            self.connect()
        frame = Frame(mtype, next(self._ids) & 0xFFFFFFFF)
        for tag, value in fields:
            frame.add(tag, value)
        try:
            self.sock.sendall(frame.encode())
        except OSError as e:
            self.close()
            raise DaemonUnavailable(f"{self.path}: connection lost ({e})") from None

    def ping(self) -> None:
        self.request(Msg.PING)

    def hello(self, pid: int | None = None) -> dict:
        r = self.request(Msg.HELLO, (Tag.PID, os.getpid() if pid is None else pid))
        return {"root": os.fsdecode(r.get(Tag.ROOT, b"")), "vdir": os.fsdecode(r.get(Tag.VDIR, b"")),
                "socket": os.fsdecode(r.get(Tag.SOCKET, b"")), "staging_dir": os.fsdecode(r.get(Tag.STAGING_DIR, b"")),
                "generation": r.int(Tag.GENERATION, 0), "project_id": r.text(Tag.PROJECT_ID, ""),
                "pid": r.int(Tag.PID, 0)}

    def shutdown(self, flags: int = 0) -> None:
        try:
            self.request(Msg.SHUTDOWN, (Tag.FLAGS, flags))
        finally:
            self.close()


def _path(p) -> bytes:
    return p if isinstance(p, bytes) else os.fsencode(p)


class ProjectClient(Client):
    def sync(self, path=None) -> int:
        fields = [(Tag.PATH, _path(path))] if path is not None else []
        return self.request(Msg.SYNC, *fields, wait_s=LONG_WAIT_S).int(Tag.GENERATION)

    def commit(self, path, staging) -> tuple[bytes, int, int]:
        """(digest, size, generation)"""
        r = self.request(Msg.COMMIT, (Tag.PATH, _path(path)), (Tag.STAGING, _path(staging)))
        return r.get(Tag.DIGEST), r.int(Tag.SIZE), r.int(Tag.GENERATION)

    def written(self, path) -> None:
        """One-way: `path` holds a complete new file, renamed into place by the caller."""
        self.notify(Msg.WRITTEN, (Tag.PATH, _path(path)))

    def begin_write(self, paths) -> int:
        return self.request(Msg.BEGIN_WRITE, *[(Tag.PATH, _path(p)) for p in paths]).int(Tag.COUNT)

    def invalidate(self, paths) -> tuple[int, int]:
        """(paths re-read, paths still held by a writer)"""
        r = self.request(Msg.INVALIDATE, *[(Tag.PATH, _path(p)) for p in paths])
        return r.int(Tag.COUNT), r.int(Tag.HELD, 0)

    def stats(self) -> dict:
        return self.request(Msg.STATS).json()

    def ingest(self) -> dict:
        return self.request(Msg.INGEST, wait_s=LONG_WAIT_S).json()

    def action_lookup(self, exe, cwd, argv, action_id: str, env=(), pid: int | None = None,
                      streams: bytes | None = None) -> dict:
        """ACTION_LOOKUP as the preload library sends it: {"hit", "flags", "status", "stdout", "stderr",
        "chunks"} — chunks: (fd, bytes) in the order they are to be written."""
        fields = [(Tag.PID, os.getpid() if pid is None else pid), (Tag.PATH, _path(exe)), (Tag.CWD, _path(cwd))]
        fields += [(Tag.ARG, _path(a)) for a in argv] + [(Tag.ENV, _path(e)) for e in env]
        if streams is not None:
            fields.append((Tag.STREAMS, streams))
        fields.append((Tag.ACTION, action_id.encode()))
        r = self.request(Msg.ACTION_LOOKUP, *fields)
        flags = r.int(Tag.FLAGS, 0) or 0
        chunks = [(1 if t == Tag.STDOUT else 2, v) for t, v in r.fields if t in (Tag.STDOUT, Tag.STDERR)]
        return {"hit": bool(flags & LookupFlag.HIT), "flags": flags, "status": r.int(Tag.STATUS, 0), "chunks": chunks,
                "stdout": b"".join(v for fd, v in chunks if fd == 1),
                "stderr": b"".join(v for fd, v in chunks if fd == 2)}

    def action_end(self, action_id: str, status: int = 0, pid: int | None = None) -> int:
        """ACTION_END; returns the reply's FLAGS (bit 0: an entry is being recorded)."""
        r = self.request(Msg.ACTION_END, (Tag.ACTION, action_id.encode()), (Tag.STATUS, status),
                         (Tag.PID, os.getpid() if pid is None else pid))
        return r.int(Tag.FLAGS, 0) or 0

    def cache_stats(self, explain_since: int | None = None) -> dict:
        """The action cache's counters (STATS with FLAGS bit 0), and explanations of misses
        newer than `explain_since` (bit 1)."""
        fields = [(Tag.FLAGS, StatsFlag.CACHE_ONLY | (0 if explain_since is None else StatsFlag.EXPLAIN))]
        if explain_since is not None:
            fields.append((Tag.SEQUENCE, explain_since))
        return self.request(Msg.STATS, *fields).json()


class CoordinatorClient(Client):
    def ensure_project(self, root) -> dict:
        r = self.request(Msg.ENSURE_PROJECT, (Tag.ROOT, _path(root)))
        return {"socket": os.fsdecode(r.get(Tag.SOCKET)), "vdir": os.fsdecode(r.get(Tag.VDIR, b"")),
                "pid": r.int(Tag.PID), "project_id": r.text(Tag.PROJECT_ID, ""),
                "staging_dir": os.fsdecode(r.get(Tag.STAGING_DIR, b"")), "generation": r.int(Tag.GENERATION, 0)}

    def list(self) -> dict:
        return self.request(Msg.LIST).json()

    def stop_project(self, root) -> None:
        self.request(Msg.STOP_PROJECT, (Tag.ROOT, _path(root)))


# -- starting ------------------------------------------------------------------------------------
def ensure_coordinator(home: Home, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> CoordinatorClient:
    """A client of the coordinator, starting it when none runs (its lock makes a race harmless)."""
    home.ensure()
    files = coordinator_files(home)
    files.check_socket_length()
    try:
        return CoordinatorClient(files.socket, timeout_ms)
    except DaemonUnavailable:
        pass
    proc = process.spawn("vrift.daemon.coordinator", [], files.log_file)
    process.wait_ready(files.socket, proc, files.log_file, START_TIMEOUT_S, "the vrift coordinator",
                       lock_file=files.lock_file)
    return CoordinatorClient(files.socket, timeout_ms)


def ensure_daemon(home: Home, project: Project, timeout_ms: int = DEFAULT_TIMEOUT_MS) -> dict:
    """Start the coordinator and the project's daemon if needed; returns the daemon's identity."""
    project_files(home, project.id).check_socket_length()
    with ensure_coordinator(home, timeout_ms) as coord:
        return coord.ensure_project(project.root)


def connect_project(home: Home, project: Project, autostart: bool = True,
                    timeout_ms: int = DEFAULT_TIMEOUT_MS) -> ProjectClient:
    files = project_files(home, project.id)
    files.check_socket_length()
    try:
        return ProjectClient(files.socket, timeout_ms)
    except DaemonUnavailable:
        if not autostart:
            raise
    info = ensure_daemon(home, project, timeout_ms)
    return ProjectClient(info["socket"], timeout_ms)


def stop_project_daemon(home: Home, project: Project, timeout_s: float) -> int | None:
    """Stop the project's daemon: through the coordinator (which then does not restart it),
    then directly (one the coordinator does not know); wait up to `timeout_s` for it to exit.
    Returns the pid it had (None when none ran) — still alive if it did not stop in time."""
    files = project_files(home, project.id)
    pid = process.read_pid(files.pid_file) if files.pid_file.exists() else None
    timeout_ms = int(timeout_s * 1000)
    try:
        with CoordinatorClient(coordinator_files(home).socket, timeout_ms) as c:
            c.stop_project(project.root)
    except VriftError:
        pass
    if files.socket.exists():
        try:
            with ProjectClient(files.socket, timeout_ms) as c:
                c.shutdown()
        except VriftError:
            pass
    deadline = time.monotonic() + timeout_s
    while pid and process.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def coordinator_status(home: Home) -> dict | None:
    """`{"coordinator": {"pid": …} | None, "projects": [...]}` from the coordinator, or from the
    project daemons' sockets when it does not run; None when no daemon runs at all."""
    try:
        with CoordinatorClient(coordinator_files(home).socket, 10_000) as c:
            return c.list()
    except DaemonUnavailable:
        pass
    projects = []
    for pid_file in sorted(home.run_dir.glob("p-*.pid")) if home.run_dir.is_dir() else []:
        try:
            with ProjectClient(pid_file.with_suffix(".sock"), 5_000) as c:
                s = c.stats()
        except VriftError:
            continue
        row = {k: s.get(k) for k in ("root", "pid", "generation", "entries", "durability", "socket", "vdir", "watcher")}
        row["clients"] = max(0, int(s.get("clients", 1)) - 1)  # minus this probe
        projects.append(row)
    return {"coordinator": None, "projects": projects} if projects else None


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    """Poll `predicate` until true or the timeout passes (used by tools and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
