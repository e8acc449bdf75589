"""The one on/off parser for settings given as text (environment variables, command-line
values).  The preload library's `vrift_onoff` (vrift/preload/libvrift.c) accepts the same
words; tests/integration/test_usability_scope.py compares the two by behaviour.  Kept free of imports: `vrift wrap`'s
fast path uses it."""
from __future__ import annotations

BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}


def parse(text: str | None) -> bool | None:
    """True or False for a word of BOOL_WORDS (any case, surrounding blanks ignored); None for
    anything else, including no value."""
    if text is None:
        return None
    return BOOL_WORDS.get(text.strip().lower())


def expected(text: str) -> str:
    """The error message tail for a value that is not an on/off word."""
    return f"expected one of 0, 1, true, false, yes, no, on, off, got {text!r}"
