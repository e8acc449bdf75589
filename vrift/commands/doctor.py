"""The checks behind `vrift doctor`: each returns {name, level (0 ok, 1 warn, 2 fail), detail}."""
from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from .. import native
from ..errors import VriftError
from ..home import Home
from ..identity import Project
from ..registry import Registry

OK, WARN, FAIL = 0, 1, 2


def _check(name: str, level: int, detail: str) -> dict:
    return {"name": name, "level": level, "detail": detail}


def check_private_dir(name: str, path: Path) -> dict:
    if not path.exists():
        return _check(name, WARN, f"{path} does not exist yet (created on first use)")
    st = path.stat()
    if st.st_uid != os.getuid():
        return _check(name, FAIL, f"{path} is owned by uid {st.st_uid}, not you ({os.getuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        return _check(name, WARN, f"{path} is {oct(stat.S_IMODE(st.st_mode))}; expected 0700")
    if not os.access(path, os.W_OK):
        return _check(name, FAIL, f"{path} is not writable")
    return _check(name, OK, f"{path} (0700)")


def check_shm(home: Home) -> dict:
    d = home.shm_dir
    if not d.exists():
        return _check("shared memory", WARN, f"{d} does not exist yet")
    if not d.is_dir():
        return _check("shared memory", FAIL, f"{d} is not a directory: set VRIFT_SHM_DIR to one")
    if not os.access(d, os.W_OK):
        return _check("shared memory", FAIL, f"{d} is not writable")
    from ..vdir.shm_files import dir_problem

    mine = home.user_shm_dir
    if os.path.lexists(mine):
        problem = dir_problem(os.lstat(mine))
        if problem:
            return _check("shared memory", FAIL, f"{mine}: {problem}; remove it (vrift refuses to use it)")
    return _check("shared memory", OK, f"{mine}")


def check_native() -> dict:
    lib = native.vdir_native_library()
    if lib is None:
        return _check("native helper", FAIL, "not built: reinstall vrift with `pip install .`")
    try:
        ctypes.CDLL(str(lib))
    except OSError as e:
        return _check("native helper", FAIL, f"{lib}: {e}")
    return _check("native helper", OK, str(lib))


def check_preload() -> dict:
    lib = native.preload_library()
    if lib is None or not lib.exists():
        return _check("preload library", FAIL, "not built: reinstall vrift with `pip install .`; builds run unaccelerated")
    true = shutil.which("true") or "/bin/true"
    env = dict(os.environ, LD_PRELOAD=str(lib), VRIFT_ENABLED="0")
    proc = subprocess.run([true], env=env, capture_output=True, text=True)
    if proc.returncode != 0 or "cannot be preloaded" in proc.stderr:
        return _check("preload library", FAIL, f"{lib} does not load: {proc.stderr.strip()[:200]}")
    return _check("preload library", OK, f"{lib} loads")


def check_projects(home: Home) -> list[dict]:
    from ..vdir.readonly import open_readonly

    out = []
    for pid, info in sorted(Registry(home).load().items()):
        project = Project(root=Path(info["root"]), id=pid)
        name = f"index {info['root']}"
        if not home.db_dir(pid).exists():
            out.append(_check(name, WARN, "registered but never indexed"))
            continue
        try:
            with open_readonly(home, project) as view:
                out.append(_check(name, OK, f"LMDB readable, generation {view.generation}, {len(view):,} entries"))
                out.append(check_blobs(home, project, view))
        except (VriftError, OSError) as e:
            out.append(_check(name, FAIL, str(e)))
        vdir = check_vdir(home, project)
        if vdir is not None:
            out.append(vdir)
    return out


def check_blobs(home: Home, project: Project, view) -> dict:
    """Every digest the index refers to has its blob; a quarantined one is named as such."""
    from ..cas.store import CAS
    from ..vdir.entry import ZERO_DIGEST

    cas = CAS(home.cas_dir)
    try:
        quarantined = {n.split(".")[0] for n in os.listdir(home.cas_dir / "quarantine")}
    except OSError:
        quarantined = set()
    missing = q = 0
    first = None
    for e in view.entries():
        if e.digest != ZERO_DIGEST and not cas.has(e.digest):
            missing += 1
            q += e.digest.hex() in quarantined
            first = first or os.fsdecode(e.path)
    name = f"blobs {project.root}"
    if missing and _ingest_blobs(home, project) == "lazy":  # the tree holds a source's bytes, not the CAS
        return _check(name, OK, f"{missing:,} indexed files have no blob ({q:,} quarantined): sources are "
                                f"hashed, not copied (ingest_blobs: lazy); blobs are stored when needed")
    if missing:
        return _check(name, FAIL, f"{missing:,} indexed files have no blob in the CAS ({q:,} quarantined), "
                                  f"e.g. {first}: run `vrift ingest {project.root}` to store them again")
    return _check(name, OK, "every indexed file has its blob")


def _ingest_blobs(home: Home, project: Project) -> str:
    from .. import config

    try:
        return config.load(project.root, home=home)["ingest_blobs"]
    except (VriftError, OSError):
        return "lazy"


def check_vdir(home: Home, project: Project) -> dict | None:
    """The project's shared-memory index: owner, structure and every entry's checksum."""
    from ..vdir.shm import VDirError, VDirReader

    path = home.vdir_path(project.id)
    name = f"VDir {project.root}"
    if not os.path.lexists(path):
        return None
    fix = "builds ask the kernel meanwhile; its daemon rebuilds it from LMDB (or: vrift daemon stop)"
    try:
        with VDirReader(path) as reader:
            damaged = reader.damaged()
            if damaged:  # the daemon may have been rewriting an entry: damage stays, a publish does not
                time.sleep(0.05)
                damaged = sorted(set(damaged) & set(reader.damaged()))
            n = len(reader)
    except VDirError as e:
        return _check(name, FAIL, f"{e}; {fix}")
    if damaged:
        return _check(name, FAIL, f"{path}: {len(damaged)} of its entries fail their checksum; {fix}")
    return _check(name, OK, f"{path}: {n:,} entries, checksums verified")


def check_free_space(home: Home) -> dict:
    target = home.root if home.root.exists() else home.root.parent
    usage = shutil.disk_usage(target)
    gib = usage.free / 2**30
    level = FAIL if usage.free < 100 * 2**20 else WARN if usage.free < 2**30 else OK
    return _check("free space", level, f"{gib:.1f} GiB free under {target}")


def check_inotify() -> dict:
    try:
        watches = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return _check("inotify", WARN, "limits unreadable: the watcher may fall back to rescans")
    level = WARN if watches < 65536 else OK
    return _check("inotify", level, f"max_user_watches {watches:,}" +
                  ("; large trees fall back to a full rescan at each sync" if level else ""))


def check_watchers(home: Home) -> list[dict]:
    """Daemons whose watcher lost events or ran out of watches say so here."""
    try:
        from ..daemon.client import coordinator_status
        status = coordinator_status(home)
    except (OSError, VriftError):
        return []
    out = []
    for d in (status or {}).get("projects", []):
        watcher = d.get("watcher") or {}
        if watcher.get("degraded"):
            out.append(_check(f"watcher {d.get('root')}", WARN, watcher.get("reason", "degraded: full rescans")))
        elif watcher:
            out.append(_check(f"watcher {d.get('root')}", OK, f"{watcher.get('watches', '?')} watches"))
    return out


def check_tools() -> list[dict]:
    out = []
    for tool in ("ninja", "make", "cc"):
        path = shutil.which(tool)
        out.append(_check(f"tool {tool}", OK if path else WARN, path or "not found on PATH"))
    return out


def run_checks(home: Home) -> list[dict]:
    checks = [check_private_dir("home", home.root), check_shm(home), check_native(), check_preload(),
              check_free_space(home), check_inotify()]
    checks += check_projects(home)
    checks += check_watchers(home)
    checks += check_tools()
    return checks
