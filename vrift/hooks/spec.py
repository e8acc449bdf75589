"""Hook specifications of vrift (pluggy project "vrift", entry-point group "vrift").

docs/plugins.md describes each hook for plugin authors.  Every hook is called with keyword
arguments; an implementation declares only the arguments it needs.  A hook that raises is
reported by plugin name on stderr and skipped: a plugin never takes a build down.  The marker
is vrift's own (the same attribute pluggy's sets): the wrap fast path reads these without pluggy.
"""
from __future__ import annotations

from .markers import hookspec


@hookspec
def vrift_register_adapters() -> list:
    """Return adapter objects (see vrift/wrap/adapters/base.py: `name`, `tools`, `handles(tool)`,
    `start_dir(argv, cwd)`, `prepare_env(env, argv)`) that `vrift wrap` may choose from."""


@hookspec
def vrift_prepare_env(project, config, env: dict) -> None:
    """Change `env` (a dict, mutated in place) before the wrapped build starts.  Called after
    vrift set its own variables (LD_PRELOAD, VRIFT_*), also when vrift runs in fallback."""


@hookspec
def vrift_pre_build(project, config, argv: list) -> None:
    """Called once before the build tool starts; `argv` is the tool's command line."""


@hookspec
def vrift_post_build(project, config, argv: list, exit_code: int, summary: dict) -> None:
    """Called once after the build tool exited.  `summary` holds the counters of the build
    (committed, stats_served, stats_passed, wall_s, fallback reason, …)."""


@hookspec
def vrift_index_filter(project, relpath: bytes) -> bool | None:
    """Return False to keep `relpath` (bytes, relative to the project root) out of the index.
    Every implementation is asked; one False excludes the path ("any False"); None or True
    keep it."""


@hookspec
def vrift_cache_key(action) -> bytes | str | None:
    """Return extra bytes (or text) to mix into `action`'s cache key, e.g. a compiler version
    the command line does not show.  Results are combined in plugin-name order."""
