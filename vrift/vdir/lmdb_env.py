"""One LMDB environment handle per path and process, shared and reference-counted.

LMDB forbids opening the same environment twice in one process (locks would be lost), yet
several parts of a process open the same one: a project index and a read-only view of it, the
action cache from a daemon thread and a CLI command.  `acquire` returns the open handle when
there is one; `release` closes it with the last user."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import lmdb

from ..project import VriftError

_ENVS: dict[str, list] = {}  # realpath -> [env, refcount]
_LOCK = threading.Lock()


def acquire(path: Path, what: str, *, readonly: bool = False, **options) -> lmdb.Environment:
    """The environment at `path` (`what` names it in errors); `options` go to `lmdb.open`
    when this call is the one that opens it.  A writer may not share a read-only handle."""
    key = os.path.realpath(path)
    with _LOCK:
        held = _ENVS.get(key)
        if held is not None:
            if not readonly and held[0].flags()["readonly"]:
                raise VriftError(f"{what} {path}: already open read-only in this process")
            held[1] += 1
            return held[0]
        try:
            env = lmdb.open(str(path), readonly=readonly, create=not readonly, subdir=True, lock=True,
                            mode=0o600, **options)
        except lmdb.Error as e:
            raise VriftError(f"{what} {path}: cannot open: {e}") from e
        _ENVS[key] = [env, 1]
        return env


def release(env: lmdb.Environment) -> None:
    with _LOCK:
        for key, held in list(_ENVS.items()):
            if held[0] is env:
                held[1] -= 1
                if held[1] == 0:
                    del _ENVS[key]
                    env.close()
                return
