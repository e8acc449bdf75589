"""What configuration a running project daemon read: written by the daemon at its start
(`p-<id16>.config` in the run directory), read by `vrift wrap` (a changed file restarts the
daemon) and `vrift daemon status`.  The small stamped JSON records here also serve the wrapper's
own caches (vrift/wrap/wrapcache.py).  Only `os`, `json` and `vrift.locate`: the wrap fast path reads these.
"""
from __future__ import annotations

import json
import os

from .. import locate

FORMAT = 1


def stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns]


def read_record(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_record(path: str, data: dict) -> None:
    """Best effort: a cache that cannot be written only costs the next run some time."""
    data = dict(data, format=FORMAT)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def config_file_stamps(root: str, home_root: str) -> list:
    """What a project daemon's configuration was read from: the project and user files."""
    return [stamp(os.path.join(root, locate.PROJECT_FILE)), stamp(os.path.join(home_root, locate.USER_CONFIG_FILE))]


def daemon_config_path(run_dir: str, project_id: str) -> str:
    return os.path.join(run_dir, f"p-{project_id[:16]}.config")


def store_daemon_config(path: str, stamps: list, settings: dict) -> None:
    write_record(path, {"stamps": stamps, "settings": settings})


def daemon_config(path: str) -> dict | None:
    """What a running daemon wrote at its start: {"stamps", "settings"}, or None."""
    return read_record(path)


def daemon_config_stale(run_dir: str, project_id: str, root: str, home_root: str) -> bool:
    """Has the project's or the user's configuration file changed since its daemon started?"""
    data = read_record(daemon_config_path(run_dir, project_id))
    return data is not None and data.get("stamps") != config_file_stamps(root, home_root)
