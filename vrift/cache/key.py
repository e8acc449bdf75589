"""An action's key (SPEC §11): BLAKE3 over argv, the cwd relative to the project root (absolute
when outside it), the executable's digest, the configured environment variables, what its
stdout/stderr are (a terminal of which size, or not; one destination or two) and what
plugins add (the `vrift_cache_key` hook).  The root itself is not part of the key, so two
checkouts of the same sources share entries.

Every part is length-prefixed and tagged, so no two different actions hash the same bytes.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import blake3

from ..cas.store import hash_file

# a new version whenever what a fingerprint must contain grows: entries recorded without it
# (a sub-make recorded whole, a clock or cwd read not seen, no stat observations, PATH in the
# key) must never be replayed
KEY_VERSION = b"vrift-action-key/3"


@dataclass(frozen=True)
class Action:
    """What a LOOKUP describes: passed to plugins' vrift_cache_key as `action`."""

    argv: tuple[bytes, ...]
    cwd: bytes            # absolute
    exe: bytes            # absolute path of the executable (symlinks resolved)
    env: tuple[bytes, ...] = ()  # NAME=value, in the order the configuration lists the names
    root: bytes = b""
    action_id: str = ""
    streams: bytes = b""  # what the tool sees on fd 0/1/2, e.g. b"out=tty,80x24 err=out" (docs/cache.md)
    umask: bytes = b""  # octal, e.g. b"022": the modes of what the action creates depend on it

    @property
    def tool(self) -> str:
        return os.path.basename(os.fsdecode(self.exe))

    @property
    def cwd_rel(self) -> bytes:
        return relative(self.cwd, self.root)


def relative(path: bytes, root: bytes) -> bytes:
    """`path` relative to `root` when inside it (b"." for the root), else unchanged."""
    if root and path == root:
        return b"."
    if root and path.startswith(root + b"/"):
        return path[len(root) + 1:]
    return path


class DigestMemo:
    """Digests of files by what their stat says: (dev, ino, size, mtime_ns, ctime_ns) cannot
    describe two contents, so a hit is always right and a changed file is simply hashed again."""

    def __init__(self, limit: int = 200_000):
        self._memo: dict[tuple, bytes] = {}
        self._lock = threading.Lock()
        self.limit = limit
        self.hashed = 0

    @staticmethod
    def stamp(st: os.stat_result) -> tuple:
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def known(self, st: os.stat_result) -> bytes | None:
        return self._memo.get(self.stamp(st))

    def remember(self, st: os.stat_result, digest: bytes) -> None:
        with self._lock:
            if len(self._memo) >= self.limit:
                self._memo.clear()
            self._memo[self.stamp(st)] = digest

    def digest(self, path: bytes | str, st: os.stat_result | None = None) -> bytes:
        """BLAKE3 of the file's content (following symlinks).  Raises OSError."""
        if st is None:
            st = os.stat(path)
        d = self.known(st)
        if d is not None:
            return d
        d, _ = hash_file(path)
        after = os.stat(path)
        self.hashed += 1
        if self.stamp(after) == self.stamp(st):  # unchanged while read: safe to remember
            self.remember(st, d)
        return d


def action_key(action: Action, exe_digest: bytes, plugin_bytes: bytes = b"") -> bytes:
    h = blake3.blake3(max_threads=1)

    def part(tag: bytes, value: bytes) -> None:
        h.update(tag + len(value).to_bytes(8, "little") + value)

    part(b"v", KEY_VERSION)
    for arg in action.argv:
        part(b"a", arg)
    part(b"c", action.cwd_rel)
    part(b"x", exe_digest)
    for var in action.env:
        part(b"e", var)
    part(b"s", action.streams)
    part(b"m", action.umask)
    part(b"p", plugin_bytes)
    return h.digest()
