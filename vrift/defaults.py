"""The built-in defaults of the settings `vrift wrap` reads on its fast path, without importing
`vrift.config` (YAML, dataclasses: too slow for the wrapper's start-up, SPEC §12).

This is their one definition: `vrift.config.KEYS` takes the defaults of these keys from here
(tests/unit/test_config.py checks every key is declared there), and the wrapper's record of the
configuration (`vrift.wrap.wrapcache`) holds exactly these keys.  Kept free of imports.
"""
from __future__ import annotations

WRAP_SETTINGS = {
    "enabled": True,
    "fallback_mode": False,
    "adapter": None,
    "plugins": [],
    "daemon.socket_timeout_ms": 2000,
    "cache.enabled": True,
    "cache.env": ["PATH", "LANG", "LC_ALL", "SOURCE_DATE_EPOCH"],
    "cache.tools": ["make", "gmake", "bmake", "pmake", "remake", "ninja", "samu"],
}
