"""The socket side shared by both daemons: bind a private Unix socket, check each peer's uid,
read frames, dispatch them, answer.

One thread per connection, bounded by `max_connections`.  Why threads and not a selector:
the work behind a request (hashing, CAS writes, fsync) blocks and releases the GIL, so
threads let commits of many clients overlap while the index writer batches them; a build's
clients are processes that each hold one connection, so thread counts stay in the hundreds.
Memory per connection is bounded: one frame (≤ 1 MiB) at a time.
"""
from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from .protocol import CLOSING_ERRORS, Err, Frame, ProtocolError, error, read_frame

log = logging.getLogger("vrift.daemon")

Handler = Callable[["Connection", Frame], Frame]


class RequestError(Exception):
    """A request that is answered with an ERROR frame; the connection stays open."""

    def __init__(self, code: Err, reason: str, flags: int = 0):
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.flags = flags


class Connection:
    """One client.  `state` is for the daemon (client pid, writes to roll back)."""

    def __init__(self, sock: socket.socket, peer_pid: int, peer_uid: int, number: int):
        self.sock = sock
        self.peer_pid = peer_pid
        self.peer_uid = peer_uid
        self.number = number
        self.client_pid: int | None = None
        self.pending_writes: set[bytes] = set()
        self.lock = threading.Lock()

    def send(self, frame: Frame) -> None:
        self.sock.sendall(frame.encode())


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer of a Unix socket (SO_PEERCRED)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", data)


def bind_private(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0600 from the start (umask during bind)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(os.fsencode(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(512)
    return sock


class Listener:
    def __init__(self, path: Path, handler: Handler, *, max_connections: int = 1024,
                 on_open: Callable[[Connection], None] | None = None,
                 on_close: Callable[[Connection], None] | None = None):
        self.path = path
        self.handler = handler
        self.max_connections = max_connections
        self.on_open = on_open
        self.on_close = on_close
        self.connections: set[Connection] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.rejected_uid = 0
        self.bad_frames = 0
        self._count = 0
        self._sock: socket.socket | None = None
        self._uid = os.getuid()

    @property
    def client_count(self) -> int:
        with self.lock:
            return len(self.connections)

    def start(self) -> None:
        self._sock = bind_private(self.path)
        threading.Thread(target=self._accept_loop, name="accept", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        with self.lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self.stopping.is_set():
            try:
                sock, _ = self._sock.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            try:
                pid, uid, _gid = peer_credentials(sock)
            except OSError:
                sock.close()
                continue
            if uid != self._uid:
                # another user: closed without a word, so nothing about the project leaks
                self.rejected_uid += 1
                log.warning("refused connection from uid %d (pid %d)", uid, pid)
                sock.close()
                continue
            with self.lock:
                if len(self.connections) >= self.max_connections:
                    full = True
                else:
                    full = False
                    self._count += 1
                    conn = Connection(sock, pid, uid, self._count)
                    self.connections.add(conn)
            if full:
                try:
                    sock.sendall(error(0, Err.LIMIT, f"too many connections (max {self.max_connections})").encode())
                finally:
                    sock.close()
                continue
            threading.Thread(target=self._serve, args=(conn,), name=f"conn-{conn.number}", daemon=True).start()

    def _serve(self, conn: Connection) -> None:
        try:
            if self.on_open:
                self.on_open(conn)
            while not self.stopping.is_set():
                try:
                    request = read_frame(conn.sock)
                except ProtocolError as e:
                    self.bad_frames += 1
                    conn.send(error(0, e.code, e.reason))
                    if e.code in CLOSING_ERRORS:
                        return
                    continue
                if request is None:
                    return
                try:
                    answer = self.handler(conn, request)
                except RequestError as e:
                    answer = error(request.request_id, e.code, e.reason)
                    if e.flags:
                        answer.add(14, e.flags)
                except ProtocolError as e:
                    answer = error(request.request_id, Err.BAD_REQUEST, e.reason)
                except Exception as e:  # a bug must cost one request, not the daemon
                    log.exception("request %s failed", request.type)
                    answer = error(request.request_id, Err.INTERNAL, f"{type(e).__name__}: {e}")
                conn.send(answer)
                if answer.is_error and answer.int(12) == Err.SHUTTING_DOWN:
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                self.connections.discard(conn)
            try:
                conn.sock.close()
            except OSError:
                pass
            if self.on_close:
                try:
                    self.on_close(conn)
                except Exception:
                    log.exception("connection close handler failed")
