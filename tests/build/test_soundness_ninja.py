"""Soundness: ninja builds (depfiles, a restat generator, several outputs of one edge, a failing
edge under -k 0) and a CMake project configured and regenerated wrapped. ninja runs with -j1
so that the order of its status lines is the same in both trees."""
from __future__ import annotations

import subprocess

import pytest

from support.soundness import daemons, has, needs_c_side, twin  # noqa: F401

pytestmark = needs_c_side

RULES = """\
cc = cc
rule cc
  command = $cc -MMD -MF $out.d -c $in -o $out
  depfile = $out.d
  deps = gcc
  description = CC $out
rule link
  command = $cc -o $out $in
  description = LINK $out
rule ar
  command = rm -f $out && ar crs $out $in
  description = AR $out
"""
GRAPH = RULES + """\
build obj/main.o: cc main.c
build obj/u0.o: cc u0.c
build obj/u1.o: cc u1.c
build obj/u2.o: cc u2.c
build obj/libu.a: ar obj/u1.o obj/u2.o
build app: link obj/main.o obj/u0.o obj/libu.a
"""
SOURCES = {
    "common.h": "#define K 3\n",
    "main.c": ('#include <stdio.h>\nint u0(void); int u1(void); int u2(void);\n'
               'int main(void) { printf("%d\\n", u0() + u1() + u2()); return 0; }\n'),
    **{f"u{i}.c": f'#include "common.h"\nint u{i}(void) {{ return {i + 1} * K; }}\n' for i in range(3)},
}


@pytest.fixture
def ninja(twin):
    if not has("ninja"):
        pytest.skip("ninja needed")
    return lambda files, **kw: twin(files, **kw)


def build(t, *args, **kw):
    return t.build("ninja", "-j1", *args, **kw)


def test_depfile_header_edit_noop_partial_clean_and_revert(ninja):
    t = ninja({"build.ninja": GRAPH, **SOURCES})
    build(t)
    build(t)  # ninja: no work to do (the replayed outputs' times included)
    t.edit("common.h", "K 3", "K 4")
    build(t)
    build(t)
    t.sh("rm obj/u1.o")
    build(t)
    t.sh("ninja -t clean >/dev/null")
    warm = build(t)
    assert warm.counts[:2] == (6, 0), warm.wrapped.stderr
    t.edit("common.h", "K 4", "K 3")
    back = build(t)
    assert back.counts[:2] == (5, 0), back.wrapped.stderr  # three compiles, archive, link


GEN = """\
grep -v '^#' "$1" | sed 's/^/#define /' > "$2.tmp"
if cmp -s "$2.tmp" "$2"; then rm -f "$2.tmp"; else mv "$2.tmp" "$2"; fi
"""
RESTAT = RULES + """\
rule gen
  command = sh gen.sh $in $out
  restat = 1
  description = GEN $out
build gen.h: gen gen.in | gen.sh
build obj/main.o: cc main.c || gen.h
build app: link obj/main.o
"""


def test_a_restat_generator_that_keeps_its_output(ninja):
    t = ninja({"build.ninja": RESTAT, "gen.sh": GEN, "gen.in": "# values\nV 1\n",
               "main.c": '#include <stdio.h>\n#include "gen.h"\nint main(void) { printf("%d\\n", V); return 0; }\n'})
    build(t)
    t.edit("gen.in", "# values", "# the values")  # the header comes out the same: no compile
    build(t)
    t.edit("gen.in", "V 1", "V 2")
    build(t)
    t.edit("gen.in", "V 2", "V 1")
    build(t)
    build(t)


def test_an_edge_with_two_outputs(ninja):
    two = ("rule split\n  command = sh split.sh $in\n  description = SPLIT\n"
           "build a.txt b.txt: split spec.txt\n")
    t = ninja({"build.ninja": two, "spec.txt": "a\nb\n",
               "split.sh": 'head -n 1 "$1" > a.txt\ntail -n 1 "$1" > b.txt\n'})
    build(t)
    t.sh("rm a.txt")
    build(t)
    t.edit("spec.txt", "b", "B")
    build(t)


def test_keep_going_with_a_failing_edge(ninja):
    graph = RULES + "build obj/good.o: cc good.c\nbuild obj/bad.o: cc bad.c\n"
    t = ninja({"build.ninja": graph, "good.c": "int good;\n", "bad.c": "int bad(void) { return }\n"})
    build(t, "-k", "0", status=1)
    again = build(t, "-k", "0", status=1)
    assert again.counts[0] == 0, again.wrapped.stderr  # the failure ran again
    t.edit("bad.c", "return }", "return 0; }")
    build(t)


CMAKELISTS = """\
cmake_minimum_required(VERSION 3.10)
project(sound C)
add_library(util STATIC util.c)
add_executable(app main.c)
target_link_libraries(app util)
# target_compile_definitions(util PRIVATE BIG=1)
"""
CMAKE_FILES = {
    "CMakeLists.txt": CMAKELISTS,
    "util.c": "#ifdef BIG\nint util(void) { return 100; }\n#else\nint util(void) { return 1; }\n#endif\n",
    "main.c": '#include <stdio.h>\nint util(void);\nint main(void) { printf("%d\\n", util()); return 0; }\n',
}


@pytest.mark.slow
def test_cmake_configured_and_regenerated_wrapped(ninja):
    if not has("cmake"):
        pytest.skip("cmake needed")
    t = ninja(CMAKE_FILES)
    t.build("cmake", "-G", "Ninja", "-S", ".", "-B", "build", "-DCMAKE_BUILD_TYPE=Release",
            only=["build/build.ninja", "build/compile_commands.json"], compare_stderr=False, ordered=False)
    build(t, "-C", "build")
    # the build re-runs cmake (under ninja: a nested tool) after CMakeLists.txt changes
    t.edit("CMakeLists.txt", "# target_compile", "target_compile")
    build(t, "-C", "build", compare_stderr=False, only=["build/app", "build/libutil.a", "build/build.ninja"],
          ordered=False)
    build(t, "-C", "build")
    shown = [subprocess.run([str(root / "build/app")], capture_output=True, text=True, check=True).stdout
             for root in t.roots]
    assert shown == ["100\n", "100\n"]
