"""The working directory in real builds (docs/cache.md, "The working directory"): two checkouts of
the same sources share the entries of actions that never read their cwd, and only those; gcc -g
and `pwd` in the second checkout give what a plain build there gives."""
from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

import pytest

from support.build import plain, require_tools, vrift
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

UNITS = ("a", "b", "c", "d")
MAKEFILE = """\
OBJS := $(patsubst %,obj/%.o,{units})
DEBUG := $(patsubst %,dbg/%.o,{units})
all: $(OBJS) $(DEBUG) where.txt where2.txt here.txt hello.txt
obj/%.o: src/%.c
\tcc -O2 -Iinc -c $< -o $@
dbg/%.o: src/%.c
\tcc -g -O1 -Iinc -c $< -o $@
where.txt:
\techo "built in $$(pwd)" > where.txt
where2.txt:
\t/bin/pwd > where2.txt
here.txt:
\tPYTHONHASHSEED=0 {python} -c 'import os; open("here.txt", "w").write(os.getcwd())'
hello.txt:
\techo hello > hello.txt
clean:
\trm -f obj/*.o dbg/*.o where.txt where2.txt here.txt hello.txt
"""
OUTPUT_DIRS = ("obj", "dbg")
OUTPUT_FILES = ("where.txt", "where2.txt", "here.txt", "hello.txt")
CWD_READERS = len(UNITS) + 3  # the -g compiles, `$(pwd)`, /bin/pwd, os.getcwd()


def checkout(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    for d in ("inc", *OUTPUT_DIRS):
        (root / d).mkdir()
    (root / "inc/v.h").write_text("#define V 7\n")
    for i, u in enumerate(UNITS):
        (root / "src" / f"{u}.c").write_text(f'#include "v.h"\nint {u}(int x) {{ return x * V + {i}; }}\n')
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"
    (root / "Makefile").write_text(MAKEFILE.format(units=" ".join(UNITS), python=python))
    (root / ".vrift.yaml").write_text("")
    return root


def snapshot(root: Path, into: Path) -> Path:
    into.mkdir()
    for d in OUTPUT_DIRS:
        shutil.copytree(root / d, into / d)
    for f in OUTPUT_FILES:
        shutil.copy2(root / f, into / f)
    return into


def assert_same(a: Path, b: Path) -> None:
    for d in OUTPUT_DIRS:
        names = sorted(p.name for p in (a / d).iterdir())
        assert names == sorted(p.name for p in (b / d).iterdir()) and names
        for n in names:
            assert filecmp.cmp(a / d / n, b / d / n, shallow=False), f"{d}/{n} differs"
    for f in OUTPUT_FILES:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def comp_dirs(obj: Path) -> list[str]:
    dump = subprocess.run(["readelf", "--debug-dump=info", str(obj)], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    return [line.rsplit(": ", 1)[-1].strip() for line in dump.splitlines() if "DW_AT_comp_dir" in line]


def test_second_checkout_hits_only_where_the_cwd_is_not_read(tmp_path, daemons):
    require_tools("make", "cc", "readelf", "python3")
    first, second = checkout(tmp_path / "one" / "src-tree"), checkout(tmp_path / "two")
    cold = vrift("wrap", "--explain", "make", cwd=first, check=True)
    total = 2 * len(UNITS) + len(OUTPUT_FILES)
    assert cache_counts(cold.stderr) == (0, total, 0), cold.stderr

    other = vrift("wrap", "--explain", "make", cwd=second, check=True)
    # -O2 compiles and `echo hello` hit across checkouts; what read the cwd runs again
    assert cache_counts(other.stderr) == (total - CWD_READERS, CWD_READERS, 0), other.stderr
    assert other.stderr.count("cwd differs and is read") == CWD_READERS, other.stderr
    assert comp_dirs(second / "dbg/a.o") == [str(second)]
    assert (second / "where.txt").read_text() == f"built in {second}\n"
    wrapped = snapshot(second, tmp_path / "wrapped")

    # the same outputs as a plain build in the second checkout, byte for byte
    plain("make", "clean", cwd=second)
    plain("make", cwd=second)
    assert_same(wrapped, second)

    # and in its own checkout a cwd reader still hits
    plain("make", "clean", cwd=second)
    again = vrift("wrap", "--explain", "make", cwd=second, check=True)
    assert cache_counts(again.stderr) == (total, 0, 0), again.stderr
    assert_same(wrapped, second)
