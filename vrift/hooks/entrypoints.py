"""Which plugins are installed: the entry-point group "vrift" (no pluggy needed to ask)."""
from __future__ import annotations

ENTRY_POINT_GROUP = "vrift"

# The built-in adapters are plugins registered through pyproject.toml like third-party ones.
# They are also registered from the package itself when the installed metadata lacks them (a
# source checkout that was never `pip install`ed): vrift must still know its own adapters.
BUILTIN_PLUGINS = {
    "generic": "vrift.adapters.generic",
    "make": "vrift.adapters.make",
    "ninja": "vrift.adapters.ninja",
}


def installed_entry_points() -> list[tuple[str, str]]:
    """(name, target) of every installed entry point of group "vrift", sorted by name."""
    from importlib.metadata import entry_points

    return sorted({(ep.name, ep.value) for ep in entry_points(group=ENTRY_POINT_GROUP)})


def only_builtins(entry_points: list[tuple[str, str]], config_plugins) -> bool:
    """True when nothing but the built-in plugins would be loaded."""
    builtin = set(BUILTIN_PLUGINS.values())
    return not config_plugins and all(target in builtin for _, target in entry_points)
