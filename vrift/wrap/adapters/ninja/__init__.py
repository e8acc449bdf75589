"""The ninja adapter (a plugin like any other: entry point `ninja` in group "vrift")."""
from __future__ import annotations

from collections.abc import Sequence

from ....hooks.markers import hookimpl
from ..base import Adapter, resolve_dirs, short_option_value

# ninja's getopt string is "d:f:j:k:l:nt:vw:C:h"
_WITH_ARG = "dfjkltwC"


class NinjaAdapter(Adapter):
    name = "ninja"
    tools = ("ninja", "ninja-build", "samu")

    def start_dir(self, argv: Sequence[str], cwd: str) -> str:
        return resolve_dirs(cwd, short_option_value(argv[1:], "C", _WITH_ARG, stop_after="t"))


@hookimpl
def vrift_register_adapters():
    return [NinjaAdapter()]
