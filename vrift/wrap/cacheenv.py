"""The action cache's variables in the wrapped build's environment (docs/cache.md)."""
from __future__ import annotations

ACTION_VARS = ("VRIFT_ACTION_ROLE", "VRIFT_ACTION_ID", "VRIFT_ACTION_STARTED", "VRIFT_ACTION_ROOT_PID",
               "VRIFT_ACTION_OUT", "VRIFT_ACTION_ERR")


def cache_env(env: dict, enabled: bool, names, explain: bool, tools=None) -> bool:
    """Turn the action cache on or off in the build's environment (docs/cache.md); True when on.
    Inside an action already being recorded (a `vrift wrap` run by a recipe) the wrapped tool
    stays a member of that action: its variables are left alone."""
    if env.get("VRIFT_ACTION_STARTED"):
        return False
    for var in ("VRIFT_CACHE", "VRIFT_CACHE_ENV", "VRIFT_CACHE_EXPLAIN", "VRIFT_CACHE_TOOLS", *ACTION_VARS):
        env.pop(var, None)
    if not enabled:
        return False
    env["VRIFT_CACHE"] = "1"
    env["VRIFT_ACTION_ROLE"] = "tool"
    env["VRIFT_CACHE_ENV"] = key_env(names)
    if tools is not None:  # unset: the preload library's built-in list (the default of cache.tools)
        env["VRIFT_CACHE_TOOLS"] = ":".join(tools)
    if explain:
        env["VRIFT_CACHE_EXPLAIN"] = "1"
    return True


def key_env(names) -> str:
    """VRIFT_CACHE_ENV for the configured `cache.env` names.  PATH is always sent: the daemon
    resolves the names an action looks up in it (not a key part)."""
    return ":".join(["PATH", *(n for n in names if n != "PATH")])
