"""Which plugins are installed: the entry-point group "vrift" (no pluggy needed to ask)."""
from __future__ import annotations

import os
import sys

ENTRY_POINT_GROUP = "vrift"

# The built-in adapters are plugins registered through pyproject.toml like third-party ones.
# They are also registered from the package itself when the installed metadata lacks them (a
# source checkout that was never `pip install`ed): vrift must still know its own adapters.
BUILTIN_PLUGINS = {
    "generic": "vrift.wrap.adapters.generic",
    "make": "vrift.wrap.adapters.make",
    "ninja": "vrift.wrap.adapters.ninja",
}


def plugin_search_path(sys_path: list[str], cwd: str) -> list[str]:
    """sys.path without the current directory: a build tree must not be able to inject a
    plugin by containing a *.dist-info (and the cache of the list must not depend on the
    build tree's mtime, which every build changes)."""
    return [p for p in sys_path if p not in ("", ".") and os.path.abspath(p) != cwd]


def installed_entry_points(path: list[str] | None = None) -> list[tuple[str, str]]:
    """(name, target) of every entry point of group "vrift" of the distributions found on
    `path` (default: sys.path without the current directory), sorted by name.  As in
    importlib.metadata.entry_points(), the first distribution of a given name wins."""
    from importlib.metadata import distributions

    if path is None:
        path = plugin_search_path(sys.path, os.getcwd())
    seen, found = set(), set()
    for dist in distributions(path=path):
        name = (dist.metadata["Name"] or "").lower().replace("-", "_")
        if name in seen:
            continue
        seen.add(name)
        found.update((ep.name, ep.value) for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP)
    return sorted(found)


def only_builtins(entry_points: list[tuple[str, str]], config_plugins) -> bool:
    """True when nothing but the built-in plugins would be loaded."""
    builtin = set(BUILTIN_PLUGINS.values())
    return not config_plugins and all(target in builtin for _, target in entry_points)
