"""The error type of vrift: an error the user can act on.

The CLI prints a VriftError (or a subclass: VDirError, CASError, DaemonError, …) as one line
`vrift: error: …` and exits non-zero, never with a traceback.  Kept free of imports: every
layer raises it, the wrap fast path included."""
from __future__ import annotations


class VriftError(Exception):
    """An error the user can act on: the CLI prints it as one line and exits non-zero."""
