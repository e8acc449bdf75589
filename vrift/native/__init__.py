"""Locate the shared objects that the package build compiled (see setup.py)."""
from __future__ import annotations

import importlib.machinery
import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent


def library_path(stem: str) -> Path | None:
    """Path of the compiled `vrift/<stem>*.so`, or None when the build did not make it."""
    for suffix in (".so", *importlib.machinery.EXTENSION_SUFFIXES):  # setup.py names them <stem>.so
        candidate = _PKG / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def preload_library() -> Path | None:
    """The LD_PRELOAD library; VRIFT_PRELOAD_LIB overrides (tests of a rebuilt copy)."""
    override = os.environ.get("VRIFT_PRELOAD_LIB")
    if override:
        return Path(override)
    return library_path("_libvrift")


def vdir_native_library() -> Path | None:
    return library_path("_vdir_native")
