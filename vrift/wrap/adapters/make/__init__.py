"""The make adapter (entry point `make` in group "vrift").  `make -C dir` moves root discovery
to `dir`; the one-line Makefile opt-in lives in `hook.py`."""
from __future__ import annotations

from collections.abc import Sequence

from ....hooks.markers import hookimpl
from ..base import Adapter, resolve_dirs, short_option_value

# GNU make's short options with a required argument (-j, -l, -O take optional, attached ones)
_WITH_ARG = "CfIoW"


class MakeAdapter(Adapter):
    name = "make"
    tools = ("make", "gmake", "remake")

    def start_dir(self, argv: Sequence[str], cwd: str) -> str:
        return resolve_dirs(cwd, short_option_value(argv[1:], "C", _WITH_ARG, long_names=("--directory",)))


@hookimpl
def vrift_register_adapters():
    return [MakeAdapter()]
