"""The generic adapter: any command tree (`vrift wrap -- ./build.sh`).  Chosen when no other
adapter handles the tool; root discovery starts in the current directory."""
from __future__ import annotations

from ....hooks.markers import hookimpl
from ..base import Adapter


class GenericAdapter(Adapter):
    name = "generic"

    def handles(self, tool: str) -> bool:
        return True


@hookimpl
def vrift_register_adapters():
    return [GenericAdapter()]
