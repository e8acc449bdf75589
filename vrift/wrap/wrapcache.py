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

import os

from .. import locate
from ..daemon.configrecord import read_record, stamp, write_record
from ..defaults import WRAP_SETTINGS

SETTINGS_KEYS = tuple(WRAP_SETTINGS)  # the values the wrapper reads (their defaults: vrift/defaults.py)
PER_RUN_ENV = frozenset({"VRIFT_COUNTERS"})  # set by the wrapper itself for each build


def settings_stamps(root: str, home_root: str, env) -> dict:
    return {
        "root": root,
        "project_config": stamp(os.path.join(root, locate.PROJECT_FILE)),
        "user_config": stamp(os.path.join(home_root, locate.USER_CONFIG_FILE)),
        "env": sorted([k, v] for k, v in env.items() if k.startswith("VRIFT_") and k not in PER_RUN_ENV),
    }


def cached_settings(cache_path: str, stamps: dict) -> dict | None:
    data = read_record(cache_path)
    if data is None or data.get("stamps") != stamps:
        return None
    settings = data.get("settings")
    return settings if isinstance(settings, dict) and set(settings) == set(SETTINGS_KEYS) else None


def store_settings(cache_path: str, stamps: dict, settings: dict) -> None:
    write_record(cache_path, {"stamps": stamps, "settings": settings})


def plugin_stamps(sys_path: list[str]) -> dict:
    return {"sys_path": list(sys_path), "mtimes": [(stamp(p) or [None])[0] for p in sys_path]}


def cached_entry_points(cache_path: str, stamps: dict) -> list[tuple[str, str]] | None:
    data = read_record(cache_path)
    if data is None or data.get("stamps") != stamps or not isinstance(data.get("entry_points"), list):
        return None
    return [(str(name), str(target)) for name, target in data["entry_points"]]


def store_entry_points(cache_path: str, stamps: dict, entry_points: list[tuple[str, str]]) -> None:
    write_record(cache_path, {"stamps": stamps, "entry_points": [list(ep) for ep in entry_points]})
