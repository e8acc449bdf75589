"""Fingerprints: what one run of an action read, probed and listed, and what it produced
(SPEC §11, docs/cache.md).

`build()` turns the logs of a finished action into a Fingerprint, or says why the action is
uncacheable.  `match()` checks a fingerprint against the files as they are now and names the
first input that differs (for `--explain`).

Paths are stored relative to the project root when inside it (so another checkout of the same
sources matches) and absolute otherwise.  Digests of inputs come from a DigestMemo keyed by
stat fields, seeded from the project index where its entry still describes the file.

Over 500 lines because build() and match() must agree record kind by record kind (R, A, S, P, D,
C, B, outputs, streams): each kind's building and matching are kept next to each other.
"""
from __future__ import annotations

import errno
import fnmatch
import json
import os
import stat as statmod
import struct
import time
from dataclasses import dataclass, field

import blake3

from .. import locate
from . import search as pathsearch
from .actionlog import ActionLogs
from .key import DigestMemo

MAX_REPLAY_OUTPUT = 512 * 1024  # stdout + stderr: a LOOKUP reply must fit one frame
MAX_STREAM_CHUNKS = 1000  # alternations of stdout and stderr: one reply field each
_CHUNK = struct.Struct("<BI")
# Tools that copy the metadata of the files they read into their output's content (an archive
# member's mtime and mode): for a process running one, a stat of a file it reads records the
# mtime, mode and size too, not only the digest.
ARCHIVERS = frozenset(os.fsencode(n) for n in ("tar", "gtar", "bsdtar", "cpio", "pax", "zip", "gzip", "pigz",
                                                "bzip2", "xz", "zstd", "7z", "7za", "rsync"))
STATE_DIR = os.fsencode(locate.STATE_DIR)


class Uncacheable(Exception):
    """The action cannot be cached; str() is the reason (short, grouped in the stats)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        if self.detail.startswith(self.reason):
            return self.detail
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass
class Fingerprint:
    # [kind, path, digest hex | None, (D) skipped names | (S) observation | (R) {"x": bits}];
    # C: [C, cwd read, root]
    inputs: list[list] = field(default_factory=list)
    outputs: list[list] = field(default_factory=list)  # [rel path, digest hex, mode, size]
    streams: str | None = None  # digest of the packed (fd, bytes) chunks of stdout/stderr, in order
    status: int = 0
    size: int = 0
    created: float = 0.0
    tool: str = ""
    argv: list[str] = field(default_factory=list)
    stdin: list | None = None  # [stored path, offset left at the end]: the action read its fd 0, this file
    wall_s: float = 0.0  # how long the recorded run took: a hit saves about this much

    def content(self) -> dict:
        c = {"inputs": self.inputs, "outputs": self.outputs, "streams": self.streams, "status": self.status}
        if self.stdin is not None:
            c["stdin"] = self.stdin
        return c

    @property
    def id(self) -> bytes:
        return blake3.blake3(json.dumps(self.content(), separators=(",", ":"), sort_keys=True).encode(),
                             max_threads=1).digest()

    def to_json(self) -> dict:
        return {**self.content(), "size": self.size, "created": self.created, "tool": self.tool, "argv": self.argv,
                "wall_s": self.wall_s}

    @classmethod
    def from_json(cls, data: dict) -> "Fingerprint":
        return cls(inputs=data.get("inputs", []), outputs=data.get("outputs", []), streams=data.get("streams"),
                   status=int(data.get("status", 0)), size=int(data.get("size", 0)),
                   created=float(data.get("created", 0)), tool=data.get("tool", ""), argv=data.get("argv", []),
                   stdin=data.get("stdin"), wall_s=float(data.get("wall_s", 0) or 0))

    def digests(self) -> set[bytes]:
        """Every blob this fingerprint needs (for gc)."""
        out = {bytes.fromhex(o[1]) for o in self.outputs if o[1]}
        if self.streams:
            out.add(bytes.fromhex(self.streams))
        return out


def pack_streams(chunks: list[tuple[int, bytes]]) -> bytes:
    """The blob of an action's output: `u8 fd, u32 length (LE), bytes` per chunk, in order."""
    return b"".join(_CHUNK.pack(fd, len(data)) + data for fd, data in chunks)


def unpack_streams(blob: bytes) -> list[tuple[int, bytes]]:
    """The chunks of a pack_streams() blob; ValueError when it is not one."""
    chunks, pos = [], 0
    while pos < len(blob):
        if len(blob) - pos < _CHUNK.size:
            raise ValueError("a torn stream chunk")
        fd, n = _CHUNK.unpack_from(blob, pos)
        pos += _CHUNK.size
        if fd not in (1, 2) or n > len(blob) - pos:
            raise ValueError("a bad stream chunk")
        chunks.append((fd, blob[pos:pos + n]))
        pos += n
    return chunks


def _rel(path: bytes, root: bytes) -> bytes | None:
    if path.startswith(root + b"/"):
        return path[len(root) + 1:]
    return None


def _show(path: bytes) -> str:
    return os.fsdecode(path)


def listing_digest(path: bytes, skip: set[bytes] = frozenset()) -> bytes:
    names = sorted(n for n in os.listdir(path) if n not in skip)
    return blake3.blake3(b"\0".join(names), max_threads=1).digest()


def matches_tool(patterns, tool: str, argv0: str = "") -> bool:
    names = {tool, os.path.basename(argv0)} - {""}
    return any(fnmatch.fnmatchcase(n, p) for p in patterns or () for n in names)


class Context:
    """What building and matching need: the root, the CAS, the index (optional), a memo."""

    def __init__(self, root, cas, index=None, memo: DigestMemo | None = None, cache_failures: bool = False,
                 max_entry_mb: float = 64, never=(), always=()):
        self.root = os.fsencode(root)
        self.cas = cas
        self.index = index
        self.memo = memo or DigestMemo()
        self.cache_failures = cache_failures
        self.max_entry_bytes = int(float(max_entry_mb) * (1 << 20))
        self.never = list(never or ())
        self.always = list(always or ())

    def excluded_tool(self, tool: str, argv0: str = "") -> bool:
        return matches_tool(self.never, tool, argv0) and not matches_tool(self.always, tool, argv0)

    def absolute(self, stored: str) -> bytes:
        p = os.fsencode(stored)
        return p if p.startswith(b"/") else self.root + b"/" + p

    def stored(self, path: bytes) -> str:
        rel = _rel(path, self.root)
        return _show(path if rel is None else rel)

    def file_digest(self, path: bytes, st: os.stat_result) -> bytes:
        """Digest of a regular file now, from the memo or the index before hashing it."""
        d = self.memo.known(st)
        if d is not None:
            return d
        rel = _rel(path, self.root)
        if rel is not None and self.index is not None:
            e = self.index.get(rel)
            if e is not None and not e.is_deleted and any(e.digest) and e.same_file(st):
                self.memo.remember(st, e.digest)
                return e.digest
        return self.memo.digest(path, st)


# -- stat observations ('S') -----------------------------------------------------------------------
TYPE_NAMES = {"f": "a regular file", "d": "a directory", "l": "a symlink", "c": "a character device",
              "b": "a block device", "p": "a named pipe", "s": "a socket", "?": "something else"}


def _type(mode: int) -> str:
    for test, t in ((statmod.S_ISREG, "f"), (statmod.S_ISDIR, "d"), (statmod.S_ISLNK, "l"), (statmod.S_ISCHR, "c"),
                    (statmod.S_ISBLK, "b"), (statmod.S_ISFIFO, "p"), (statmod.S_ISSOCK, "s")):
        if test(mode):
            return t
    return "?"


def observe(path: bytes, how: str, read: bool, archived: bool = False,
            everything: bool = False) -> tuple[dict, os.stat_result | None]:
    """What a successful stat-family answer told the action, as far as it can matter (docs/cache.md,
    "How inputs are compared"): the type always; a symlink's target; for a file the action also
    read by content only its execute bits (the digest covers the rest, and a fresh checkout's
    mtimes must not make every compile miss); for a file it only stat'ed, its permission bits,
    size and mtime; for a directory its type (its names are a 'D' listing).  `archived`: stat'ed
    by an archiver (ARCHIVERS), which copies mode and mtime into its output: all of them, for a
    directory too.  `everything`: every field, for comparing with any recorded subset.  `how` is
    'f' (stat), 'l' (lstat, readlink) or 'a' (the access family: permission bits, no size or
    time).  An answer other than existence (EACCES, ELOOP) is recorded as that error.
    Raises FileNotFoundError/NotADirectoryError when the path is absent."""
    try:
        st = os.lstat(path) if how == "l" else os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        return {"h": how, "e": errno.errorcode.get(e.errno, str(e.errno))}, None
    t = _type(st.st_mode)
    obs: dict = {"h": how, "t": t}
    full = archived or everything
    if t == "l":
        obs["target"] = os.fsdecode(os.readlink(path))
        return obs, st
    if everything:
        obs["x"] = st.st_mode & 0o111
    if t == "d" and not full:
        if how == "a":
            obs["m"] = statmod.S_IMODE(st.st_mode)
    elif read and how != "a" and not full:
        obs["x"] = st.st_mode & 0o111
    else:
        obs["m"] = statmod.S_IMODE(st.st_mode)
        if how != "a" and (t in "fd" if full else t == "f"):
            if t == "f":
                obs["z"] = st.st_size
            obs["n"] = st.st_mtime_ns
    return obs, st


def observation_differs(stored: str, path: bytes, obs: dict) -> str | None:
    """None when `path` answers now as recorded in `obs`; else the difference in plain words."""
    try:
        now, _ = observe(path, obs.get("h", "f"), False, everything=True)
    except (FileNotFoundError, NotADirectoryError):
        return f"{stored} is now absent"
    if now.get("e") != obs.get("e"):
        return f"{stored} answers differently now ({now.get('e') or 'accessible'}, was {obs.get('e') or 'accessible'})"
    if now.get("t") != obs.get("t"):
        return f"{stored} is now {TYPE_NAMES.get(now.get('t'), '?')} (was {TYPE_NAMES.get(obs.get('t'), '?')})"
    if now.get("target") != obs.get("target"):
        return f"symlink {stored} points elsewhere now"
    for key, what in (("m", "mode"), ("x", "mode"), ("z", "size"), ("n", "mtime")):
        if key in obs and now.get(key) != obs[key]:
            return f"{what} of {stored} changed"
    return None


# -- building -------------------------------------------------------------------------------------
def _resolved_output(path: bytes) -> bytes:
    """An output's path with `..` resolved by the kernel, not by text: `inc/../x.o` with `inc`
    a symlink is written wherever `inc/..` really is (its parent directory exists: the file
    was just written there, or removed from it)."""
    if b"/.." not in path:
        return path
    parent, name = os.path.split(path)
    try:
        return os.path.join(os.path.realpath(parent), name)
    except OSError:
        return path


def classify(logs: ActionLogs, root: bytes):
    """(inputs {(kind, path)}, written paths, removed-not-written paths, in-place updates, paths
    only a failed mkdir wrote: EEXIST)."""
    state = root + b"/" + STATE_DIR
    writers: dict[bytes, set[int]] = {}
    ensured: set[bytes] = set()  # only by a mkdir that found them
    made: set[bytes] = set()
    removers: dict[bytes, set[int]] = {}
    reads: list[tuple[int, str, bytes, bool]] = []  # (process, kind, path, before this process's own write)
    for n, proc in enumerate(logs.processes):
        own: set[bytes] = set()
        for kind, raw in proc.events:
            if kind == "C":  # the cwd was read: the root's path is an input (build)
                continue
            # inputs keep their `..` as the action named them: matching opens the same string,
            # so the kernel resolves it through the symlinks as they are then
            path = _resolved_output(raw) if kind in "WU" else raw
            if path == state or path.startswith(state + b"/"):
                continue
            if kind == "W" or kind == "Sm":
                # Sm: mkdir found it there (`mkdir -p out`): had it been absent, the action would
                # have made it — a directory the action makes sure of, an output like a mkdir
                writers.setdefault(path, set()).add(n)
                own.add(path)
                if kind == "Sm":
                    ensured.add(path)
                else:
                    made.add(path)
            elif kind == "U":
                removers.setdefault(path, set()).add(n)
                own.add(path)
            else:
                reads.append((n, "R" if kind == "X" else kind, path, path not in own))
    touched = set(writers) | set(removers)
    inputs: dict[tuple[str, bytes], None] = {}
    in_place: list[bytes] = []
    for n, kind, path, before_own in reads:
        if path not in touched:
            inputs[(kind, path)] = None
            continue
        others = (writers.get(path, set()) | removers.get(path, set())) - {n}
        if kind == "B":
            # absent before a write-open that keeps content (`echo run >> log`): what the
            # action leaves there depends on that absence, whoever else writes it
            if before_own:
                inputs[(kind, path)] = None
            continue
        if before_own and not others:
            if kind[0] == "S":
                pass  # the state of a file this process then writes or removes (`rm -f x`, as)
            elif kind == "A":
                # a probe of the file it is about to create (as, ld and ar stat their output
                # first): existence alone is not taken as an input, or every rebuild over an
                # existing output would miss.  A tool that reads its old output is caught below.
                if n not in writers.get(path, ()):
                    inputs[(kind, path)] = None
            elif n in writers.get(path, ()) or n in removers.get(path, ()):
                # the content before the action mattered and is gone now: not seen whole
                in_place.append(path)
        # else: produced by another process of the action first (pipelines, temporaries)
    removed = [p for p in removers if p not in writers]
    return list(inputs), writers, removed, in_place, ensured - made


def build(logs: ActionLogs, ctx: Context, status: int, start_ns: int, tool: str = "",
          argv: list[bytes] = (), search: tuple[bytes | None, bytes] | None = None,
          stdin: bytes | None = None, stdin_end: int | None = None) -> Fingerprint:
    """The fingerprint of a finished action, with its outputs stored in the CAS; raises
    Uncacheable.  Call it right after the action ended: files are read as they are now.
    `search` is (PATH value or None when unset, cwd) of the action's root: where each name it
    looked up in PATH resolves becomes an input ('P'; the PATH string is not in the key).
    `stdin`: the file behind the root's fd 0 at its start; when the action read it (an R of
    it), a hit needs the same file there, and `stdin_end` is where the replay leaves its offset."""
    reasons = logs.reasons()
    if reasons:
        # grouped by kind in the stats: "static binary /x/y" counts as "static binary"
        raise Uncacheable(reasons[0].split(" /")[0].split(":")[0].strip()[:80], reasons[0])
    if logs.unfinished or not logs.processes:
        raise Uncacheable("a process of the action did not finish", ", ".join(logs.unfinished[:3]))
    if status != 0 and not ctx.cache_failures:
        raise Uncacheable("failed (non-zero exit status)", str(status))
    if tool and ctx.excluded_tool(tool, os.fsdecode(argv[0]) if argv else ""):
        raise Uncacheable("tool in cache.never", tool)
    root = ctx.root
    inputs, writers, removed, in_place, ensured = classify(logs, root)
    if in_place:
        raise Uncacheable("updates a file in place (read before write)", _show(in_place[0]))
    if removed:  # `mv a b` shows no read of a: what flowed where cannot be known
        raise Uncacheable("removes or moves a file it did not create", _show(removed[0]))
    chunks = logs.streams()
    streamed = sum(len(data) for _, data in chunks)
    if streamed > MAX_REPLAY_OUTPUT:
        raise Uncacheable("output too large", f"{streamed} bytes of stdout+stderr")
    if len(chunks) > MAX_STREAM_CHUNKS:
        raise Uncacheable("output too fragmented", f"stdout and stderr alternate {len(chunks)} times")
    fp = Fingerprint(status=status, tool=tool, argv=[os.fsdecode(a) for a in argv], created=round(time.time(), 3))
    if stdin is not None and ("R", stdin) in inputs:
        fp.stdin = [ctx.stored(stdin), int(stdin_end or 0)]
    # outputs: what the action wrote and left behind
    produced = []
    for path in sorted(writers):
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # a temporary: created and removed by the action
        rel = _rel(path, root)
        if rel is None and path in ensured:
            inputs.append(("Sl", path))  # a directory outside the root it found there
            continue
        if rel is None:
            raise Uncacheable("writes outside the project root", _show(path))
        if statmod.S_ISDIR(st.st_mode):
            produced.append((path, rel, None))  # created by the action (mkdir): replayed as one
            continue
        if path in ensured:  # mkdir met a file or symlink there: what it found is an input
            inputs.append(("Sl", path))
            continue
        if not statmod.S_ISREG(st.st_mode):
            raise Uncacheable("creates something other than a regular file", _show(path))
        produced.append((path, rel, st))
    total = streamed + sum(st.st_size for _, _, st in produced if st is not None)
    if total > ctx.max_entry_bytes:
        raise Uncacheable("entry larger than cache.max_entry_mb", f"{total} bytes")
    skip_names: dict[bytes, set[bytes]] = {}
    for path in writers:
        skip_names.setdefault(os.path.dirname(path), set()).add(os.path.basename(path))
    # the absolute path is in what the action read (gcc -g's DW_AT_comp_dir, `pwd`): another
    # checkout of the same sources must not get its outputs
    cwd = logs.cwd_read()
    if cwd is not None:
        fp.inputs.append(["C", os.fsdecode(cwd), os.fsdecode(root)])
    # inputs: as they are now, and unchanged since the action started
    archived = set()  # stat'ed by an archiver: its metadata reaches the output
    for proc in logs.processes:
        if any(k == "X" and os.path.basename(p) in ARCHIVERS for k, p in proc.events):
            archived |= {p for k, p in proc.events if k[0] == "S"}
    read = {path for kind, path in inputs if kind == "R"} - archived
    stat_read = {path for kind, path in inputs if kind == "Sf" and path in read}  # folded into 'R'
    for kind, path in sorted(inputs, key=lambda kp: (kp[1], kp[0])):
        if kind[0] == "S":
            if path in stat_read:
                continue
            try:
                obs, st = observe(path, kind[1], path in read, archived=path in archived)
            except OSError:
                raise Uncacheable("an input changed while the action ran", f"{_show(path)} vanished") from None
            if st is not None and obs["t"] != "d" and st.st_ctime_ns > start_ns:
                raise Uncacheable("an input changed while the action ran", _show(path))
            fp.inputs.append(["S", ctx.stored(path), None, obs])
        elif kind == "A":
            if os.path.lexists(path):
                raise Uncacheable("an input changed while the action ran", f"{_show(path)} appeared")
            fp.inputs.append(["A", ctx.stored(path), None])
        elif kind == "B":  # absent before the action created it: exists now, as its output
            fp.inputs.append(["A", ctx.stored(path), None])
        elif kind == "D":
            try:
                skip = sorted(skip_names.get(path, ()))
                digest = listing_digest(path, set(skip))
            except OSError:
                raise Uncacheable("an input changed while the action ran", f"{_show(path)} vanished") from None
            fp.inputs.append(["D", ctx.stored(path), digest.hex(), [os.fsdecode(s) for s in skip]])
        else:
            try:
                st = os.stat(path)
                if not statmod.S_ISREG(st.st_mode):
                    continue  # a device or fifo read is reported by an 'N' record
                if st.st_ctime_ns > start_ns:
                    raise Uncacheable("an input changed while the action ran", _show(path))
                digest = ctx.file_digest(path, st)
            except OSError:
                raise Uncacheable("an input changed while the action ran", f"{_show(path)} vanished") from None
            item = ["R", ctx.stored(path), digest.hex()]
            if path in stat_read:  # stat'ed and read: the digest, and whether it is executable
                item.append({"x": st.st_mode & 0o111})
            fp.inputs.append(item)
    if search is not None:
        dirs = pathsearch.search_dirs(*search)
        events = [e for proc in logs.processes for e in proc.events]
        for name in sorted(pathsearch.searched_names(events, argv[0] if argv else b"", dirs)):
            found = pathsearch.resolve(name, dirs)
            fp.inputs.append(["P", os.fsdecode(name), None if found is None else ctx.stored(found)])
    for path, rel, st in produced:
        if st is None:
            fp.outputs.append([os.fsdecode(rel), None, 0o755, 0])
            continue
        digest = _stored_output(ctx, path, rel, st)
        fp.outputs.append([os.fsdecode(rel), digest.hex(), statmod.S_IMODE(st.st_mode), st.st_size])
    if chunks:
        fp.streams = ctx.cas.store_bytes(pack_streams(chunks)).digest.hex()
    fp.size = total
    return fp


def _stored_output(ctx: Context, path: bytes, rel: bytes, st: os.stat_result) -> bytes:
    """The output's digest, its blob in the CAS (a committed file's blob is there already)."""
    if ctx.index is not None:
        e = ctx.index.get(rel)
        if e is not None and not e.is_deleted and any(e.digest) and e.same_file(st) and ctx.cas.has(e.digest):
            ctx.memo.remember(st, e.digest)
            return e.digest
    try:
        stored = ctx.cas.store_file(path)
    except FileNotFoundError:
        raise Uncacheable("an output changed after the action ended", _show(path)) from None
    return stored.digest


# -- matching -------------------------------------------------------------------------------------
def match(fp: Fingerprint, ctx: Context, search: tuple[bytes | None, bytes] | None = None,
          stdin: bytes | None = None) -> str | None:
    """None when every input of `fp` is as recorded now (and its blobs exist); else the first
    difference, as one line for --explain.  `search`: (PATH or None, cwd) of the lookup;
    `stdin`: the file behind fd 0 of the new process."""
    if fp.stdin is not None:
        now = ctx.stored(stdin) if stdin else None
        if now != fp.stdin[0]:
            return f"stdin is {'not a file read from its start' if now is None else now} (it was {fp.stdin[0]})"
    dirs = pathsearch.search_dirs(*search) if search is not None else None
    for item in fp.inputs:
        kind, stored, digest = item[0], item[1], item[2]
        if kind == "C":
            if os.fsdecode(ctx.root) != digest:
                return f"cwd differs and is read (the project is at {os.fsdecode(ctx.root)}, it was at {digest})"
            continue
        if kind == "P":
            if dirs is None:
                return f"{stored} was looked up in PATH, which this lookup does not give"
            found = pathsearch.resolve(os.fsencode(stored), dirs)
            if (None if found is None else ctx.stored(found)) != digest:
                return f"{stored} resolves to {_show(found) if found else 'nothing'} in PATH now (was {digest or 'nothing'})"
            continue
        path = ctx.absolute(stored)
        if kind == "S":
            why = observation_differs(stored, path, item[3])
            if why:
                return why
        elif kind == "A":
            if os.path.lexists(path):
                return f"{stored} exists now (it was absent)"
        elif kind == "D":
            skip = {os.fsencode(s) for s in (item[3] if len(item) > 3 else ())}
            try:
                if listing_digest(path, skip).hex() != digest:
                    return f"the listing of {stored} changed"
            except OSError:
                return f"directory {stored} is gone"
        else:
            try:
                st = os.stat(path)
                if not statmod.S_ISREG(st.st_mode):
                    return f"{stored} is no longer a regular file"
                if ctx.file_digest(path, st).hex() != digest:
                    return f"{stored} changed"
                if len(item) > 3 and st.st_mode & 0o111 != item[3].get("x"):
                    return f"mode of {stored} changed"
            except OSError:
                return f"{stored} is now absent"
    for rel, digest, *_ in fp.outputs:
        if digest and not ctx.cas.has(digest):
            return f"the blob of output {rel} is no longer in the CAS"
    if fp.streams and not ctx.cas.has(fp.streams):
        return "the blob of the recorded output is no longer in the CAS"
    return None
