"""Compatibility only: `vrift.wrap.adapters.base` under its old name (docs/plugins.md)."""
from __future__ import annotations

from ..wrap.adapters.base import Adapter, resolve_dirs, select, short_option_value

__all__ = ["Adapter", "resolve_dirs", "select", "short_option_value"]
