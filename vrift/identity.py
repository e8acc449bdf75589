"""Project identity (SPEC §1, §4.1): the root, the id, paths relative to the root.

A project is a directory tree with a root; its id is the first 16 bytes of BLAKE3 over the
root's realpath.  Root discovery and the id are computed by `vrift.locate` (the cheap module the
wrap fast path uses); this module gives them their Path-based, raising form.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import locate
from .errors import VriftError
from .locate import ROOT_MARKERS, STATE_DIR, project_id  # noqa: F401 - the one definition, re-exported


def find_root(start: os.PathLike | str | None = None, explicit: os.PathLike | str | None = None,
              env: dict | None = None) -> Path:
    """Root discovery: explicit > VRIFT_PROJECT_ROOT > nearest .vrift.yaml > nearest
    .git/build.ninja/Makefile > the start directory."""
    env = os.environ if env is None else env
    root, error = locate.find_root(start if start is not None else os.getcwd(), explicit, env)
    if root is None:
        raise VriftError(error)
    return Path(root)


@dataclass(frozen=True)
class Project:
    root: Path
    id: str

    @classmethod
    def at(cls, root: os.PathLike | str) -> "Project":
        real = Path(os.path.realpath(root))
        return cls(root=real, id=project_id(real))

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def staging_dir(self) -> Path:
        return self.state_dir / "staging"

    def relpath(self, path: os.PathLike | str) -> bytes:
        """Path relative to the root as bytes ("" for the root); raises when outside."""
        absolute = os.path.abspath(os.fsencode(path))
        root = os.fsencode(self.root)
        if absolute == root:
            return b""
        if not absolute.startswith(root + b"/"):
            raise VriftError(f"{os.fsdecode(absolute)}: outside the project root {self.root}")
        return absolute[len(root) + 1:]
