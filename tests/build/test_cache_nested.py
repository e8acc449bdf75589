"""Nested build tools in real builds (docs/cache.md, "Nested build tools"): a sub-make, a build
script running make, ninja under `cmake --build` are tools, not actions; the commands they run
are actions of their own, and whatever action ran them is never replayed."""
from __future__ import annotations

from pathlib import Path

import pytest

from support.build import assert_same_outputs, let_clock_tick, make_rebuilt, plain, require_tools, vrift
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

UNITS = ("a", "b", "c")
TOP = """\
all: sub other
sub:
\t$(MAKE) -C sub
other:
\tcd other && $(MAKE)
.PHONY: all sub other
"""
SUB = """\
CFLAGS := -O1 $(shell echo -DLEVEL=$$(echo 2 | tr 2 3))
OBJS := {objs}
libsub.a: $(OBJS)
\trm -f $@
\tar crs $@ $(OBJS)
%.o: %.c
\tcc $(CFLAGS) -c $< -o $@
"""


def source(name: str, value: int) -> str:
    return f"int {name}_value(void) {{ return {value} + LEVEL; }}\n"


def recursive_project(root: Path) -> Path:
    for d in ("sub", "other"):
        (root / d).mkdir(parents=True)
        (root / d / "Makefile").write_text(SUB.format(objs=" ".join(f"{u}.o" for u in UNITS)))
        for i, u in enumerate(UNITS):
            (root / d / f"{u}.c").write_text(source(f"{d}_{u}", i))
    (root / "Makefile").write_text(TOP)
    (root / ".vrift.yaml").write_text("")
    return root


def clean(root: Path) -> None:
    for d in ("sub", "other"):
        for p in (root / d).glob("*.[oa]"):
            p.unlink()


def edit(roots, rel: str, old: str, new: str) -> None:
    let_clock_tick()
    for root in roots:
        p = root / rel
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new))


def same(a: Path, b: Path) -> None:
    for d in ("sub", "other"):
        assert_same_outputs(a, b, d)


@pytest.fixture
def trees(tmp_path, daemons):
    require_tools("make", "cc", "ar")
    return recursive_project(tmp_path / "plain"), recursive_project(tmp_path / "p")


def test_recursive_make_children_hit_and_an_edit_reruns_exactly_its_compile(trees):
    ref, proj = trees
    plain("make", cwd=ref)
    cold = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    same(proj, ref)
    # the sub-makes are tools: 2 x (3 compiles, rm, ar) are actions; so are their $(shell)
    # probes (a pipeline inside the action: cacheable); `cd other && make` is an action that
    # ran a build tool: uncacheable
    assert cache_counts(cold.stderr) == (0, 13, 1), cold.stderr
    assert "runs a nested build tool" in cold.stderr, cold.stderr
    assert "make -C sub" not in cold.stderr, cold.stderr  # never looked up: not an action

    clean(proj)
    warm = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    # every command below the sub-makes hits, the probes too; the `cd other && make` shell runs
    assert cache_counts(warm.stderr) == (12, 1, 1), warm.stderr
    same(proj, ref)

    # nothing to do: the sub-makes say so (a no-op sub-make is never recorded and replayed)
    noop = vrift("wrap", "make", cwd=proj, check=True)
    assert "'libsub.a' is up to date" in noop.stdout

    edit((ref, proj), "sub/b.c", "+ LEVEL", "+ LEVEL + 10")
    want = make_rebuilt(plain("make", cwd=ref).stdout)
    assert want == ["ar crs libsub.a a.o b.o c.o", "cc -O1 -DLEVEL=3 -c b.c -o b.o", "rm -f libsub.a"]
    again = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    assert make_rebuilt(again.stdout) == want, again.stdout
    assert "cache miss: cc -O1 -DLEVEL=3 -c b.c -o b.o: sub/b.c changed" in again.stderr, again.stderr
    same(proj, ref)


def test_a_build_script_running_make(tmp_path, daemons):
    require_tools("make", "cc", "ar")
    trees = []
    for name in ("plain", "p"):
        root = recursive_project(tmp_path / name)
        script = root / "build.sh"
        script.write_text("#!/bin/sh\nset -e\nmake -C sub\n(cd other && make)\necho built\n")
        script.chmod(0o755)
        trees.append(root)
    ref, proj = trees
    plain("./build.sh", cwd=ref)
    cold = vrift("wrap", "--", "./build.sh", cwd=proj, check=True)
    assert cold.stdout.endswith("built\n")
    same(proj, ref)
    clean(proj)
    warm = vrift("wrap", "--", "./build.sh", cwd=proj, check=True)
    assert cache_counts(warm.stderr) == (12, 0, 0), warm.stderr  # the probes too
    same(proj, ref)
    edit((ref, proj), "other/c.c", "+ LEVEL", "- LEVEL")
    want = make_rebuilt(plain("./build.sh", cwd=ref).stdout)
    again = vrift("wrap", "--", "./build.sh", cwd=proj, check=True)
    assert make_rebuilt(again.stdout) == want and len(want) == 3, again.stdout
    assert cache_counts(again.stderr) == (2, 3, 1), again.stderr  # the probes hit; `rm -f` of the old archive
    same(proj, ref)


CMAKE = """\
cmake_minimum_required(VERSION 3.10)
project(nested C)
add_library(parts STATIC a.c b.c c.c)
"""


def test_ninja_under_cmake_build_run_by_make(tmp_path, daemons):
    require_tools("make", "cmake", "ninja", "cc", "ar")
    trees = []
    for name in ("plain", "p"):
        root = tmp_path / name
        (root / "lib").mkdir(parents=True)
        (root / "lib/CMakeLists.txt").write_text(CMAKE)
        for i, u in enumerate(UNITS):
            (root / "lib" / f"{u}.c").write_text(f"#define LEVEL 1\n{source(u, i)}")
        (root / "Makefile").write_text("all:\n\tcmake --build out\n.PHONY: all\n")
        (root / ".vrift.yaml").write_text("")
        plain("cmake", "-G", "Ninja", "-S", "lib", "-B", "out", cwd=root)
        trees.append(root)
    ref, proj = trees
    plain("make", cwd=ref)
    cold = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    # `cmake --build` ran ninja: uncacheable; ninja's edges (3 compiles, archive) are actions
    assert cache_counts(cold.stderr) == (0, 5, 1), cold.stderr
    assert "runs a nested build tool" in cold.stderr
    lib = "out/libparts.a"
    assert (proj / lib).read_bytes() == (ref / lib).read_bytes()

    plain("ninja", "-C", "out", "-t", "clean", cwd=proj)
    warm = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    assert cache_counts(warm.stderr) == (4, 1, 1), warm.stderr
    assert (proj / lib).read_bytes() == (ref / lib).read_bytes()

    edit((ref, proj), "lib/a.c", "+ LEVEL", "* LEVEL")
    plain("make", cwd=ref)
    again = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    assert cache_counts(again.stderr) == (0, 3, 1), again.stderr  # cmake, a.c, the archive
    assert "lib/a.c changed" in again.stderr
    assert (proj / lib).read_bytes() == (ref / lib).read_bytes()
    for obj in (ref / "out").rglob("*.o"):
        rel = obj.relative_to(ref)
        assert (proj / rel).read_bytes() == obj.read_bytes(), rel


def test_cache_tools_names_the_build_tools(trees):
    """With `cache.tools: []` a sub-make is an ordinary action again (the old behaviour, for a
    tool one wants replayed whole): the configuration reaches the library."""
    _, proj = trees
    (proj / ".vrift.yaml").write_text("cache:\n  tools: []\n")
    cold = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    assert "cache miss: make -C sub" in cold.stderr, cold.stderr
    assert "runs a nested build tool" not in cold.stderr, cold.stderr
