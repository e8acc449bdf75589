"""`hookimpl`: marks a plugin's hook implementations for the plugin manager.

It sets exactly the attribute `pluggy.HookimplMarker("vrift")` sets (`vrift_impl`, a dict of
options), so pluggy registers a function marked here like any other.  It exists so that the
built-in adapters can be imported without importing pluggy: `vrift wrap` must reach the build
tool quickly (SPEC §12) and loads pluggy only when a third-party plugin is installed.
Third-party plugins may use either this marker or pluggy's.
"""
from __future__ import annotations

from collections.abc import Callable

PROJECT = "vrift"
IMPL_ATTR = PROJECT + "_impl"


def hookimpl(function: Callable | None = None, *, hookwrapper: bool = False, optionalhook: bool = False,
             tryfirst: bool = False, trylast: bool = False, specname: str | None = None,
             wrapper: bool = False):
    """Decorator (bare or with options) marking a hook implementation of project "vrift"."""

    def mark(func: Callable) -> Callable:
        setattr(func, IMPL_ATTR, {"wrapper": wrapper, "hookwrapper": hookwrapper, "optionalhook": optionalhook,
                                  "tryfirst": tryfirst, "trylast": trylast, "specname": specname})
        return func

    return mark if function is None else mark(function)


def marked_hooks(module: object) -> dict[str, Callable]:
    """Hook name → function for every function of `module` marked with `hookimpl`."""
    found = {}
    for attr in dir(module):
        func = getattr(module, attr, None)
        opts = getattr(func, IMPL_ATTR, None) if callable(func) else None
        if isinstance(opts, dict):
            found[opts.get("specname") or attr] = func
    return found
