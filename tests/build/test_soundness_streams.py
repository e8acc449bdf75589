"""Soundness: standard streams — stdin redirected from a regular file is an input (issue item
6); recording changes nothing a recipe sees of stdout/stderr: the terminal stays a terminal,
colours survive, and the order of writes across stdout and stderr is kept, on a miss and on a
hit (item 9)."""
from __future__ import annotations

import sys

from support.build import run_in_a_terminal, tool_env
from support.soundness import daemons, needs_c_side, twin, xfail  # noqa: F401

pytestmark = needs_c_side


def test_stdin_of_the_build_from_a_file(twin):
    t = twin({"Makefile": "out.txt:\n\tcat > out.txt\n", "f": "one\n"})
    t.build("make", stdin="f")
    t.sh("echo two > f; rm out.txt")
    t.build("make", stdin="f")


def test_a_recipe_reading_stdin_from_a_file(twin):
    t = twin({"Makefile": "out.txt:\n\ttr a-z A-Z < in.txt > out.txt\n", "in.txt": "one\n"})
    t.build("make")
    t.sh("echo two > in.txt; rm out.txt")
    t.build("make")


TALK = """\
echo out1
echo err1 >&2
echo out2
echo err2 >&2
echo out3
"""


def test_stdout_and_stderr_order_under_2_to_1(twin):
    t = twin({"Makefile": "all:\n\tsh talk.sh\n\tsh talk.sh > /dev/null\n", "talk.sh": TALK})
    t.build("make", stderr_to_stdout=True)  # a miss
    again = t.build("make", stderr_to_stdout=True)  # a hit
    assert again.counts[0] == 2, again.wrapped.stdout


def under_a_terminal(root, argv, env) -> str:
    """Run argv with stdout and stderr on one pseudo-terminal; what it showed."""
    shown, status = run_in_a_terminal(argv, root, env)
    assert status == 0, shown
    return shown.replace("\r\n", "\n")


def terminal_builds(t, *cmd) -> tuple[str, str]:
    plain = under_a_terminal(t.plain, list(cmd), tool_env())
    wrapped = under_a_terminal(t.wrapped, [sys.executable, "-m", "vrift", "wrap", *cmd], tool_env())
    keep = lambda text, root: [line.replace(str(root), "@") for line in text.splitlines()  # noqa: E731
                               if not line.startswith("vrift: ")]
    return keep(plain, t.plain), keep(wrapped, t.wrapped)


SEES = """\
all: warn.o
\tif [ -t 1 ]; then echo stdout is a terminal; else echo stdout is not a terminal; fi
\tif [ -t 2 ]; then echo stderr is a terminal >&2; else echo stderr is not a terminal >&2; fi
warn.o: warn.c
\tcc -Wall -fdiagnostics-color=auto -c warn.c -o warn.o
"""


def test_recipes_see_the_terminal_and_colours_survive(twin):
    t = twin({"Makefile": SEES, "warn.c": "int f(void) { int unused; return 0; }\n"})
    plain, wrapped = terminal_builds(t, "make")
    assert "stdout is a terminal" in plain and "\x1b[" in "\n".join(plain)  # the premise: gcc coloured
    assert wrapped == plain
    t.sh("rm warn.o")
    plain, wrapped = terminal_builds(t, "make")  # the compile a hit: its replayed warning
    assert wrapped == plain


def test_a_recipe_whose_only_output_is_stdout(twin):
    t = twin({"Makefile": "show:\n\tcat data.txt\n\tseq 1 100000\n.PHONY: show\n", "data.txt": "one\n"})
    t.build("make")
    t.edit("data.txt", "one", "two")
    t.build("make")
    t.build("make")
