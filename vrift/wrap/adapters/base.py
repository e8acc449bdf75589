"""What an adapter is: the knowledge of how to run one build tool under vrift.

Adapters are plain objects returned by the `vrift_register_adapters` hook.  An adapter needs
`name` and `handles()`; the rest has working defaults.  The built-in ones (ninja, make,
generic) are plugins like any other (pyproject.toml, entry-point group "vrift").
"""
from __future__ import annotations

import os
from collections.abc import Sequence

from ...errors import VriftError


class Adapter:
    name: str = ""
    tools: tuple[str, ...] = ()  # executable names (basenames) this adapter runs

    def handles(self, tool: str) -> bool:
        return os.path.basename(tool) in self.tools

    def start_dir(self, argv: Sequence[str], cwd: str) -> str:
        """Where project-root discovery starts for this command (e.g. the dir of `-C dir`)."""
        return cwd

    def prepare_env(self, env: dict, argv: Sequence[str]) -> None:
        """Adjust the wrapped tool's environment (after vrift set its own variables)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def short_option_value(argv: Sequence[str], letter: str, with_arg: str, long_names: Sequence[str] = (),
                       stop_after: str = "") -> list[str]:
    """Every value given to option `-<letter>` (or one of `long_names`) in a getopt-style
    command line, in order.

    `with_arg` lists the short options that take a required argument, so `-fC` is `-f C`, not
    `-f -C`.  GNU getopt permutes, so every word up to `--` is scanned; an option in
    `stop_after` ends option parsing after its value (ninja's `-t tool args…`)."""
    values = []
    i = 0
    stopped = False
    while i < len(argv) and not stopped:
        word = argv[i]
        i += 1
        if word == "--":
            break
        for long_name in long_names:
            if word == long_name and i < len(argv):
                values.append(argv[i])
                i += 1
            elif word.startswith(long_name + "="):
                values.append(word[len(long_name) + 1:])
        if not word.startswith("-") or word.startswith("--") or word == "-":
            continue
        j = 1
        while j < len(word):
            ch = word[j]
            if ch in with_arg:
                value = word[j + 1:]
                if not value and i < len(argv):
                    value = argv[i]
                    i += 1
                if ch == letter:
                    values.append(value)
                stopped = ch in stop_after
                break
            j += 1
    return values


def resolve_dirs(cwd: str, dirs: Sequence[str]) -> str:
    """Successive `-C` directories, each relative to the previous one (as make and ninja do)."""
    here = cwd
    for d in dirs:
        here = os.path.join(here, d) if d else here
    return here


def select(adapters: Sequence[Adapter], tool: str, forced: str | None = None) -> Adapter:
    """The adapter named `forced`, else the first that handles `tool`, else the generic one."""
    by_name = {a.name: a for a in reversed(adapters)}  # first registered name wins
    if forced:
        if forced not in by_name:
            raise VriftError(f"unknown adapter {forced!r} (known: {', '.join(sorted(by_name))})")
        return by_name[forced]
    for adapter in adapters:
        if adapter.name != "generic" and adapter.handles(tool):
            return adapter
    if "generic" in by_name:
        return by_name["generic"]
    raise VriftError("no adapter can run this command (the built-in generic adapter is not loaded)")
