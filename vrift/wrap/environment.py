"""The wrapped build's environment: the LD_PRELOAD contract of docs/preload.md.  The make
fragment (wrap/adapters/make/hook.py) writes the same contract for an unpreloaded make;
tests/test_wrap_fast.py checks the two agree."""
from __future__ import annotations

def vrift_env(base, lib: str, info: dict, counters: str | None, socket_timeout_ms: int | None) -> dict:
    """The wrapped build's environment: the caller's, plus the contract of docs/preload.md."""
    env = dict(base)
    env["VRIFT_PROJECT_ROOT"] = info["root"]
    env["VRIFT_VDIR"] = info["vdir"]
    env["VRIFT_SOCKET"] = info["socket"]
    env["VRIFT_STAGING_DIR"] = info["staging_dir"]
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
