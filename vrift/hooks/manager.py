"""The plugin manager: loads plugins, calls their hooks through pluggy, isolates the broken ones.

Plugins come from the entry-point group "vrift" (the built-in adapters are registered there
too, in pyproject.toml) and from the `plugins:` list of the configuration (module names).  A
plugin that cannot be imported or registered, or that raises inside a hook, is reported by
name in one line and skipped; the build goes on.  Calls go through pluggy's own call loop
(order, tryfirst/trylast, argument selection); each implementation is registered wrapped so
that its exception is reported and turned into "no result" instead of ending the loop, and so
that each result carries the name of the plugin that gave it.
"""
from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pluggy

from . import spec
from .calls import HookCalls, PluginFailure, Reporter, one_line, stderr_reporter
from .entrypoints import BUILTIN_PLUGINS, installed_entry_points
from .markers import PROJECT

__all__ = ["PluginFailure", "PluginInfo", "PluginManager", "load", "project_hooks", "stderr_reporter"]


@dataclass
class PluginInfo:
    name: str
    source: str  # "entry point", "config", "built-in"
    target: str  # the module (or module:attribute) it was loaded from
    hooks: list[str] = field(default_factory=list)


def import_target(target: str):
    """`module` or `module:attribute` → the object."""
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class PluginManager(HookCalls):
    def __init__(self, report: Reporter | None = stderr_reporter):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(spec)
        self.report = report
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._disabled_filters: set[str] = set()
        self._originals: dict[str, object] = {}  # plugin name -> the object it was loaded as

    # -- loading ---------------------------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[tuple[str, str]] | None = None) -> None:
        """Register every plugin of the entry-point group (or the given (name, target) pairs),
        then the built-in adapters that the installed metadata did not list."""
        listed = list(installed_entry_points() if entry_points is None else entry_points)
        for name, target in listed:
            self.add(name, target, "entry point")
        known_targets = {t for _, t in listed}
        for name, target in BUILTIN_PLUGINS.items():
            if target not in known_targets and name not in self.plugins:
                self.add(name, target, "built-in")

    def load_modules(self, targets: Iterable[str], source: str = "config") -> None:
        for target in targets:
            self.add(target, target, source)

    def add(self, name: str, target: str, source: str) -> None:
        if name in self.plugins or self.pm.has_plugin(name):
            self._fail(PluginFailure(name, source, "register", f"a plugin named {name!r} is already loaded"))
            return
        try:
            plugin = import_target(target)
        except BaseException as e:  # noqa: BLE001 - any import failure (even SystemExit) is the plugin's
            if isinstance(e, KeyboardInterrupt):
                raise
            self._fail(PluginFailure(name, source, "load", one_line(e)))
            return
        if any(other is plugin for other in self._originals.values()):
            self._fail(PluginFailure(name, source, "register",
                                     f"ValueError: Plugin already registered under a different name: {name}={plugin!r}"))
            return
        isolated = self._isolated(plugin, name)
        try:
            self.pm.register(isolated, name=name)
        except Exception as e:  # noqa: BLE001 - pluggy validation errors, bad signatures
            self._fail(PluginFailure(name, source, "register", one_line(e)))
            return
        problem = self._check(isolated)
        if problem:
            self.pm.unregister(isolated)
            self._fail(PluginFailure(name, source, "register", problem))
            return
        self._originals[name] = plugin
        hooks = sorted(c.name for c in self.pm.get_hookcallers(isolated) or [])
        self.plugins[name] = PluginInfo(name, source, target, hooks)

    def _isolated(self, plugin, name: str):
        """A stand-in for `plugin` that pluggy registers instead: each hook implementation
        wrapped (same marker options, same signature through functools.wraps) so that it
        returns (name, result) or None, and reports its exception instead of raising it."""
        stand_in = types.SimpleNamespace()
        for attr in dir(plugin):
            opts = self.pm.parse_hookimpl_opts(plugin, attr)
            if opts is None:
                continue
            function = getattr(plugin, attr)
            if not (opts.get("wrapper") or opts.get("hookwrapper")):  # wrappers: refused by _check as they are
                function = self._guard(function, name, opts.get("specname") or attr)
            setattr(stand_in, attr, function)
        return stand_in

    def _guard(self, function: Callable, plugin: str, hook: str) -> Callable:
        @functools.wraps(function)
        def guarded(*args):
            if hook == "vrift_index_filter" and plugin in self._disabled_filters:
                return None
            try:
                result = function(*args)
            except Exception as e:  # noqa: BLE001 - a plugin's bug must not stop the build
                if hook == "vrift_index_filter":  # asked per path: ignored for the rest of the walk
                    self._disabled_filters.add(plugin)
                self._fail(PluginFailure(plugin, self._source(plugin), hook, one_line(e)))
                return None
            return None if result is None else (plugin, result)

        return guarded

    def _check(self, plugin) -> str | None:
        """What pluggy accepts but vrift does not: hooks without a specification (a typo would
        otherwise be silently never called) and hook wrappers (calls are isolated per plugin)."""
        for caller in self.pm.get_hookcallers(plugin) or []:
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if not caller.has_spec() and not impl.optionalhook:
                    return f"unknown hook {caller.name} (see docs/plugins.md)"
                if impl.hookwrapper or impl.wrapper:
                    return f"{caller.name}: hook wrappers are not supported"
        return None

    def _fail(self, failure: PluginFailure) -> None:
        """Record a failure; report it once per plugin and hook (a hook may run per action)."""
        first = not any(f.name == failure.name and f.stage == failure.stage for f in self.failures)
        if first:
            self.failures.append(failure)
        if first and self.report is not None:
            self.report(failure.line())

    # -- calling ---------------------------------------------------------------------------------
    def call(self, hook: str, **kwargs) -> list[tuple[str, object]]:
        """Call every implementation of `hook` through pluggy (last registered first,
        tryfirst/trylast honoured); returns (plugin name, result) for results that are not None.
        An implementation that raises is reported and skipped (see `_guard`)."""
        return getattr(self.pm.hook, hook)(**kwargs)

    def bad_result(self, plugin: str, hook: str, problem: str) -> None:
        self._fail(PluginFailure(plugin, self._source(plugin), hook, problem))

    def _source(self, name: str) -> str:
        info = self.plugins.get(name)
        return info.source if info else "?"

    def index_filter(self, project) -> Callable[[bytes], bool] | None:
        """A `keep(relpath) -> bool` for the indexer, or None when no plugin filters (free).
        A plugin that raises is reported once and then ignored for the rest of the walk."""
        if not self.pm.hook.vrift_index_filter.get_hookimpls():
            return None

        def keep(relpath: bytes) -> bool:
            return all(verdict is not False for _, verdict in self.call("vrift_index_filter", project=project,
                                                                        relpath=relpath))

        return keep

    def cache_key(self, action) -> bytes:
        """The plugins' contributions to `action`'s key: for each plugin in name order,
        length-prefixed name and value, so that no two different contributions collide."""
        parts = []
        for plugin, value in sorted(self.call("vrift_cache_key", action=action), key=lambda r: r[0]):
            if isinstance(value, str):
                value = value.encode()
            if not isinstance(value, (bytes, bytearray)):
                self.bad_result(plugin, "vrift_cache_key", f"returned {type(value).__name__}, not bytes or str")
                continue
            name = plugin.encode()
            parts.append(len(name).to_bytes(4, "little") + name + len(value).to_bytes(8, "little") + bytes(value))
        return b"".join(parts)

    def describe(self) -> dict:
        """What `vrift plugins --json` prints."""
        return {"plugins": [vars(p) for p in self.plugins.values()],
                "failures": [vars(f) for f in self.failures]}


def load(config_plugins: Iterable[str] = (), report: Reporter | None = stderr_reporter,
         entry_points: Iterable[tuple[str, str]] | None = None) -> PluginManager:
    """A manager with the entry-point plugins (built-ins included) and the configured modules."""
    manager = PluginManager(report)
    manager.load_entry_points(entry_points)
    manager.load_modules(config_plugins)
    return manager


def project_hooks(project, config_plugins: Iterable[str] = (), report: Reporter | None = stderr_reporter):
    """(index filter, cache-key contribution) of the plugins for `project`: vrift_index_filter
    as one predicate (None when no plugin filters) and vrift_cache_key as a callable of an
    action.  What a process that indexes or caches needs (the daemon, `vrift ingest`)."""
    manager = load(config_plugins, report=report)
    return manager.index_filter(project), manager.cache_key
