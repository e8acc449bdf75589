"""What `vrift wrap` remembers between runs so that it need not parse YAML or scan package
metadata each time: the few configuration values it uses, and the installed plugins.

Each record carries the stamps it was derived from and is used only while they still hold:
- settings: (mtime, size, inode, ctime) of the project's .vrift.yaml and the user config, the
  VRIFT_* environment, and the project root;
- plugins: sys.path and the mtime of each of its directories (installing or removing a
  distribution changes its site directory).
A missing, stale or unreadable record is simply rebuilt the slow way and rewritten (0600).
"""
from __future__ import annotations

import json
import os

from ..defaults import WRAP_SETTINGS

SETTINGS_KEYS = tuple(WRAP_SETTINGS)  # the values the wrapper reads (their defaults: vrift/defaults.py)
PER_RUN_ENV = frozenset({"VRIFT_COUNTERS"})  # set by the wrapper itself for each build
FORMAT = 1


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns]


def _read(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def _write(path: str, data: dict) -> None:
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
    return [_stamp(os.path.join(root, ".vrift.yaml")), _stamp(os.path.join(home_root, "config.yaml"))]


def daemon_config_path(run_dir: str, project_id: str) -> str:
    return os.path.join(run_dir, f"p-{project_id[:16]}.config")


def store_daemon_config(path: str, stamps: list, settings: dict) -> None:
    _write(path, {"stamps": stamps, "settings": settings})


def daemon_config(path: str) -> dict | None:
    """What a running daemon wrote at its start: {"stamps", "settings"}, or None."""
    return _read(path)


def daemon_config_stale(run_dir: str, project_id: str, root: str, home_root: str) -> bool:
    """Has the project's or the user's configuration file changed since its daemon started?"""
    data = _read(daemon_config_path(run_dir, project_id))
    return data is not None and data.get("stamps") != config_file_stamps(root, home_root)


def settings_stamps(root: str, home_root: str, env) -> dict:
    return {
        "root": root,
        "project_config": _stamp(os.path.join(root, ".vrift.yaml")),
        "user_config": _stamp(os.path.join(home_root, "config.yaml")),
        "env": sorted([k, v] for k, v in env.items() if k.startswith("VRIFT_") and k not in PER_RUN_ENV),
    }


def cached_settings(cache_path: str, stamps: dict) -> dict | None:
    data = _read(cache_path)
    if data is None or data.get("stamps") != stamps:
        return None
    settings = data.get("settings")
    return settings if isinstance(settings, dict) and set(settings) == set(SETTINGS_KEYS) else None


def store_settings(cache_path: str, stamps: dict, settings: dict) -> None:
    _write(cache_path, {"stamps": stamps, "settings": settings})


def plugin_stamps(sys_path: list[str]) -> dict:
    return {"sys_path": list(sys_path), "mtimes": [(_stamp(p) or [None])[0] for p in sys_path]}


def cached_entry_points(cache_path: str, stamps: dict) -> list[tuple[str, str]] | None:
    data = _read(cache_path)
    if data is None or data.get("stamps") != stamps or not isinstance(data.get("entry_points"), list):
        return None
    return [(str(name), str(target)) for name, target in data["entry_points"]]


def store_entry_points(cache_path: str, stamps: dict, entry_points: list[tuple[str, str]]) -> None:
    _write(cache_path, {"stamps": stamps, "entry_points": [list(ep) for ep in entry_points]})
