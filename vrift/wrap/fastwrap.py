"""`vrift wrap [-q] [--root DIR] [--adapter NAME] [--] TOOL ARGS…` without click.

`vrift/__main__.py` calls `fast_wrap` before anything else is imported: the wrapper has to
reach the tool's exec in a few milliseconds (SPEC §12).  The common path — project daemon
running, no third-party plugin, configuration unchanged since the last run — imports no
click, yaml, pluggy, importlib.metadata, dataclasses or pathlib: root and id come from
`locate`, the configuration values and plugin list from `wrapcache`, HELLO + SYNC go over a
bare socket (`daemonlink`).  Everything else (first run, a plugin installed, no daemon yet)
takes the slower general path through the same function.  `fast_wrap` returns None for what
it does not parse itself (`--help`, unknown options, no command): click then explains.

Flow: adapter (by tool name) → project root → settings → plugins → daemon HELLO + SYNC →
environment (LD_PRELOAD + VRIFT_*) → hooks → the tool → counters → summary on stderr.  When
vrift is disabled or any part of it is missing or broken, the tool runs unchanged on the real
filesystem and the summary says why.
"""
from __future__ import annotations

import os
import sys
import time

from .. import locate, onoff
from ..daemon import configrecord
from ..defaults import WRAP_SETTINGS
from ..errors import VriftError
from . import cacheenv, counters, environment, process, report, wrapcache
from .adapters.base import select
from .daemonlink import LinkError, NoDaemon, hello_sync

DEFAULT_SOCKET_TIMEOUT_MS = WRAP_SETTINGS["daemon.socket_timeout_ms"]
SHUTDOWN_IF_IDLE = 2  # vrift.daemon.server.SHUTDOWN_IF_IDLE, without importing the server
FIRST_SYNC_TIMEOUT_S = 600.0  # vrift.daemon.server.REQUEST_TIMEOUT_S: how long SYNC waits in the daemon


class WrapOptions:
    __slots__ = ("argv", "quiet", "root", "adapter", "no_cache", "explain", "summary_json")

    def __init__(self, argv: list[str], quiet: bool = False, root: str | None = None, adapter: str | None = None,
                 no_cache: bool = False, explain: bool = False, summary_json: str | None = None):
        self.argv = list(argv)
        self.quiet = quiet
        self.root = root
        self.adapter = adapter
        self.no_cache = no_cache
        self.explain = explain
        self.summary_json = summary_json  # a file for the summary as JSON ("-": stderr)


def parse(argv: list[str]) -> WrapOptions | None:
    """The wrap options and the command; None when click should handle the command line."""
    opts = WrapOptions([])
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if word in ("-q", "--quiet"):
            opts.quiet = True
        elif word == "--no-cache":
            opts.no_cache = True
        elif word == "--explain":
            opts.explain = True
        elif word in ("--root", "--adapter", "--summary-json"):
            if i + 1 >= len(argv):
                return None
            setattr(opts, word[2:].replace("-", "_"), argv[i + 1])
            i += 1
        elif word.startswith(("--root=", "--adapter=", "--summary-json=")):
            name, _, value = word[2:].partition("=")
            setattr(opts, name.replace("-", "_"), value)
        elif word.startswith("-"):
            return None
        else:
            break
        i += 1
    opts.argv = argv[i:]
    return opts if opts.argv else None


def fast_wrap(argv: list[str]) -> int | None:
    opts = parse(argv)
    if opts is None:
        return None
    try:
        return wrap(opts)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if isinstance(e, VriftError):
            print(f"vrift: error: {e}", file=sys.stderr, flush=True)
            return 1
        raise


# -- the steps ---------------------------------------------------------------------------------
def load_hooks(env):
    """The built-in hooks without pluggy when nothing else is installed, else the manager."""
    from ..hooks.entrypoints import installed_entry_points, only_builtins, plugin_search_path

    cache = os.path.join(locate.run_dir(env), "wrap-plugins.json")
    search = plugin_search_path(sys.path, os.getcwd())
    stamps = wrapcache.plugin_stamps(search)
    entry_points = wrapcache.cached_entry_points(cache, stamps)
    if entry_points is None:
        entry_points = installed_entry_points(search)
        wrapcache.store_entry_points(cache, stamps, entry_points)
    if only_builtins(entry_points, ()):
        from ..hooks.direct import BuiltinHooks

        hooks = BuiltinHooks()
        if hooks.usable():
            return hooks, entry_points
    from ..hooks.manager import load

    return load(entry_points=entry_points), entry_points


def env_disabled(env) -> str | None:
    """Why the kill switches in the environment turn vrift off, or None.  A value that is not
    an on/off word is a configuration error: the build runs plainly and the summary says so
    (the preload library, given the same word, stays off too)."""
    for name, off_when in (("VRIFT_ENABLED", False), ("VRIFT_FALLBACK_MODE", True)):
        text = env.get(name)
        if text is None or not text.strip():
            continue
        value = onoff.parse(text)
        if value is None:
            return f"configuration error: environment variable {name}: {onoff.expected(text)}"
        if value == off_when:
            return f"{name}={text.strip()}"
    return None


class Settings:
    """The configuration values the wrapper needs, from the cache or from vrift.config."""

    def __init__(self, root: str, project_id: str, env):
        self.root = root
        self.env = env
        self.config = None  # the full Config object, loaded only when someone needs it
        self.error: str | None = None
        home = locate.home_root(env)
        cache = os.path.join(home, "run", f"wrap-{project_id[:16]}.json")
        stamps = wrapcache.settings_stamps(root, home, env)
        values = wrapcache.cached_settings(cache, stamps)
        if values is None:
            try:
                cfg = self.full_config()
                values = {key: _plain(cfg[key]) for key in wrapcache.SETTINGS_KEYS}
            except Exception as e:
                if not isinstance(e, VriftError):
                    raise
                self.error = f"configuration error: {e}"
                # placeholders only: disabled() reports the error, so the build runs plainly
                values = {k: list(v) if isinstance(v, list) else v for k, v in WRAP_SETTINGS.items()}
            else:
                wrapcache.store_settings(cache, stamps, values)
        self.values = values

    def full_config(self):
        if self.config is None:
            from .. import config as config_mod
            from ..home import Home

            self.config = config_mod.load(self.root, env=dict(self.env), home=Home.from_env(self.env))
        return self.config

    def __getitem__(self, key: str):
        return self.values[key]

    def disabled(self) -> str | None:
        if self.error:
            return self.error
        if not self["enabled"]:
            return "disabled by the configuration (enabled: false)"
        if self["fallback_mode"]:
            return "fallback mode is configured (fallback_mode: true)"
        return None


def _plain(value):
    """A configuration value as JSON can store it."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def connect(root: str, project_id: str, env, timeout_ms: int, cache: bool = False,
            meter: bool = False) -> tuple[dict | None, str | None]:
    """(daemon identity after SYNC, None) or (None, why vrift cannot be used).  The identity
    has "new_project" when this call made the directory a project (its first build).  With
    `meter`, a daemon started here shows its first ingest's progress on a terminal."""
    first = None
    restarted = False
    if configrecord.daemon_config_stale(locate.run_dir(env), project_id, root, locate.home_root(env)):
        restarted = stop_for_new_config(env, project_id, timeout_ms)
    try:
        info = hello_sync(locate.project_socket(env, project_id), root, timeout_ms / 1000, cache)
        return info, None
    except NoDaemon:
        pass
    except LinkError as e:  # e.g. a daemon shutting down: ask the coordinator for a live one
        first = str(e)
    from ..daemon.client import ensure_daemon
    from ..home import Home
    from ..identity import Project
    from ..registry import Registry

    try:
        home = Home.from_env(env).ensure()
        project = Project.at(root)
        registry = Registry(home)
        new = project.id not in registry.load()
        registry.touch(project)
        started = ensure_daemon(home, project)
        from .ingestmeter import IngestMeter

        # SYNC waits for the new daemon's ingest of the tree: minutes for a big first one
        with IngestMeter(started["socket"], enabled=meter):
            info = hello_sync(started["socket"], root, timeout_ms / 1000, cache, sync_timeout_s=FIRST_SYNC_TIMEOUT_S)
        info["new_project"] = new and not restarted
        info["config_restart"] = restarted
        return info, None
    except (VriftError, LinkError) as e:
        return None, f"the daemon is unavailable: {e if first is None else first}"


def stop_for_new_config(env, project_id: str, timeout_ms: int) -> bool:
    """The configuration changed since the project daemon started: stop it, unless a build
    is using it (it then stops by itself when idle), so that this build starts one that reads
    the new settings.  True when it stopped."""
    from pathlib import Path

    from ..daemon import process
    from ..daemon.client import ProjectClient
    from ..daemon.protocol import Msg, Tag
    sock = locate.project_socket(env, project_id)
    pid = process.read_pid(Path(sock[:-len(".sock")] + ".pid"))
    try:
        with ProjectClient(sock, timeout_ms) as c:
            stopped = c.request(Msg.SHUTDOWN, (Tag.FLAGS, SHUTDOWN_IF_IDLE)).int(Tag.FLAGS, 0) == 1
    except VriftError:
        return False
    deadline = time.monotonic() + 30
    while stopped and pid and process.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return stopped


def choose_adapter(hooks, opts: WrapOptions, forced: str | None, cwd: str):
    """(adapter, directory where root discovery starts)."""
    adapter = select(hooks.adapters(), opts.argv[0], forced)
    try:
        return adapter, adapter.start_dir(opts.argv, cwd)
    except Exception as e:  # noqa: BLE001 - a third-party adapter's bug costs only its -C handling
        print(f"vrift: adapter {adapter.name!r} failed in start_dir: {type(e).__name__}: {e}", file=sys.stderr)
        return adapter, cwd


class Plan:
    """What the preparation decided: who runs the tool, in which environment, and why vrift
    is not used (`reason`) when it is not."""

    def __init__(self, env, reason: str | None, hooks=None, adapter=None, root: str | None = None):
        self.env = dict(env)
        self.reason = reason
        self.hooks = hooks
        self.adapter = adapter
        self.root = root
        self.project = None
        self.config = None
        self.counters_path: str | None = None
        self.cache_before: dict | None = None  # the daemon's cache counters when the build started
        self.socket: str | None = None
        self.new_project = False
        self.config_restart = False
        self.daemon_note: str | None = None  # the daemon died during the build (daemon/watchdog.py)


def prepare(opts: WrapOptions, env) -> Plan:
    """Everything before the tool starts.  VriftError means the command line is wrong (exit 1)."""
    hooks, _ = load_hooks(env)
    adapter, start = choose_adapter(hooks, opts, opts.adapter, os.getcwd())
    root, error = locate.find_root(start, opts.root, env)
    if root is None:
        raise VriftError(error)
    if not (opts.root or env.get("VRIFT_PROJECT_ROOT") or locate.has_marker(root) or locate.registered(root, env)):
        # no .vrift.yaml, .git, build.ninja or Makefile here or above: not a project, and
        # making one of / or ~ by accident is worse than one plain run
        return Plan(env, f"no project here (run `vrift init` in {root} to make it one)", hooks, adapter, None)
    project_id = locate.project_id(root)
    settings = Settings(root, project_id, env)
    plugins = list(settings["plugins"] or [])
    if plugins:
        if hooks.builtin_only:
            from ..hooks.manager import load

            hooks = load()
        hooks.load_modules(plugins)
    configured = settings["adapter"] if settings["adapter"] not in (None, "", "auto") else None
    if plugins or (configured and not opts.adapter):
        adapter = select(hooks.adapters(), opts.argv[0], opts.adapter or configured)
    plan = Plan(env, settings.disabled(), hooks, adapter, root)
    if not hooks.builtin_only:  # the built-ins implement no per-build hook: nobody needs these
        from ..identity import Project

        plan.project, plan.config = Project.at(root), _config_or_none(settings)

    lib = locate.preload_library(env)
    if plan.reason is None and (lib is None or not os.path.isfile(lib)):
        plan.reason = f"the preload library is missing ({lib or 'not built: reinstall vrift'})"
    if plan.reason is None:
        timeout_ms = int(settings["daemon.socket_timeout_ms"] or DEFAULT_SOCKET_TIMEOUT_MS)
        cache = bool(settings["cache.enabled"]) and not opts.no_cache
        info, plan.reason = connect(root, project_id, env, timeout_ms, cache, meter=not opts.quiet)
        if info is not None:
            plan.new_project = bool(info.get("new_project"))
            plan.config_restart = bool(info.get("config_restart"))
            plan.counters_path = counters.create_counters(os.path.dirname(info["vdir"]))
            plan.env = environment.vrift_env(env, lib, info, plan.counters_path, settings["daemon.socket_timeout_ms"])
            plan.socket = info["socket"]
            explain = opts.explain or "cache" in env.get("VRIFT_DEBUG", "").split(",")
            if cacheenv.cache_env(plan.env, cache, settings["cache.env"] or [], explain, settings["cache.tools"]):
                plan.cache_before = (info.get("cache") or {}).get("cache") or {}
    if plan.reason is not None or plan.cache_before is None:
        cacheenv.cache_env(plan.env, False, [], False)
    return plan


def wrap(opts: WrapOptions, env=None) -> int:
    t0 = time.monotonic()
    env = os.environ if env is None else env
    off = env_disabled(env)
    if off:  # the kill switch: no configuration, no plugins, no daemon, the tool as it is
        code = process.run(opts.argv, dict(env))
        return finish(opts, report.summarize(None, time.monotonic() - t0, off), code)
    try:
        plan = prepare(opts, env)
    except Exception as e:
        if isinstance(e, VriftError):
            raise
        # a bug or a broken installation of vrift must not stop the build: run it plainly
        plan = Plan(env, f"internal error: {type(e).__name__}: {e}")
    argv = list(opts.argv)
    counts = None
    if plan.config_restart and not opts.quiet:
        print("vrift: the configuration changed: restarted the project daemon with it", file=sys.stderr, flush=True)
    if plan.new_project and not opts.quiet:
        print("vrift: first build of this project: indexed it and started its daemon "
              "(`vrift status` shows it, `vrift forget` undoes it)", file=sys.stderr, flush=True)
    try:
        if plan.adapter is not None:
            try:
                plan.adapter.prepare_env(plan.env, argv)
            except Exception as e:  # noqa: BLE001 - a third-party adapter's bug
                print(f"vrift: adapter {plan.adapter.name!r} failed in prepare_env: {type(e).__name__}: {e}",
                      file=sys.stderr)
        if plan.hooks is not None:
            plan.hooks.prepare_env(plan.project, plan.config, plan.env)
            plan.hooks.pre_build(plan.project, plan.config, argv)
        watch = None
        if plan.socket:  # the daemon dies during the build: ask for it back (bounded)
            from ..daemon.watchdog import DaemonWatch

            watch = DaemonWatch(plan.socket, plan.root, env).start()
        code = process.run(argv, plan.env)
        if watch is not None:
            watch.stop()
            plan.daemon_note = watch.note()
        if plan.counters_path:
            counts = counters.read_counters(plan.counters_path)
    finally:
        counters.remove_quietly(plan.counters_path)
    summary = report.summarize(counts, time.monotonic() - t0, plan.reason)
    if plan.daemon_note:
        summary["daemon_restarts"] = plan.daemon_note
    if plan.cache_before is not None:
        explain = plan.env.get("VRIFT_CACHE_EXPLAIN") == "1"
        after = daemon_cache_stats(plan, explain)
        summary["cache"] = report.cache_summary(plan.cache_before, after.get("cache") or {},
                                                (counts or {}).get("fast_hits"))
        summary["index_files"] = after.get("entries")
        if explain and not opts.quiet:
            for line in report.explain_lines(after.get("explain") or []):
                print(line, file=sys.stderr)
    summary.update(adapter=plan.adapter.name if plan.adapter else None, root=plan.root)
    if plan.hooks is not None:
        plan.hooks.post_build(plan.project, plan.config, argv, code, summary)
    return finish(opts, summary, code)


def daemon_cache_stats(plan: Plan, explain: bool) -> dict:
    from .daemonlink import cache_stats

    since = int(plan.cache_before.get("seq", 0)) if explain else None
    return cache_stats(plan.socket, DEFAULT_SOCKET_TIMEOUT_MS / 1000, since)


def finish(opts: WrapOptions, summary: dict, code: int) -> int:
    summary["exit_code"] = code
    if not opts.quiet:
        print(report.summary_line(summary), file=sys.stderr, flush=True)
    if opts.summary_json:
        write_summary_json(opts.summary_json, summary)
    return code


def write_summary_json(where: str, summary: dict) -> None:
    """The summary for scripts: one JSON object on a line, to a file or ("-") stderr."""
    import json

    text = json.dumps(summary, sort_keys=True, default=str) + "\n"
    if where == "-":
        sys.stderr.write(text)
        sys.stderr.flush()
        return
    try:
        with open(where, "w") as f:
            f.write(text)
    except OSError as e:
        print(f"vrift: cannot write the summary to {where}: {e.strerror or e}", file=sys.stderr, flush=True)


def _config_or_none(settings: Settings):
    try:
        return settings.full_config()
    except Exception:  # noqa: BLE001 - already reported as the fallback reason
        return None
