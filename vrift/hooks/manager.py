"""The plugin manager: loads plugins, calls their hooks, isolates the broken ones.

Plugins come from the entry-point group "vrift" (the built-in adapters are registered there
too, in pyproject.toml) and from the `plugins:` list of the configuration (module names).  A
plugin that cannot be imported or registered, or that raises inside a hook, is reported by
name in one line and skipped; the build goes on.  Each implementation is called on its own
(not through pluggy's call loop) so that one plugin's exception cannot hide another's result.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pluggy

from . import spec
from .entrypoints import BUILTIN_PLUGINS, installed_entry_points
from .markers import PROJECT

Reporter = Callable[[str], None]


def stderr_reporter(line: str) -> None:
    print(f"vrift: {line}", file=sys.stderr, flush=True)


@dataclass
class PluginInfo:
    name: str
    source: str  # "entry point", "config", "built-in"
    target: str  # the module (or module:attribute) it was loaded from
    hooks: list[str] = field(default_factory=list)


@dataclass
class PluginFailure:
    name: str
    source: str
    stage: str  # "load", "register" or the name of the hook that raised
    error: str

    def line(self) -> str:
        where = "could not be loaded" if self.stage in ("load", "register") else f"failed in {self.stage}"
        return f"plugin {self.name!r} {where} ({self.source}): {self.error}"


def _describe(exc: BaseException) -> str:
    """One line: the type and the message with its lines joined (reports are one line each)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def import_target(target: str):
    """`module` or `module:attribute` → the object."""
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class PluginManager:
    builtin_only = False

    def __init__(self, report: Reporter | None = stderr_reporter):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(spec)
        self.report = report
        self.plugins: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._disabled_filters: set[str] = set()

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
            self._fail(PluginFailure(name, source, "load", _describe(e)))
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as e:  # noqa: BLE001 - pluggy validation errors, bad signatures
            self._fail(PluginFailure(name, source, "register", _describe(e)))
            return
        problem = self._check(plugin)
        if problem:
            self.pm.unregister(plugin)
            self._fail(PluginFailure(name, source, "register", problem))
            return
        hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
        self.plugins[name] = PluginInfo(name, source, target, hooks)

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
        """Call every implementation of `hook` in pluggy's order (last registered first,
        tryfirst/trylast honoured); returns (plugin name, result) for results that are not None.
        An implementation that raises is reported and skipped."""
        caller = getattr(self.pm.hook, hook)
        results = []
        for impl in reversed(caller.get_hookimpls()):
            try:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            except Exception as e:  # noqa: BLE001 - a plugin's bug must not stop the build
                self._fail(PluginFailure(impl.plugin_name, self._source(impl.plugin_name), hook, _describe(e)))
                continue
            if result is not None:
                results.append((impl.plugin_name, result))
        return results

    def _source(self, name: str) -> str:
        info = self.plugins.get(name)
        return info.source if info else "?"

    def adapters(self) -> list:
        found = []
        for plugin, result in self.call("vrift_register_adapters"):
            try:
                found.extend(result)
            except TypeError:
                self._fail(PluginFailure(plugin, self._source(plugin), "vrift_register_adapters",
                                         f"returned {type(result).__name__}, not a list of adapters"))
        return found

    def prepare_env(self, project, config, env: dict) -> None:
        self.call("vrift_prepare_env", project=project, config=config, env=env)

    def pre_build(self, project, config, argv: list) -> None:
        self.call("vrift_pre_build", project=project, config=config, argv=argv)

    def post_build(self, project, config, argv: list, exit_code: int, summary: dict) -> None:
        self.call("vrift_post_build", project=project, config=config, argv=argv, exit_code=exit_code,
                  summary=summary)

    def index_filter(self, project) -> Callable[[bytes], bool] | None:
        """A `keep(relpath) -> bool` for the indexer, or None when no plugin filters (free).
        A plugin that raises is reported once and then ignored for the rest of the walk."""
        impls = list(reversed(self.pm.hook.vrift_index_filter.get_hookimpls()))
        if not impls:
            return None

        def keep(relpath: bytes) -> bool:
            for impl in impls:
                if impl.plugin_name in self._disabled_filters:
                    continue
                args = {"project": project, "relpath": relpath}
                try:
                    verdict = impl.function(*[args[a] for a in impl.argnames])
                except Exception as e:  # noqa: BLE001
                    self._disabled_filters.add(impl.plugin_name)
                    self._fail(PluginFailure(impl.plugin_name, self._source(impl.plugin_name),
                                             "vrift_index_filter", _describe(e)))
                    continue
                if verdict is False:
                    return False
            return True

        return keep

    def cache_key(self, action) -> bytes:
        """The plugins' contributions to `action`'s key: for each plugin in name order,
        length-prefixed name and value, so that no two different contributions collide."""
        parts = []
        for plugin, value in sorted(self.call("vrift_cache_key", action=action), key=lambda r: r[0]):
            if isinstance(value, str):
                value = value.encode()
            if not isinstance(value, (bytes, bytearray)):
                self._fail(PluginFailure(plugin, self._source(plugin), "vrift_cache_key",
                                         f"returned {type(value).__name__}, not bytes or str"))
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
