"""Command names found through PATH, as inputs instead of the PATH string in the key
(docs/cache.md, "How inputs are compared").

Another venv, an extra PATH entry or another order changes the PATH string but usually not
what a command runs; yet PATH is an input: `sh -c 'cc …'` runs whichever `cc` comes first. So
the key leaves PATH out, and the fingerprint records, for every name the action looked up in a
PATH directory (an exec, a failed exec of a candidate, a stat of one, the root's own argv[0]),
where that name resolves under the PATH the action had.  A lookup matches only when every such
name resolves to the same place under its own PATH.
"""
from __future__ import annotations

import os
import stat as statmod

DEFAULT_PATH = b"/bin:/usr/bin"  # what the libc searches when PATH is unset


def _clean(path: bytes) -> bytes:
    """Without "." components and repeated slashes; `..` is kept (resolved by the kernel)."""
    parts = [p for p in path.split(b"/") if p and p != b"."]
    return (b"/" if path.startswith(b"/") else b"") + b"/".join(parts)


def search_dirs(search: bytes | None, cwd: bytes) -> list[bytes]:
    """The directories of a PATH value, absolute (an empty entry is the cwd)."""
    out = []
    for d in (DEFAULT_PATH if search is None else search).split(b":"):
        out.append(_clean(d if d.startswith(b"/") else cwd + b"/" + d))
    return out


def resolve(name: bytes, dirs: list[bytes]) -> bytes | None:
    """The first `dir/name` that is an executable regular file, as execvp would pick it, with
    symlinks resolved (`/bin/cc` and `/usr/bin/cc` with /bin a symlink run the same file)."""
    for d in dirs:
        cand = d + b"/" + name
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if statmod.S_ISREG(st.st_mode) and os.access(cand, os.X_OK):
            return os.path.realpath(cand)
    return None


def searched_names(events, argv0: bytes, dirs: list[bytes]) -> set[bytes]:
    """Names the action may have found through PATH: the last component of every path it
    executed, probed or stat'ed in a PATH directory, and its argv[0] when that has no slash."""
    in_path = set(dirs)
    names = set()
    for kind, path in events:
        if kind in ("X", "A") or kind[0] == "S":
            d, _, name = path.rpartition(b"/")
            if name and d in in_path:
                names.add(name)
    if argv0 and b"/" not in argv0:
        names.add(argv0)
    return names
