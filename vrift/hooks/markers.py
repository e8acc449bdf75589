"""`hookimpl` and `hookspec`: the markers of hook implementations and specifications.

They set exactly the attributes `pluggy.HookimplMarker("vrift")` and
`pluggy.HookspecMarker("vrift")` set (`vrift_impl`, `vrift_spec`: dicts of options), so pluggy
registers what is marked here like anything marked with its own markers.  They exist so that
the built-in adapters and the specifications can be imported without importing pluggy (its
import alone costs more than 20 ms): `vrift wrap` must reach the build tool quickly (SPEC §12)
and loads pluggy only when a third-party plugin is installed.  Third-party plugins may use
either these markers or pluggy's; tests/unit/test_hooks.py checks both set the same.
"""
from __future__ import annotations

from collections.abc import Callable

PROJECT = "vrift"
IMPL_ATTR = PROJECT + "_impl"
SPEC_ATTR = PROJECT + "_spec"


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


def hookspec(function: Callable | None = None, *, firstresult: bool = False, historic: bool = False,
             warn_on_impl: Warning | None = None, warn_on_impl_args: dict | None = None):
    """Decorator (bare or with options) marking a hook specification of project "vrift"."""

    def mark(func: Callable) -> Callable:
        if historic and firstresult:
            raise ValueError("cannot have a historic firstresult hook")
        setattr(func, SPEC_ATTR, {"firstresult": firstresult, "historic": historic, "warn_on_impl": warn_on_impl,
                                  "warn_on_impl_args": warn_on_impl_args})
        return func

    return mark if function is None else mark(function)


def argnames(func: Callable) -> tuple[str, ...]:
    """The positional parameter names of a plain function (what pluggy passes it by name)."""
    code = func.__code__
    return code.co_varnames[:code.co_argcount]


def marked_specs(module: object) -> dict[str, tuple[str, ...]]:
    """Hook name → argument names for every function of `module` marked with `hookspec`."""
    return {attr: argnames(func) for attr in dir(module)
            if callable(func := getattr(module, attr, None)) and isinstance(getattr(func, SPEC_ATTR, None), dict)}
