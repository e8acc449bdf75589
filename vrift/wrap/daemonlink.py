"""HELLO + SYNC to a running project daemon, in one round trip, with the bare `_socket` module.

This speaks the framing of docs/protocol.md directly instead of importing
`vrift.daemon.protocol` (enum, dataclasses, json): on the common path of `vrift wrap` the
daemon runs and this is the only request the wrapper makes.  tests/integration/test_wrap_fast.py checks
the frames against `vrift.daemon.protocol`.  When no daemon answers, the caller starts one
through `vrift.daemon.client.ensure_daemon` (the slow, rare path) and calls `hello_sync` again.
"""
from __future__ import annotations

import _socket
import os
import struct

MAGIC = b"VRP1"
VERSION = 1
HEADER = struct.Struct("<4sHHII")
FIELD = struct.Struct("<HI")
MAX_BODY = 1 << 20
MSG_HELLO, MSG_SYNC, MSG_STATS, MSG_ERROR, REPLY_BIT = 0x01, 0x02, 0x06, 0x7FFF, 0x8000
TAG_GENERATION, TAG_TEXT, TAG_JSON, TAG_ROOT, TAG_VDIR, TAG_SOCKET, TAG_STAGING_DIR, TAG_ERROR_CODE = 4, 5, 6, 7, 8, 9, 11, 12
TAG_FLAGS, TAG_SIZE = 14, 15
STATS_CACHE_ONLY, STATS_EXPLAIN, STATS_INGEST = 1, 2, 4
SYNC_UNCONFIRMED_OK = 1
SYNC_TIMEOUT_S = 60.0  # a degraded watcher makes SYNC a full rescan of the tree


class LinkError(Exception):
    """The daemon could not be reached or refused; str() is a one-line reason."""


class NoDaemon(LinkError):
    """Nobody listens on the socket (start one and retry)."""


def encode(mtype: int, request_id: int, fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(FIELD.pack(tag, len(value)) + value for tag, value in fields)
    return HEADER.pack(MAGIC, VERSION, mtype, request_id, len(body)) + body


def _recv_exact(sock, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 16))
        if not chunk:
            raise LinkError("the daemon closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def decode_reply(sock, mtype: int, request_id: int) -> dict[int, bytes]:
    magic, version, rtype, rid, length = HEADER.unpack(_recv_exact(sock, HEADER.size))
    if magic != MAGIC or version != VERSION or length > MAX_BODY:
        raise LinkError("the daemon answered with a malformed frame")
    body = _recv_exact(sock, length)
    fields: dict[int, bytes] = {}
    pos = 0
    while pos < len(body):
        if len(body) - pos < FIELD.size:
            raise LinkError("the daemon answered with a truncated field")
        tag, size = FIELD.unpack_from(body, pos)
        pos += FIELD.size
        if size > len(body) - pos:
            raise LinkError("the daemon answered with a truncated field")
        fields.setdefault(tag, body[pos:pos + size])
        pos += size
    if rtype == MSG_ERROR:
        reason = fields.get(TAG_TEXT, b"").decode(errors="replace")
        raise LinkError(f"the daemon refused: {reason}")
    if rtype != (mtype | REPLY_BIT) or rid != request_id:
        raise LinkError("the daemon's reply does not match the request")
    return fields


def hello_sync(socket_path: str, root: str, timeout_s: float, cache: bool = False,
               sync_timeout_s: float = SYNC_TIMEOUT_S) -> dict[str, str | int]:
    """Connect, HELLO (naming the root) and SYNC; returns the daemon's identity after the
    barrier: root, vdir, socket, staging_dir, generation (and with `cache`, the action cache's
    counters before the build, as "cache", from a STATS pipelined behind the SYNC).  A daemon
    that just started answers SYNC after its first ingest: its caller waits longer."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout_s)
        try:
            sock.connect(os.fsencode(socket_path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoDaemon(f"no daemon answers on {socket_path} ({e.strerror})") from None
        except OSError as e:
            raise LinkError(f"cannot connect to {socket_path}: {e.strerror or e}") from None
        try:
            # SYNC_UNCONFIRMED_OK: a restarted daemon answers before its start-up reconcile ends
            # (what it has not confirmed is DIRTY: the build's processes ask the kernel for it)
            frames = (encode(MSG_HELLO, 1, [(TAG_ROOT, os.fsencode(root))])
                      + encode(MSG_SYNC, 2, [(TAG_FLAGS, struct.pack("<I", SYNC_UNCONFIRMED_OK))]))
            if cache:
                frames += encode(MSG_STATS, 3, [(TAG_FLAGS, struct.pack("<I", STATS_CACHE_ONLY))])
            sock.sendall(frames)
            hello = decode_reply(sock, MSG_HELLO, 1)
            sock.settimeout(max(timeout_s, sync_timeout_s))
            sync = decode_reply(sock, MSG_SYNC, 2)
            counts = _stats_json(decode_reply(sock, MSG_STATS, 3)) if cache else None
        except TimeoutError:
            raise LinkError(f"the daemon on {socket_path} did not answer in time") from None
        except OSError as e:
            raise LinkError(f"connection to {socket_path} lost ({e.strerror or e})") from None
    finally:
        sock.close()
    info: dict[str, str | int] = {
        name: os.fsdecode(hello.get(tag, b""))
        for name, tag in (("root", TAG_ROOT), ("vdir", TAG_VDIR), ("socket", TAG_SOCKET),
                          ("staging_dir", TAG_STAGING_DIR))
    }
    info["generation"] = int.from_bytes(sync.get(TAG_GENERATION, b"\0" * 8), "little")
    if counts is not None:
        info["cache"] = counts
    if not info["vdir"] or not info["socket"]:
        raise LinkError("the daemon's HELLO lacks the VDir or socket path")
    return info


def _stats_json(fields: dict[int, bytes]) -> dict:
    import json  # loaded already by wrapcache; local to keep this module's imports bare

    try:
        data = json.loads(fields.get(TAG_JSON, b"{}"))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def cache_stats(socket_path: str, timeout_s: float, explain_since: int | None = None) -> dict:
    """The action cache's counters after a build (and the explanations of misses newer than
    `explain_since`); {} when the daemon cannot say."""
    fields = [(TAG_FLAGS, struct.pack("<I", STATS_CACHE_ONLY | (STATS_EXPLAIN if explain_since is not None else 0)))]
    if explain_since is not None:
        fields.append((TAG_SIZE, struct.pack("<Q", explain_since)))
    return _stats(socket_path, timeout_s, fields)


def ingest_progress(socket_path: str, timeout_s: float) -> dict:
    """How far the daemon's running full ingest is: {"ingest": {"count", "total"} or None,
    "entries"}; {} when the daemon cannot say."""
    return _stats(socket_path, timeout_s, [(TAG_FLAGS, struct.pack("<I", STATS_INGEST))])


def _stats(socket_path: str, timeout_s: float, fields: list[tuple[int, bytes]]) -> dict:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout_s)
        sock.connect(os.fsencode(socket_path))
        sock.sendall(encode(MSG_STATS, 1, fields))
        return _stats_json(decode_reply(sock, MSG_STATS, 1))
    except (OSError, LinkError):
        return {}
    finally:
        sock.close()
