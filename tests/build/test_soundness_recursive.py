"""Soundness: nested build tools (a sub-make, make under ninja, ninja under `cmake --build`).
A nested tool only compares timestamps when it finds nothing to do: replaying such a run
after an edit below it is the classic wrong build (issue item 1)."""
from __future__ import annotations

import subprocess

import pytest

from support.soundness import daemons, has, needs_c_side, twin, xfail  # noqa: F401

pytestmark = needs_c_side

TOP = """\
all: sub
sub:
\t$(MAKE) -C sub
clean:
\t$(MAKE) -C sub clean
.PHONY: all sub clean
"""
SUB = """\
out.o: a.c
\tcc -c a.c -o out.o
"""


def test_recursive_make_rebuilds_below_after_an_edit(twin):
    t = twin({"Makefile": TOP, "sub/Makefile": SUB, "sub/a.c": "int a(void) { return 1; }\n"})
    t.build("make")
    t.build("make")  # make[1]: 'out.o' is up to date
    t.edit("sub/a.c", "return 1", "return 2")
    t.build("make")


PROBING_SUB = """\
VER := $(shell echo 1.2.3 | tr . _)
OBJS := a.o b.o c.o
lib.a: $(OBJS)
\tar rcs lib.a $(OBJS)
%.o: %.c
\tcc -DVER_$(VER) -c $< -o $@
clean:
\trm -f *.o lib.a
"""


def test_commands_below_a_probing_sub_make_hit_after_clean(twin):
    t = twin({"Makefile": TOP, "sub/Makefile": PROBING_SUB,
              **{f"sub/{n}.c": f"int {n}(void) {{ return {i}; }}\n" for i, n in enumerate("abc")}})
    t.build("make")
    t.sh("make clean")
    warm = t.build("make")
    hits, misses, _ = warm.counts
    assert hits >= 4 and misses == 0, warm.wrapped.stderr  # three compiles and the archive


NINJA_RUNS_MAKE = """\
rule submake
  command = make -s -C sub
  description = SUBMAKE
build sub-done: submake
"""


def test_make_under_ninja_rebuilds_below_after_an_edit(twin):
    # sub-done is never written: ninja runs the sub-make every time, as projects do with
    # a build script they cannot describe
    t = twin({"build.ninja": NINJA_RUNS_MAKE, "sub/Makefile": SUB, "sub/a.c": "int a(void) { return 1; }\n"})
    t.build("ninja", "-j1")
    # the developer rebuilds the directory by hand, then the whole tree: the sub-make runs
    # (a.c changed since its entry) and finds nothing to do
    t.edit("sub/a.c", "return 1", "return 2")
    t.sh("make -s -C sub")
    t.build("ninja", "-j1")
    t.edit("sub/a.c", "return 2", "return 3")
    t.build("ninja", "-j1")


CMAKELISTS = """\
cmake_minimum_required(VERSION 3.10)
project(sound C)
add_library(util STATIC util.c)
add_executable(app main.c)
target_link_libraries(app util)
"""
CMAKE_FILES = {
    "CMakeLists.txt": CMAKELISTS,
    "util.h": "#define K 1\nint util(int);\n",
    "util.c": '#include "util.h"\nint util(int x) { return x + K; }\n',
    "main.c": '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", util(K)); return 0; }\n',
}


def configure(t) -> None:
    t.sh("cmake -G Ninja -S . -B build >/dev/null")


def program_outputs(t) -> list[str]:
    return [subprocess.run([str(root / "build/app")], capture_output=True, text=True, check=True).stdout
            for root in t.roots]


@pytest.fixture
def cmake(twin):
    if not (has("cmake") and has("ninja")):
        pytest.skip("cmake and ninja needed")
    return twin


@pytest.mark.slow
def test_cmake_ninja_header_edit_and_warm_rebuild(cmake):
    t = cmake(CMAKE_FILES)
    configure(t)
    t.build("ninja", "-j1", "-C", "build")
    t.sh("ninja -C build -t clean >/dev/null")
    warm = t.build("ninja", "-j1", "-C", "build")
    assert warm.counts[0] >= 3, warm.wrapped.stderr  # two compiles, the archive (and the link)
    t.edit("util.h", "K 1", "K 2")
    t.build("ninja", "-j1", "-C", "build")
    t.build("ninja", "-j1", "-C", "build")
    a, b = program_outputs(t)
    assert a == b == "4\n"


@pytest.mark.slow
def test_cmake_build_rebuilds_after_a_header_edit(cmake):
    t = cmake(CMAKE_FILES)
    configure(t)
    t.build("cmake", "--build", "build", "-j1")
    t.build("cmake", "--build", "build", "-j1")  # ninja: no work to do
    t.edit("util.h", "K 1", "K 2")
    t.build("cmake", "--build", "build", "-j1")
    a, b = program_outputs(t)
    assert a == b == "4\n"


def test_the_same_command_in_two_directories(twin):
    """`cc -c x.c -o x.o` in a/ and in b/: one command line, two actions (the cwd differs)."""
    top = "all:\n\t$(MAKE) -C a\n\t$(MAKE) -C b\nclean:\n\trm -f a/x.o b/x.o\n.PHONY: all clean\n"
    sub = "x.o: x.c\n\tcc -c x.c -o x.o\n"
    t = twin({"Makefile": top, "a/Makefile": sub, "b/Makefile": sub,
              "a/x.c": "int x(void) { return 1; }\n", "b/x.c": "int x(void) { return 2; }\n"})
    t.build("make")
    t.sh("make clean")
    t.build("make")
    t.edit("b/x.c", "return 2", "return 3")
    t.build("make")


BUILD_SH = """\
read -r flags
cc $flags -c a.c -o a.o
cc $flags -c b.c -o b.o
"""


def test_a_script_fed_by_its_own_pipe_hits_whole(twin):
    """`echo -O1 | sh build.sh`: both ends of the pipe are the action's, so it is one action."""
    graph = ("rule script\n  command = echo -O1 | sh build.sh\n  description = SCRIPT\n"
             "build a.o b.o: script a.c b.c | build.sh\n")
    t = twin({"build.ninja": graph, "build.sh": BUILD_SH, "a.c": "int a;\n", "b.c": "int b;\n"})
    t.build("ninja", "-j1")
    t.sh("rm a.o b.o")
    warm = t.build("ninja", "-j1")
    assert warm.counts[:2] == (1, 0), warm.wrapped.stderr


def test_children_of_an_uncacheable_script_still_hit(twin):
    """The script reads the build's stdin, a pipe from outside: it runs every time, but the
    compiles it starts after that are actions of their own."""
    graph = ("rule script\n  command = sh build.sh\n  description = SCRIPT\n  pool = console\n"
             "build a.o b.o: script a.c b.c | build.sh\n")
    t = twin({"build.ninja": graph, "build.sh": BUILD_SH, "a.c": "int a;\n", "b.c": "int b;\n"})
    t.build("ninja", "-j1", piped="-O1\n")
    t.sh("rm a.o b.o")
    warm = t.build("ninja", "-j1", piped="-O1\n")
    hits, misses, uncacheable = warm.counts
    # the two compiles hit; the script is looked up (a miss) and runs (uncacheable)
    assert (hits, misses, uncacheable) == (2, 1, 1), warm.wrapped.stderr
    t.edit("b.c", "int b;", "int b = 2;")
    t.sh("rm a.o")
    changed = t.build("ninja", "-j1", piped="-O2\n")  # other flags: both compile again
    assert changed.counts[0] == 0, changed.wrapped.stderr
