"""The wrapped build's environment: the LD_PRELOAD contract of docs/preload.md.

CONTRACT is its one definition: `vrift_env` sets it for `vrift wrap`, and the make fragment
(wrap/adapters/make/hook.py) writes it for the recipes of an unpreloaded make;
tests/unit/test_single_sources.py runs make on the fragment and compares."""
from __future__ import annotations

# variable -> the field of the daemon's HELLO reply (vrift/wrap/daemonlink.py) it carries
CONTRACT = (("VRIFT_PROJECT_ROOT", "root"), ("VRIFT_VDIR", "vdir"), ("VRIFT_SOCKET", "socket"),
            ("VRIFT_STAGING_DIR", "staging_dir"))


def vrift_env(base, lib: str, info: dict, counters: str | None, socket_timeout_ms: int | None) -> dict:
    """The wrapped build's environment: the caller's, plus the contract of docs/preload.md."""
    env = dict(base)
    for var, field in CONTRACT:
        env[var] = info[field]
    if counters:
        env["VRIFT_COUNTERS"] = counters
    if socket_timeout_ms is not None and "VRIFT_SOCKET_TIMEOUT_MS" not in base:
        env["VRIFT_SOCKET_TIMEOUT_MS"] = str(socket_timeout_ms)
    env["LD_PRELOAD"] = with_preload(base.get("LD_PRELOAD", ""), lib)
    return env


def with_preload(existing: str, lib: str) -> str:
    """`lib` first, then what was preloaded already (kept; not added twice in a nested wrap)."""
    others = [p for p in existing.replace(":", " ").split() if p != lib]
    return " ".join([lib, *others])
