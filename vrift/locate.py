"""Where things are, with nothing but `os` (and blake3 for the id): the cheap start-up source.

This is the one definition of the root markers, root discovery, the project id and the home
path: `vrift.identity` and `vrift.home` build their Path-based, raising forms on it (not the
reverse), because those pull in dataclasses, pathlib and tempfile, which cost more than the
whole time budget of `vrift wrap` before the tool's exec (SPEC §12).  `preload_library`
mirrors `vrift.native.preload_library`; tests/integration/test_wrap_fast.py checks both give the same answers.
"""
from __future__ import annotations

import os

PROJECT_FILE = ".vrift.yaml"  # a project's configuration
USER_CONFIG_FILE = "config.yaml"  # in VRIFT_HOME: the user's configuration
STATE_DIR = ".vrift"  # inside a project: staging/ and nothing the user edits
ROOT_MARKERS = (PROJECT_FILE, ".git", "build.ninja", "Makefile")  # the project file first: it wins over the others


def find_root(start: str, explicit: str | None, env) -> tuple[str | None, str | None]:
    """(root, None) or (None, error): explicit > VRIFT_PROJECT_ROOT > nearest .vrift.yaml >
    nearest .git/build.ninja/Makefile > the start directory."""
    for given, what in ((explicit, "--root"), (env.get("VRIFT_PROJECT_ROOT"), "VRIFT_PROJECT_ROOT")):
        if given:
            real = os.path.realpath(given)
            if not os.path.isdir(real):
                return None, f"{what}: not a directory: {given}"
            return real, None
    here = os.path.realpath(start)
    if not os.path.isdir(here):
        here = os.path.dirname(here)
    chain = [here]
    while chain[-1] != "/":
        chain.append(os.path.dirname(chain[-1]))
    for markers in (ROOT_MARKERS[:1], ROOT_MARKERS[1:]):
        for d in chain:
            if any(os.path.exists(os.path.join(d, m)) for m in markers):
                return d, None
    return here, None


def has_marker(root: str) -> bool:
    return any(os.path.exists(os.path.join(root, m)) for m in ROOT_MARKERS)


def registered(root: str, env) -> bool:
    """Is `root` a project vrift knows (`vrift ingest` or `vrift daemon start --root` there)?"""
    import json

    try:
        with open(os.path.join(home_root(env), "registry"), "rb") as f:
            projects = json.load(f).get("projects", {})
    except (OSError, ValueError, AttributeError):
        return False
    return any(isinstance(p, dict) and p.get("root") == root for p in projects.values())


def project_id(root: str) -> str:
    import blake3

    return blake3.blake3(os.path.realpath(os.fsencode(root))).hexdigest()[:32]


def home_root(env) -> str:
    return env.get("VRIFT_HOME") or os.path.join(os.path.expanduser("~"), ".vrift")


def run_dir(env) -> str:
    return os.path.join(home_root(env), "run")


def project_socket(env, pid: str) -> str:
    return os.path.join(run_dir(env), f"p-{pid[:16]}.sock")


def preload_library(env) -> str | None:
    """The LD_PRELOAD library (VRIFT_PRELOAD_LIB overrides), or None when the build lacks it."""
    override = env.get("VRIFT_PRELOAD_LIB")
    if override:
        return override
    from importlib.machinery import EXTENSION_SUFFIXES  # already imported by the interpreter

    pkg = os.path.dirname(os.path.abspath(__file__))
    for suffix in (".so", *EXTENSION_SUFFIXES):  # setup.py names it _libvrift.so
        candidate = os.path.join(pkg, "_libvrift" + suffix)
        if os.path.isfile(candidate):
            return candidate
    return None
