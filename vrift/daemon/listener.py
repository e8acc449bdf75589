"""The socket side shared by both daemons: bind a private Unix socket, check each peer's uid,
read frames, dispatch them, answer.

One thread reads every connection (epoll).  Per wake-up it takes all the bytes a connection has
sent and handles the one-way notifications among them (WRITING, WRITTEN, CHANGED) at once, in
order: during a build they are nearly all the traffic, and a thread per connection made 16
busy clients cost ~190 futex calls per notification fighting over the GIL.  A request that is
answered (it may block: SYNC, COMMIT, an action lookup) goes to a worker thread; the connection
is not read again until it is done, so a connection's frames are still handled in order.
Workers are pooled and never bounded (a blocked request never waits for a free worker: SYNC
waits for every other connection, and they for a worker).  Memory per connection is bounded: at
most one read (256 KiB) beyond one frame (≤ 1 MiB).
"""
from __future__ import annotations

import fcntl
import logging
import os
import queue
import select
import socket
import struct
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .protocol import (CLOSING_ERRORS, HEADER_SIZE, ONE_WAY, Err, Frame, ProtocolError, Tag, error, parse_body,
                       parse_header)

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
        self.busy = False  # bytes taken from the socket are being handled (by the reader or a worker)
        self.inbuf = bytearray()  # received, not yet handled: at most a partial frame when not busy
        self.closed = False

    def unread(self) -> int:
        """Bytes the client has sent that this side has not read yet."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError):  # ValueError: closed meanwhile (fileno -1), nothing to read
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


READ_CHUNK = 256 * 1024
WORKER_IDLE_S = 30.0


class _Workers:
    """Threads for requests: an idle one takes the job, else a new one starts (no bound, see the
    module's docstring); a thread idle for WORKER_IDLE_S exits."""

    def __init__(self):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._count = 0

    def submit(self, fn: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if spawn:
                self._count += 1
            else:
                self._idle -= 1
        self._jobs.put(fn)
        if spawn:
            threading.Thread(target=self._run, name=f"worker-{self._count}", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                fn = self._jobs.get(timeout=WORKER_IDLE_S)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody counted on this one
                        self._idle -= 1
                        self._count -= 1
                        return
                continue  # a job is on its way to this thread
            try:
                fn()
            except Exception:
                log.exception("worker job failed")
            with self._lock:
                self._idle += 1


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
        self.wakeups = 0  # reads of the reader thread, for STATS: frames per wake-up
        self.frames = 0
        self._count = 0
        self._sock: socket.socket | None = None
        self._uid = os.getuid()
        self._epoll = select.epoll()
        self._by_fd: dict[int, Connection] = {}
        self._workers = _Workers()

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
            # queued bytes first, then busy, then the buffer: bytes leave the socket's queue only
            # while busy is set, and leave busy set until they are handled or a partial frame
            if not backlog and not any(c.unread() > 0 or c.busy or c.inbuf for c in conns):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0005)

    def start(self) -> None:
        self._sock = bind_private(self.path)
        self._sock.setblocking(False)
        self._epoll.register(self._sock.fileno(), select.EPOLLIN)
        threading.Thread(target=self._loop, name="reader", daemon=True).start()

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

    # -- the reader thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        assert self._sock is not None
        listen_fd = self._sock.fileno()
        try:
            while not self.stopping.is_set():
                try:
                    events = self._epoll.poll(1.0)
                except InterruptedError:
                    continue
                for fd, _ev in events:
                    if fd == listen_fd:
                        with self._accept_lock:  # accepting and registering is one step for quiesce()
                            while self._accept_one():
                                pass
                        continue
                    conn = self._by_fd.get(fd)
                    if conn is not None and not conn.busy:
                        self._readable_conn(conn)
        finally:
            with self.lock:
                conns = list(self.connections)
            for c in conns:
                if not c.busy:
                    self._close(c)

    def _accept_one(self) -> bool:
        """Accept one pending connection; False when none is pending or accept() failed."""
        try:
            sock, _ = self._sock.accept()
        except OSError:
            return False
        sock.setblocking(True)  # replies are sent blocking, by workers; reads use MSG_DONTWAIT
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
                sock.send(error(0, Err.LIMIT, f"too many connections (max {self.max_connections})").encode(),
                          socket.MSG_DONTWAIT)
            except OSError:
                pass
            sock.close()
            return True
        if self.on_open:
            try:
                self.on_open(conn)
            except Exception:
                log.exception("connection open handler failed")
        self._by_fd[sock.fileno()] = conn
        self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        return True

    def _readable_conn(self, conn: Connection) -> None:
        conn.busy = True  # before the bytes leave the socket's queue (quiesce)
        try:
            data = conn.sock.recv(READ_CHUNK, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            conn.busy = False
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        self.wakeups += 1
        conn.inbuf += data
        self._drain(conn, in_worker=False)

    def _drain(self, conn: Connection, in_worker: bool) -> None:
        """Handle the complete frames of conn.inbuf, in order.  In the reader thread a request
        is handed to a worker (with the rest of the buffer, which the worker drains after it)."""
        buf = conn.inbuf
        pos = 0
        try:
            while len(buf) - pos >= HEADER_SIZE:
                try:
                    mtype, request_id, length = parse_header(bytes(buf[pos:pos + HEADER_SIZE]))
                except ProtocolError as e:
                    self._refuse(conn, e)
                    return
                end = pos + HEADER_SIZE + length
                if len(buf) < end:
                    break
                if mtype not in ONE_WAY and not in_worker:
                    del buf[:pos]
                    self._watch(conn, False)  # not read again until the worker is done
                    self._workers.submit(lambda: self._drain(conn, in_worker=True))
                    return
                try:
                    request = parse_body(mtype, request_id, bytes(buf[pos + HEADER_SIZE:end]))
                except ProtocolError as e:
                    self._refuse(conn, e)
                    return
                pos = end
                self.frames += 1
                if not self._handle(conn, request, in_worker):
                    return
            del buf[:pos]
        except OSError:
            self._close(conn)
            return
        conn.busy = False
        if in_worker and not conn.closed:
            self._watch(conn, True)

    def _handle(self, conn: Connection, request: Frame, in_worker: bool) -> bool:
        """Handle one frame and send its answer; False when the connection was closed."""
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
            return True
        if not in_worker:  # an answer to a one-way frame (a handler that refuses it): never stall the reader
            data = answer.encode()
            try:
                if conn.sock.send(data, socket.MSG_DONTWAIT) < len(data):
                    raise BlockingIOError
            except OSError:
                self._close(conn)
                return False
        else:
            conn.send(answer)
        if answer.is_error and answer.int(Tag.ERROR_CODE) in CLOSING_ERRORS:
            self._close(conn)
            return False
        return True

    def _refuse(self, conn: Connection, e: ProtocolError) -> None:
        """A frame that cannot be read: answered (without blocking: nobody may stall the reader)
        and, for the errors that say so, the connection closed."""
        self.bad_frames += 1
        try:
            conn.sock.send(error(0, e.code, e.reason).encode(), socket.MSG_DONTWAIT)
        except OSError:
            pass
        if e.code in CLOSING_ERRORS:
            self._close(conn)
        else:  # nothing to resync on: drop what was read
            conn.inbuf.clear()
            conn.busy = False

    def _watch(self, conn: Connection, on: bool) -> None:
        """(Un)register the connection with epoll: unregistered, not even a hang-up is reported
        (with an empty event mask it would be, at every poll, while a worker has it)."""
        try:
            if on:
                self._epoll.register(conn.sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            else:
                self._epoll.unregister(conn.sock.fileno())
        except (OSError, ValueError):
            pass

    def _close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        fd = conn.sock.fileno()
        if fd >= 0:
            self._by_fd.pop(fd, None)
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        with self.lock:
            self.connections.discard(conn)
        conn.inbuf.clear()
        conn.busy = False
        try:
            conn.sock.close()
        except OSError:
            pass
        if self.on_close:
            try:
                self.on_close(conn)
            except Exception:
                log.exception("connection close handler failed")
