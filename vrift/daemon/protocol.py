"""The wire protocol of the daemons (docs/protocol.md is the normative description).

Every number here mirrors vrift/native/vrift_proto.h, the one definition the preload library
compiles; tests/unit/test_protocol.py checks each constant against the compiled header both ways.

A frame is a fixed 16-byte little-endian header followed by a body of TLV fields:

    header: u32 magic "VRP1" | u16 version | u16 type | u32 request_id | u32 body_length
    field:  u16 tag | u32 length | length bytes

Fixed-size binary fields keep the protocol easy to speak from C without a parser; rich
answers that only Python reads (STATS, LIST, INGEST) carry one JSON field.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag

MAGIC = b"VRP1"
VERSION = 1
HEADER = struct.Struct("<4sHHII")
HEADER_SIZE = HEADER.size  # 16
FIELD = struct.Struct("<HI")
FIELD_SIZE = FIELD.size  # 6
MAX_BODY = 1 << 20  # 1 MiB: a bigger declared body is a protocol error
MAX_FIELDS = 4096
REPLY_BIT = 0x8000


class Msg(IntEnum):
    # project daemon
    HELLO = 0x01
    SYNC = 0x02
    COMMIT = 0x03
    BEGIN_WRITE = 0x04
    INVALIDATE = 0x05
    STATS = 0x06
    INGEST = 0x07
    SHUTDOWN = 0x08
    PING = 0x09
    VDIR_BAD = 0x0A
    ACTION_LOOKUP = 0x30
    ACTION_END = 0x31
    # one-way notifications of the write path: never answered, not even with an ERROR
    WRITING = 0x40
    WRITTEN = 0x41
    CHANGED = 0x42
    ACTION_REPLAYED = 0x43
    # coordinator
    ENSURE_PROJECT = 0x20
    LIST = 0x21
    STOP_PROJECT = 0x22
    # any reply to a failed request
    ERROR = 0x7FFF


ONE_WAY = frozenset({Msg.WRITING, Msg.WRITTEN, Msg.CHANGED, Msg.ACTION_REPLAYED})


class Tag(IntEnum):
    PATH = 1          # bytes, repeatable: absolute, or relative to the project root
    STAGING = 2       # bytes: a staging file (absolute)
    PID = 3           # u32
    GENERATION = 4    # u64
    TEXT = 5          # UTF-8
    JSON = 6          # UTF-8 JSON document
    ROOT = 7          # bytes: project root (absolute, canonical)
    VDIR = 8          # bytes: path of the VDir shared-memory file
    SOCKET = 9        # bytes: path of a Unix socket
    DIGEST = 10       # 32 bytes: BLAKE3
    STAGING_DIR = 11  # bytes: the project's staging directory
    ERROR_CODE = 12   # u32, see Err
    COUNT = 13        # u32
    FLAGS = 14        # u32
    SIZE = 15         # u64
    PROJECT_ID = 16   # 32 ASCII hex chars
    ARG = 17          # bytes, repeatable: argv[0..n] of an action, in order
    ENV = 18          # bytes, repeatable: NAME=value of a variable that is part of an action's key
    ACTION = 19       # 16 ASCII hex chars: an action's id
    STDOUT = 20       # bytes: an action's recorded stdout
    STDERR = 21       # bytes: an action's recorded stderr
    STDIN = 30        # bytes: the regular file behind an action's fd 0 (absolute), read from its start
    STREAMS = 22      # ASCII: what an action's fd 0/1/2 are (terminal and its size, pipe, shared), part of its key
    CWD = 23          # bytes: an action's working directory (absolute)
    STATUS = 24       # u32: an action's exit status
    SEQUENCE = 25     # u64: a sequence number of the action cache's explanations
    STDIN_OFFSET = 26  # u64: where an action leaves the offset of its stdin file
    HELD = 27         # u32: paths kept DIRTY because a writer still holds them
    KEY_HASH = 28     # u64: the key hash of an action-table record (ACTION_REPLAYED)
    IDENTITY = 29     # ASCII: "dev ino size mtime_ns ctime_ns" of an inode, in decimal
    UMASK = 31        # u32: an action root's umask (shapes its outputs' modes), part of its key


class Err(IntEnum):
    BAD_FRAME = 1       # bad magic/length/TLV: the connection is closed after the reply
    BAD_VERSION = 2     # closed after the reply
    TOO_LARGE = 3       # closed after the reply
    BAD_REQUEST = 4     # unknown type or missing/invalid field; connection stays open
    PATH_REJECTED = 5   # outside the root, staging outside the staging dir, symlink escape, NUL
    NOT_FOUND = 6
    IO_ERROR = 7        # an OSError on the daemon side (text says which)
    SHUTTING_DOWN = 8
    LIMIT = 9           # a global limit (projects, shared memory, connections)
    INTERNAL = 10


# errors after which the daemon closes the connection (SHUTTING_DOWN: the daemon is going away)
CLOSING_ERRORS = frozenset({Err.BAD_FRAME, Err.BAD_VERSION, Err.TOO_LARGE, Err.SHUTTING_DOWN})


# FLAGS bits, one class per message (VRP_F_<GROUP>_<NAME> in the header)
class LookupFlag(IntFlag):
    HIT = 1        # ACTION_LOOKUP reply: the outputs are in place, replay and exit
    NO_RECORD = 2  # ACTION_LOOKUP reply: uncacheable by configuration, do not record


class EndFlag(IntFlag):
    RECORDING = 1  # ACTION_END reply: an entry is being recorded


class ChangedFlag(IntFlag):
    SHALLOW = 1  # CHANGED, INVALIDATE: only the named entries changed, not what is under a directory


class StatsFlag(IntFlag):
    CACHE_ONLY = 1  # only the action cache's counters (no writer round trip)
    EXPLAIN = 2     # with the explanations of misses newer than SEQUENCE
    INGEST = 4      # only how far a running full ingest is (no writer: it is busy with it)


class SyncFlag(IntFlag):
    UNCONFIRMED_OK = 1  # SYNC request: answer before a restarted daemon's start-up reconcile ends


class ShutdownFlag(IntFlag):
    ALL = 1      # to the coordinator: stop every project daemon too
    IF_IDLE = 2  # to a project daemon: stop unless another client (a build) is connected


class ShutdownReplyFlag(IntFlag):
    STOPPING = 1  # the project daemon stops (0: refused, busy)


class ErrorFlag(IntFlag):
    MOVED = 1  # ERROR of a COMMIT: the staging file was already renamed onto the real path


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
U32_TAGS = frozenset({Tag.PID, Tag.ERROR_CODE, Tag.COUNT, Tag.FLAGS, Tag.UMASK, Tag.STATUS, Tag.HELD})
U64_TAGS = frozenset({Tag.GENERATION, Tag.SIZE, Tag.SEQUENCE, Tag.STDIN_OFFSET, Tag.KEY_HASH})


class ProtocolError(Exception):
    """A frame that cannot be accepted; `code` says which Err to answer with."""

    def __init__(self, code: Err, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class Frame:
    type: int
    request_id: int = 0
    fields: list[tuple[int, bytes]] = field(default_factory=list)

    # -- building -------------------------------------------------------------------------
    def add(self, tag: int, value: bytes | str | int) -> "Frame":
        if isinstance(value, int):
            value = (_U64 if tag in U64_TAGS else _U32).pack(value)
        elif isinstance(value, str):
            value = value.encode("utf-8", "backslashreplace")  # a path decoded with surrogates stays sendable
        self.fields.append((int(tag), bytes(value)))
        return self

    def add_json(self, obj) -> "Frame":
        return self.add(Tag.JSON, json.dumps(obj, default=str, separators=(",", ":")))

    def encode(self) -> bytes:
        body = b"".join(FIELD.pack(t, len(v)) + v for t, v in self.fields)
        if len(body) > MAX_BODY:
            raise ProtocolError(Err.TOO_LARGE, f"body of {len(body)} bytes exceeds {MAX_BODY}")
        return HEADER.pack(MAGIC, VERSION, self.type, self.request_id, len(body)) + body

    # -- reading --------------------------------------------------------------------------
    def get(self, tag: int, default=None) -> bytes | None:
        for t, v in self.fields:
            if t == tag:
                return v
        return default

    def all(self, tag: int) -> list[bytes]:
        return [v for t, v in self.fields if t == tag]

    def int(self, tag: int, default: int | None = None) -> int | None:
        v = self.get(tag)
        if v is None:
            return default
        size = 8 if tag in U64_TAGS else 4
        if len(v) != size:
            raise ProtocolError(Err.BAD_REQUEST, f"field {Tag(tag).name} must be {size} bytes, got {len(v)}")
        return (_U64 if size == 8 else _U32).unpack(v)[0]

    def text(self, tag: int = Tag.TEXT, default: str | None = None) -> str | None:
        v = self.get(tag)
        return default if v is None else v.decode("utf-8", "replace")

    def json(self):
        v = self.get(Tag.JSON)
        return None if v is None else json.loads(v)

    @property
    def is_error(self) -> bool:
        return self.type == Msg.ERROR

    @property
    def base_type(self) -> int:
        return self.type & ~REPLY_BIT


def reply(request: Frame) -> Frame:
    return Frame(request.type | REPLY_BIT, request.request_id)


def error(request_id: int, code: Err, reason: str) -> Frame:
    return Frame(Msg.ERROR, request_id).add(Tag.ERROR_CODE, int(code)).add(Tag.TEXT, reason[:4000])


def parse_header(data: bytes) -> tuple[int, int, int]:
    """(type, request_id, body_length) of a 16-byte header, or ProtocolError."""
    magic, version, mtype, request_id, length = HEADER.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(Err.BAD_FRAME, f"bad magic {magic!r} (expected {MAGIC!r})")
    if version != VERSION:
        raise ProtocolError(Err.BAD_VERSION, f"protocol version {version} not supported (speak {VERSION})")
    if length > MAX_BODY:
        raise ProtocolError(Err.TOO_LARGE, f"declared body of {length} bytes exceeds {MAX_BODY}")
    return mtype, request_id, length


def parse_body(mtype: int, request_id: int, body: bytes) -> Frame:
    fields: list[tuple[int, bytes]] = []
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < FIELD_SIZE:
            raise ProtocolError(Err.BAD_FRAME, f"truncated field header at body offset {pos}")
        tag, length = FIELD.unpack_from(body, pos)
        pos += FIELD_SIZE
        if length > end - pos:
            raise ProtocolError(Err.BAD_FRAME, f"field tag {tag} declares {length} bytes, {end - pos} left")
        fields.append((tag, body[pos:pos + length]))
        pos += length
        if len(fields) > MAX_FIELDS:
            raise ProtocolError(Err.BAD_FRAME, f"more than {MAX_FIELDS} fields")
    return Frame(mtype, request_id, fields)


def recv_exact(sock, n: int) -> bytes | None:
    """n bytes from a blocking socket; None on a clean EOF before the first byte."""
    if n == 0:
        return b""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise ProtocolError(Err.BAD_FRAME, f"connection closed mid-frame ({len(buf)} of {n} bytes)")
        buf += chunk
    return bytes(buf)


def read_frame(sock) -> Frame | None:
    """One frame from a blocking socket; None at EOF; ProtocolError on a bad frame."""
    head = recv_exact(sock, HEADER_SIZE)
    if head is None:
        return None
    mtype, request_id, length = parse_header(head)
    body = recv_exact(sock, length)
    if body is None:
        raise ProtocolError(Err.BAD_FRAME, "connection closed before the body")
    return parse_body(mtype, request_id, body)
