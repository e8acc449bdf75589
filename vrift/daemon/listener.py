"""The socket side shared by both daemons: bind a private Unix socket, check each peer's uid,
read frames, dispatch them, answer.

One thread per connection, bounded by `max_connections`.  Why threads and not a selector:
the work behind a request (hashing, CAS writes, fsync) blocks and releases the GIL, so
threads let commits of many clients overlap while the index writer batches them; a build's
clients are processes that each hold one connection, so thread counts stay in the hundreds.
Memory per connection is bounded: one frame (≤ 1 MiB) at a time.
"""
from __future__ import annotations

import fcntl
import logging
import os
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .protocol import CLOSING_ERRORS, Err, Frame, ProtocolError, Tag, error, read_frame

log = logging.getLogger("vrift.daemon")

# A handler returns None for a one-way notification: nothing is sent back.
Handler = Callable[["Connection", Frame], "Frame | None"]


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
        self.busy = False  # a frame is being read or handled

    def unread(self) -> int:
        """Bytes the client has sent that this side has not read yet."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return 0

    def send(self, frame: Frame) -> None:
        self.sock.sendall(frame.encode())


def _readable(sock: socket.socket, timeout_ms: int) -> bool:
    """A listening socket with a connection waiting (poll: any fd number, unlike select)."""
    p = select.poll()
    try:
        p.register(sock, select.POLLIN)
        return bool(p.poll(timeout_ms))
    except (OSError, ValueError):
        return False


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
        self._accept_lock = threading.Lock()
        self.rejected_uid = 0
        self.bad_frames = 0
        self._count = 0
        self._sock: socket.socket | None = None
        self._uid = os.getuid()

    @property
    def client_count(self) -> int:
        with self.lock:
            return len(self.connections)

    def quiesce(self, but: Connection | None = None, timeout: float = 60.0) -> bool:
        """Wait until every other connection has handled all it was sent: a client's one-way
        notifications are in its socket's receive queue as soon as its send returned, so after
        this every notification sent before the caller's request arrived has been handled."""
        deadline = time.monotonic() + timeout
        while True:
            with self._accept_lock:  # no connection between accept() and registration
                backlog = self._sock is not None and _readable(self._sock, 0)
                with self.lock:
                    conns = [c for c in self.connections if c is not but]
            # queued bytes first, then busy: a frame leaves the queue only while busy is set
            if not backlog and not any(c.unread() > 0 or c.busy for c in conns):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)

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
            if not _readable(self._sock, 1000):
                continue
            # accepting and registering a connection is one step for quiesce()
            with self._accept_lock:
                if not self._accept_one() and self.stopping.is_set():
                    return

    def _accept_one(self) -> bool:
        """Accept one pending connection; False when accept() failed."""
        try:
            sock, _ = self._sock.accept()
        except OSError:
            return False
        try:
            pid, uid, _gid = peer_credentials(sock)
        except OSError:
            sock.close()
            return True
        if uid != self._uid:
            # another user: closed without a word, so nothing about the project leaks
            self.rejected_uid += 1
            log.warning("refused connection from uid %d (pid %d)", uid, pid)
            sock.close()
            return True
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
            return True
        threading.Thread(target=self._serve, args=(conn,), name=f"conn-{conn.number}", daemon=True).start()
        return True

    def _serve(self, conn: Connection) -> None:
        try:
            if self.on_open:
                self.on_open(conn)
            while not self.stopping.is_set():
                conn.busy = False
                # wait for data without taking it: a frame is never out of the socket's queue
                # before `busy` says it is being handled (quiesce() relies on that)
                if not conn.sock.recv(1, socket.MSG_PEEK):
                    return
                conn.busy = True
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
                        answer.add(Tag.FLAGS, e.flags)
                except ProtocolError as e:
                    answer = error(request.request_id, Err.BAD_REQUEST, e.reason)
                except Exception as e:  # a bug must cost one request, not the daemon
                    log.exception("request %s failed", request.type)
                    answer = error(request.request_id, Err.INTERNAL, f"{type(e).__name__}: {e}")
                if answer is None:  # a one-way notification
                    continue
                conn.send(answer)
                if answer.is_error and answer.int(Tag.ERROR_CODE) in CLOSING_ERRORS:
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
