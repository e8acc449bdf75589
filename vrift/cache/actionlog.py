"""The per-process logs a recording action leaves under `<root>/.vrift/actions/<id>/`
(docs/cache.md, "Recording in the preload library").

Each process writes `<pid>.<n>.log`: records `u8 kind, u32 length (LE), payload`.  A torn last
record (the process was killed mid-write) ends that log; the log then has no 'Z' and the action
is uncacheable, so nothing half-seen is ever stored.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field

from ..cas.store import open_regular
from ..errors import VriftError

HEAD = struct.Struct("<BI")
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")
KINDS = frozenset(b"RADWUXCSOENTZB")
ACTIONS_DIR = "actions"
MAX_LOG_BYTES = 256 << 20  # a log bigger than this is not read: the action is uncacheable


@dataclass
class ProcessLog:
    name: str
    # (kind, path) in order: R A D W U X C B, and 'S' + its flavour ('Sf' stat, 'Sl' lstat/readlink,
    # 'Sa' access, 'Sm' mkdir found it existing)
    events: list[tuple[str, bytes]] = field(default_factory=list)
    output: list[tuple[int, int, str, bytes]] = field(default_factory=list)  # (time, seq, 'O'|'E', bytes)
    uncacheable: list[str] = field(default_factory=list)
    status: int | None = None  # from 'Z'; None when the process did not finish
    torn: bool = False
    last: str = ""  # kind of the last record: 'X' when the image exec'd another one

    @property
    def pid(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass
class ActionLogs:
    processes: list[ProcessLog]

    @property
    def unfinished(self) -> list[str]:
        """Logs of images that neither exited normally ('Z') nor exec'd into another image of
        the same process (whose own log then carries the 'Z')."""
        count: dict[str, int] = {}
        for p in self.processes:
            count[p.pid] = count.get(p.pid, 0) + 1
        return [p.name for p in self.processes
                if p.status is None and not (p.last == "X" and not p.torn and count[p.pid] > 1)]

    def streams(self) -> list[tuple[int, bytes]]:
        """stdout and stderr of the whole tree as it wrote them: (fd, bytes) in order, 'O' to
        fd 1 and 'E' to fd 2, adjacent chunks of one fd joined.  The root writes them in the
        order its relay read them; logs are merged by the 'T' stamps (a process's own records
        stay in their order)."""
        chunks: list[tuple[int, bytes]] = []
        for _, _, kind, data in sorted(c for p in self.processes for c in p.output):
            fd = 1 if kind == "O" else 2
            if chunks and chunks[-1][0] == fd:
                chunks[-1] = (fd, chunks[-1][1] + data)
            elif data:
                chunks.append((fd, data))
        return chunks

    def cwd_read(self) -> bytes | None:
        """The first working directory a process of the action read ('C'), or None."""
        return next((path for p in self.processes for k, path in p.events if k == "C"), None)

    def reasons(self) -> list[str]:
        return [r for p in self.processes for r in p.uncacheable]


def parse(data: bytes, name: str = "<log>") -> ProcessLog:
    log = ProcessLog(name)
    pos, end = 0, len(data)
    stamp = 0
    seq = 0
    while pos < end:
        if end - pos < HEAD.size:
            log.torn = True
            break
        kind, length = HEAD.unpack_from(data, pos)
        pos += HEAD.size
        if length > end - pos or kind not in KINDS:
            log.torn = True
            break
        payload = data[pos:pos + length]
        pos += length
        k = chr(kind)
        log.last = k
        if k in "RADWUXCB":
            log.events.append((k, payload))
        elif k == "S":
            if length < 2 or payload[:1] not in (b"f", b"l", b"a", b"m"):
                log.torn = True
                break
            log.events.append(("S" + chr(payload[0]), payload[1:]))
        elif k in "OE":
            seq += 1
            log.output.append((stamp, seq, k, payload))
        elif k == "T":
            if length != 8:
                log.torn = True
                break
            stamp = U64.unpack(payload)[0]
        elif k == "N":
            log.uncacheable.append(payload.decode("utf-8", "replace").strip() or "uncacheable")
        elif k == "Z":
            if length != 4:
                log.torn = True
                break
            log.status = U32.unpack(payload)[0]
    if log.torn:
        log.status = None
    return log


def read_dir(directory: os.PathLike | str) -> ActionLogs:
    """Every log of one action.  Raises VriftError when the directory cannot be read."""
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".log"))
    except OSError as e:
        raise VriftError(f"{os.fsdecode(directory)}: cannot read the action's logs: {e.strerror or e}") from None
    logs = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd, _ = open_regular(path)  # a fifo or a device named *.log would block or never end
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_LOG_BYTES + 1)
        except OSError:
            logs.append(ProcessLog(name, torn=True))
            continue
        if len(data) > MAX_LOG_BYTES:
            log = ProcessLog(name, torn=True)
            log.uncacheable.append("a process log exceeds 256 MiB")
            logs.append(log)
            continue
        logs.append(parse(data, name))
    return ActionLogs(logs)


def take(directory: os.PathLike | str) -> ActionLogs:
    """Read an action's logs and remove its directory (whatever happens to the reading)."""
    try:
        return read_dir(directory)
    finally:
        remove(directory)


def remove(directory: os.PathLike | str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


# -- writing: the format, for tests and tools that play the preload library's part ---------------
def record(kind: str, payload: bytes | int = b"") -> bytes:
    if kind == "T":
        payload = U64.pack(payload)
    elif kind == "Z":
        payload = U32.pack(payload)
    elif isinstance(payload, str):
        payload = os.fsencode(payload)
    return HEAD.pack(ord(kind), len(payload)) + payload
