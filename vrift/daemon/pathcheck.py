"""Validation of every path a client sends (SPEC §5.3): inside the root, not in `.vrift/`,
staging files inside the project's staging dir, no symlink escape, no NUL."""
from __future__ import annotations

import os
import stat as statmod

from ..identity import STATE_DIR, Project
from .listener import RequestError
from .protocol import Err

MAX_PATH = 4096


def resolved(path: bytes, follow_last: bool = True) -> bytes:
    """The kernel's symlink-free name of `path` (O_PATH + /proc/self/fd: three system calls
    instead of one lstat per component); falls back to realpath when it does not exist."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | (0 if follow_last else os.O_NOFOLLOW))
    except OSError:
        return os.path.realpath(path)
    try:
        return os.readlink(f"/proc/self/fd/{fd}".encode())
    finally:
        os.close(fd)


def _reject(raw: bytes, why: str) -> RequestError:
    shown = raw[:200].decode("utf-8", "backslashreplace")
    return RequestError(Err.PATH_REJECTED, f"{shown}: {why}")


class PathPolicy:
    def __init__(self, project: Project):
        self.root = os.fsencode(project.root)
        self.staging = os.fsencode(os.path.realpath(project.staging_dir))  # root is already real
        self._state = STATE_DIR.encode()

    def absolute(self, rel: bytes) -> bytes:
        return self.root + b"/" + rel if rel else self.root

    def target(self, raw: bytes, *, allow_root: bool = True) -> bytes:
        """The path relative to the root of a project path named by a client.

        The directory part must not go through a symlink: the index is keyed by symlink-free
        paths, and a link could point outside the root.  The last component may itself be a
        symlink (it is indexed as one, never followed)."""
        if not raw:
            raise _reject(raw, "empty path")
        if b"\0" in raw:
            raise _reject(raw, "contains a NUL byte")
        if len(raw) > MAX_PATH:
            raise _reject(raw, f"longer than {MAX_PATH} bytes")
        absolute = raw if raw.startswith(b"/") else self.root + b"/" + raw
        norm = os.path.normpath(absolute)
        if norm == self.root:
            if not allow_root:
                raise _reject(raw, "is the project root itself")
            return b""
        if not norm.startswith(self.root + b"/"):
            raise _reject(raw, f"outside the project root {os.fsdecode(self.root)}")
        rel = norm[len(self.root) + 1:]
        if rel.split(b"/", 1)[0] == self._state:
            raise _reject(raw, "inside the project's .vrift state directory")
        parent = os.path.dirname(norm)
        real_parent = resolved(parent)
        if real_parent != parent:
            if real_parent != self.root and not real_parent.startswith(self.root + b"/"):
                raise _reject(raw, "symlink escape: its directory resolves outside the project root")
            raise _reject(raw, "its directory goes through a symlink (send the resolved path)")
        return rel

    def staging_file(self, raw: bytes) -> bytes:
        """The absolute path of a staging file: a regular file of ours under the staging dir."""
        if not raw or b"\0" in raw:
            raise _reject(raw, "staging path empty or contains a NUL byte")
        if not raw.startswith(b"/"):
            raise _reject(raw, "staging path must be absolute")
        norm = os.path.normpath(raw)
        if not norm.startswith(self.staging + b"/"):
            raise _reject(raw, f"staging file outside the staging directory {os.fsdecode(self.staging)}")
        if resolved(norm, follow_last=False) != norm:  # a symlink as last component fails S_ISREG
            raise _reject(raw, "staging path goes through a symlink")
        try:
            st = os.lstat(norm)
        except FileNotFoundError:
            raise RequestError(Err.NOT_FOUND, f"{os.fsdecode(norm)}: staging file does not exist") from None
        if not statmod.S_ISREG(st.st_mode):
            raise _reject(raw, "staging path is not a regular file")
        if st.st_uid != os.getuid():
            raise _reject(raw, "staging file belongs to another user")
        return norm
