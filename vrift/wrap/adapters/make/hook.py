"""The one-line Makefile opt-in: recipes run under the preload library without wrapping make.

The line (HOOK_LINE) goes near the top of a Makefile.  When make parses it, `$(shell vrift
hook make --emit)` finds the project, makes sure its daemon runs, waits for the SYNC barrier,
writes a small makefile fragment that exports LD_PRELOAD and the VRIFT_* variables, and
prints its path; `-include` reads it, so every recipe (and every process a recipe starts)
runs under the library.  Sub-makes inherit the exported VRIFT_VDIR, and the `$(if …)` skips
the shell call for them, as it does under `vrift wrap make`.  When vrift is disabled or
broken, nothing is printed on stdout (the reason goes to stderr) and make runs as if the line
were not there; when vrift is not installed at all, the shell says so and the same holds.
make itself is not preloaded (it was started before the line was read): its own stat calls
go to the kernel.  docs/integrations.md has the details and the limits.
"""
from __future__ import annotations

import os

from .... import locate
from ... import cacheenv
from ...environment import CONTRACT

HOOK_LINE = "-include $(if $(VRIFT_VDIR),,$(shell command -v vrift >/dev/null && vrift hook make --emit))"


def make_quote(value: str) -> str:
    """A value that make reads back literally in `VAR := value` (`$` and `#` are special)."""
    return value.replace("$", "$$").replace("#", "\\#")


# what an action's recording leaves in the environment: never inherited by a recipe (the role
# is exported as "each" instead)
ACTION_VARS = (*(v for v in cacheenv.ACTION_VARS if v != "VRIFT_ACTION_ROLE"), "VRIFT_CACHE_EXPLAIN")


def cache_lines(names) -> list[str]:
    """The action cache's part of the contract (docs/cache.md) for recipes of an unpreloaded
    make: each process make starts is an action root (`VRIFT_ACTION_ROLE=each`), as the
    children of the build tool under `vrift wrap make` are."""
    return ["export VRIFT_CACHE := 1",
            "export VRIFT_ACTION_ROLE := each",
            f"export VRIFT_CACHE_ENV := {make_quote(cacheenv.key_env(names))}",
            "unexport " + " ".join(ACTION_VARS)]


def fragment(root: str, lib: str, info: dict, cache_names=None) -> str:
    lines = [f"# vrift: recipes of {make_quote(root)} run under the preload library (vrift hook make --emit)",
             *(f"export {var} := {make_quote(info[field])}" for var, field in CONTRACT),
             # expanded once, when make reads it: what the environment preloaded already is kept
             f"export LD_PRELOAD := {make_quote(lib)} $(filter-out {make_quote(lib)},$(LD_PRELOAD))"]
    if cache_names is not None:
        lines += cache_lines(cache_names)
    return "\n".join(lines) + "\n"


def write_if_changed(path: str, text: str) -> None:
    """Atomically, and only when the content differs (make compares makefile mtimes)."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except OSError:
        pass
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def emit(cwd: str, env, explicit_root: str | None = None) -> tuple[str | None, str | None]:
    """(path of the fragment to include, None) or (None, why the recipes run without vrift).
    Never raises: whatever goes wrong, make must go on without vrift."""
    try:
        return _emit(cwd, env, explicit_root)
    except Exception as e:  # noqa: BLE001 - a broken vrift must not break the Makefile
        return None, f"{type(e).__name__}: {e}"


def _emit(cwd: str, env, explicit_root: str | None) -> tuple[str | None, str | None]:
    from ...fastwrap import DEFAULT_SOCKET_TIMEOUT_MS, Settings, connect, env_disabled

    root, error = locate.find_root(cwd, explicit_root, env)
    if root is None:
        return None, error
    project_id = locate.project_id(root)
    settings = Settings(root, project_id, env)
    reason = env_disabled(env) or settings.disabled()
    if reason:
        return None, reason
    lib = locate.preload_library(env)
    if lib is None or not os.path.isfile(lib):
        return None, f"the preload library is missing ({lib or 'not built: reinstall vrift'})"
    info, reason = connect(root, project_id, env, int(settings["daemon.socket_timeout_ms"] or DEFAULT_SOCKET_TIMEOUT_MS))
    if info is None:
        return None, reason
    # as `vrift wrap make` does: the cache on unless configured off, left alone inside an
    # action already recorded (a make run by a recipe of an outer wrapped build)
    cache = None
    if settings["cache.enabled"] and not env.get("VRIFT_ACTION_STARTED"):
        cache = list(settings["cache.env"] or [])
    path = os.path.join(locate.run_dir(env), f"make-{project_id[:16]}.mk")
    write_if_changed(path, fragment(root, lib, info, cache))
    return path, None
