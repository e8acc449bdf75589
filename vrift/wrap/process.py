"""Running the wrapped tool.

The tool inherits the wrapper's stdin, stdout and stderr (nothing is captured) and its
process group: Ctrl-C reaches it directly from the terminal, while the wrapper ignores
SIGINT/SIGQUIT like a shell waiting for a foreground job, and forwards SIGTERM/SIGHUP that
are sent to the wrapper alone.  The exit status is the tool's, 128+N for a death by signal N.
"""
from __future__ import annotations

import os
import signal
import sys

FORWARDED = (signal.SIGTERM, signal.SIGHUP)
IGNORED_WHILE_WAITING = (signal.SIGINT, signal.SIGQUIT)
# Python ignores these at start-up; the tool must get the defaults back (as subprocess does)
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def run(argv: list[str], env: dict) -> int:
    """Run the tool and return its exit status (127/126 when it cannot be started, as a shell)."""
    saved = {}
    child: list[int] = []

    def forward(signum, _frame):
        if child:
            try:
                os.kill(child[0], signum)
            except ProcessLookupError:
                pass

    reset = list(RESTORED)
    for sig in IGNORED_WHILE_WAITING:
        saved[sig] = signal.getsignal(sig)
        if saved[sig] != signal.SIG_IGN:  # ignored by our parent: the tool inherits that
            reset.append(sig)
        signal.signal(sig, signal.SIG_IGN)
    for sig in FORWARDED:
        saved[sig] = signal.signal(sig, forward)
    try:
        try:
            pid = os.posix_spawnp(argv[0], argv, env, setsigdef=reset)
        except FileNotFoundError:
            print(f"vrift: {argv[0]}: command not found", file=sys.stderr, flush=True)
            return 127
        except PermissionError as e:
            print(f"vrift: {argv[0]}: {e.strerror}", file=sys.stderr, flush=True)
            return 126
        except OSError as e:
            print(f"vrift: {argv[0]}: cannot run: {e.strerror or e}", file=sys.stderr, flush=True)
            return 126
        child.append(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code
