"""vrift-buildstamp: an example third-party vrift plugin.

- vrift_post_build: prints one line after every `vrift wrap` build.
- vrift_cache_key: mixes the C compiler's version into every action's cache key, so that a
  compiler upgrade (same `cc` path, same command line) never replays an old result.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

from vrift.hooks import hookimpl


@hookimpl
def vrift_post_build(project, argv, exit_code, summary):
    status = "ok" if exit_code == 0 else f"failed ({exit_code})"
    print(f"buildstamp: {os.path.basename(argv[0])} in {project.root.name}: {status}, "
          f"{summary['committed']} files committed, {summary['wall_s']:.2f}s", file=sys.stderr)


@functools.cache
def compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "none"
    return out.splitlines()[0] if out else "unknown"


@hookimpl
def vrift_cache_key(action):
    cc = os.environ.get("CC", "cc")
    return f"cc-version={compiler_version(cc)}"
