"""Who may own a shared-memory file: the rules of vrift_shm_file_ok/vrift_shm_dir_ok in
vrift/native/vrift_vdir.h, mirrored (tests/unit/test_robust_shm.py checks the mirror against C).

Every shared-memory file of a user lives in <shm>/vrift-<euid>/, a directory only that user
can enter.  A name anyone could pre-create in /dev/shm would let another local user read the
whole index of a project (paths, sizes, digests) or feed false answers to its builds.
"""
from __future__ import annotations

import logging
import os
import stat as statmod
from pathlib import Path

from ..errors import VriftError

log = logging.getLogger("vrift.shm")
_said: set[str] = set()


def say_once(key: str, message: str) -> None:
    """One warning per process and subject: a refused file is reported, not every time it is seen."""
    if key not in _said:
        _said.add(key)
        log.warning("%s", message)


def file_problem(st: os.stat_result, euid: int | None = None) -> str | None:
    """Why a file with this lstat/fstat may not be used as one of ours; None when it may."""
    euid = os.geteuid() if euid is None else euid
    if not statmod.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_uid != euid:
        return f"owned by uid {st.st_uid}, not by you (uid {euid})"
    if st.st_mode & 0o077:
        return f"mode {statmod.S_IMODE(st.st_mode):04o} lets other users in (expected 0600)"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} names (a hard link to it exists)"
    return None


def dir_problem(st: os.stat_result, euid: int | None = None) -> str | None:
    euid = os.geteuid() if euid is None else euid
    if not statmod.S_ISDIR(st.st_mode):
        return "a symbolic link" if statmod.S_ISLNK(st.st_mode) else "not a directory"
    if st.st_uid != euid:
        return f"owned by uid {st.st_uid}, not by you (uid {euid})"
    if st.st_mode & 0o077:
        return f"mode {statmod.S_IMODE(st.st_mode):04o} lets other users in (expected 0700)"
    return None


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory only this user can use: created 0700 if missing; a mode that is
    too open on our own directory is tightened; a link or file of ours in its place is removed
    and the directory created; someone else's directory there is refused (VriftError)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise VriftError(f"shared-memory directory {path.parent} exists and is not a directory "
                         f"(set VRIFT_SHM_DIR to a directory)") from None
    except OSError as exc:
        raise VriftError(f"shared-memory directory {path.parent}: cannot be created ({exc.strerror})") from None
    for _ in range(3):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise VriftError(f"shared-memory directory {path}: cannot be created ({exc.strerror})") from None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        problem = dir_problem(st)
        if problem is None:
            return path
        if statmod.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
            os.chmod(path, 0o700)
            say_once(str(path), f"shared-memory directory {path}: {problem}; set to 0700")
            return path
        if not statmod.S_ISDIR(st.st_mode):
            try:
                os.unlink(path)
            except OSError:
                break
            say_once(str(path), f"shared-memory directory {path}: was {problem}; removed and created anew")
            continue
        break
    raise VriftError(f"shared-memory directory {path}: {problem}; refusing to use it "
                     f"(remove it, or set VRIFT_SHM_DIR to a directory of your own)")
