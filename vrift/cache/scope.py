"""`cache.scope`: which commands the action cache considers (docs/cache.md "Scope").

`all` (the default): every command the build tool starts, except `cache.never`.
`compilers`: like ccache and sccache, only compilers (COMPILERS below) and the tools listed
in `cache.always`.  A command is named by its executable's name, its argv[0], and — for a
shell started as `sh -c "CMD …"` (ninja runs every edge that way) — the first word of CMD
after any VAR=value assignments.
"""
from __future__ import annotations

import fnmatch
import os

COMPILERS = ("cc", "c++", "gcc", "g++", "clang", "clang++", "gcc-[0-9]*", "g++-[0-9]*", "clang-[0-9]*",
             "clang++-[0-9]*", "*-gcc", "*-g++", "*-gcc-[0-9]*", "*-g++-[0-9]*", "*-cc", "*-c++", "*-clang",
             "*-clang++", "cpp", "gfortran", "*-gfortran", "nvcc", "icc", "icpc", "icx", "icpx", "tcc", "rustc")
SHELLS = frozenset({"sh", "bash", "dash", "ksh", "zsh"})
SCOPES = ("all", "compilers")


def command_names(tool: str, argv: list[bytes] | list[str]) -> set[str]:
    """The names a command is matched by (see the module's docstring)."""
    args = [os.fsdecode(a) for a in argv]
    names = {tool, os.path.basename(args[0]) if args else ""}
    if (tool in SHELLS or names & SHELLS) and len(args) > 2 and args[1] == "-c":
        for word in args[2].split():
            if "=" in word and not word.startswith("="):
                continue  # CC=gcc cc …: an assignment before the command
            names.add(os.path.basename(word))
            break
    return names - {""}


def in_scope(scope: str, tool: str, argv, always=()) -> bool:
    if scope != "compilers":
        return True
    names = command_names(tool, argv)
    return any(fnmatch.fnmatchcase(n, p) for p in (*COMPILERS, *(always or ())) for n in names)
