"""What both dispatchers share (the pluggy manager and the pluggy-free built-ins of the wrap
fast path): the hooks `vrift wrap` calls, expressed over one `call(hook, **kwargs)` that returns
(plugin name, result) for every result that is not None, and how a plugin's failure is told."""
from __future__ import annotations

import sys
from collections.abc import Callable

Reporter = Callable[[str], None]


def stderr_reporter(line: str) -> None:
    print(f"vrift: {line}", file=sys.stderr, flush=True)


class PluginFailure:
    """A plain class, not a dataclass: the wrap fast path must not import dataclasses."""

    def __init__(self, name: str, source: str, stage: str, error: str):
        self.name = name
        self.source = source
        self.stage = stage  # "load", "register" or the name of the hook that raised
        self.error = error

    def __repr__(self) -> str:
        return f"PluginFailure({self.name!r}, {self.source!r}, {self.stage!r}, {self.error!r})"

    def line(self) -> str:
        where = "could not be loaded" if self.stage in ("load", "register") else f"failed in {self.stage}"
        return f"plugin {self.name!r} {where} ({self.source}): {self.error}"


def one_line(exc: BaseException) -> str:
    """One line: the type and the message with its lines joined (reports are one line each)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class HookCalls:
    """The per-build hooks, on top of `call`.  Subclasses provide `call` and `bad_result`."""

    builtin_only = False

    def call(self, hook: str, **kwargs) -> list[tuple[str, object]]:
        raise NotImplementedError

    def bad_result(self, plugin: str, hook: str, problem: str) -> None:
        raise TypeError(f"plugin {plugin!r}: {hook} {problem}")

    def adapters(self) -> list:
        found = []
        for plugin, result in self.call("vrift_register_adapters"):
            try:
                found.extend(result)
            except TypeError:
                self.bad_result(plugin, "vrift_register_adapters",
                                f"returned {type(result).__name__}, not a list of adapters")
        return found

    def prepare_env(self, project, config, env: dict) -> None:
        self.call("vrift_prepare_env", project=project, config=config, env=env)

    def pre_build(self, project, config, argv: list) -> None:
        self.call("vrift_pre_build", project=project, config=config, argv=argv)

    def post_build(self, project, config, argv: list, exit_code: int, summary: dict) -> None:
        self.call("vrift_post_build", project=project, config=config, argv=argv, exit_code=exit_code,
                  summary=summary)
