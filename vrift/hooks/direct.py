"""The built-in plugins' hooks called without pluggy.

`vrift wrap` uses this when no plugin other than the built-in adapters is installed or
configured, which saves importing pluggy and importlib.metadata on the common path.  The
built-ins implement only `vrift_register_adapters`; should one implement another hook,
`usable()` turns False and the caller takes the PluginManager instead (tests/test_hooks.py
checks both paths give the same adapters).
"""
from __future__ import annotations

import importlib

from .entrypoints import BUILTIN_PLUGINS
from .markers import marked_hooks

SUPPORTED = frozenset({"vrift_register_adapters"})


class BuiltinHooks:
    builtin_only = True
    failures: list = []

    def __init__(self):
        # pluggy registers entry points in name order and calls the last registered first
        names = sorted(BUILTIN_PLUGINS, reverse=True)
        self.impls = [(name, marked_hooks(importlib.import_module(BUILTIN_PLUGINS[name]))) for name in names]

    def usable(self) -> bool:
        return all(set(hooks) <= SUPPORTED for _, hooks in self.impls)

    def adapters(self) -> list:
        found = []
        for _, hooks in self.impls:
            register = hooks.get("vrift_register_adapters")
            if register is not None:
                found.extend(register())
        return found

    def prepare_env(self, project, config, env: dict) -> None:
        """No built-in implements it (see `usable`)."""

    def pre_build(self, project, config, argv: list) -> None:
        """No built-in implements it (see `usable`)."""

    def post_build(self, project, config, argv: list, exit_code: int, summary: dict) -> None:
        """No built-in implements it (see `usable`)."""
