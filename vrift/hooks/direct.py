"""The built-in plugins' hooks called without pluggy.

`vrift wrap` uses this when no plugin other than the built-in adapters is installed or
configured, which saves importing pluggy (more than 20 ms) and importlib.metadata on the common
path.  Nothing here is kept in step by hand: the hooks it can call are those of `spec` (read with
vrift's own markers), called in pluggy's order with the arguments each implementation names.
What it does not reproduce — options that change pluggy's order or wrap the call (tryfirst,
trylast, wrappers), a hook without a specification — makes `usable()` False, and the caller takes
the PluginManager instead (tests/unit/test_hooks.py checks both give the same results for every hook).
"""
from __future__ import annotations

import importlib

from . import spec
from .calls import HookCalls, PluginFailure, one_line, stderr_reporter
from .entrypoints import BUILTIN_PLUGINS
from .markers import IMPL_ATTR, argnames, marked_hooks, marked_specs

SPECS = marked_specs(spec)  # hook name -> the arguments it is called with
UNSUPPORTED_OPTIONS = ("tryfirst", "trylast", "hookwrapper", "wrapper")


class BuiltinHooks(HookCalls):
    builtin_only = True

    def __init__(self, plugins: dict[str, str] = BUILTIN_PLUGINS, report=stderr_reporter):
        # pluggy registers entry points in name order and calls the last registered first
        names = sorted(plugins, reverse=True)
        self.impls = [(name, marked_hooks(importlib.import_module(plugins[name]))) for name in names]
        self.report = report
        self.failures: list[PluginFailure] = []

    def usable(self) -> bool:
        for _, hooks in self.impls:
            for hook, func in hooks.items():
                opts = getattr(func, IMPL_ATTR)
                if hook not in SPECS or any(opts.get(o) for o in UNSUPPORTED_OPTIONS):
                    return False
                if not set(argnames(func)) <= set(SPECS[hook]):
                    return False
        return True

    def call(self, hook: str, **kwargs) -> list[tuple[str, object]]:
        results = []
        for name, hooks in self.impls:
            func = hooks.get(hook)
            if func is None:
                continue
            try:
                result = func(*[kwargs[a] for a in argnames(func)])
            except Exception as e:  # noqa: BLE001 - as the PluginManager: reported, skipped
                failure = PluginFailure(name, "built-in", hook, one_line(e))
                self.failures.append(failure)
                if self.report is not None:
                    self.report(failure.line())
                continue
            if result is not None:
                results.append((name, result))
        return results
