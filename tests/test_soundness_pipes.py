"""Soundness: pipes, and the streams and metadata around an action's outputs.  A pipe both of
whose ends belong to the action is internal (`cpp x | sed > y`, a `$(shell … | …)` probe): the
action is cached; a pipe from outside (`echo x | vrift wrap make` into a recipe reading stdin)
is data the cache cannot see, never replayed."""
from __future__ import annotations

from soundness_support import daemons, needs_c_side, twin  # noqa: F401

pytestmark = needs_c_side


def test_a_pipeline_inside_a_recipe_hits_after_clean(twin):
    t = twin({"Makefile": "y.txt: x.in\n\ttr a-z A-Z < x.in | sed 's/ONE/one/' > y.txt\n", "x.in": "one two\n"})
    t.build("make")
    t.sh("rm y.txt")
    warm = t.build("make")
    hits, misses, uncacheable = warm.counts
    assert (hits, misses, uncacheable) == (1, 0, 0), warm.wrapped.stderr
    t.edit("x.in", "two", "three")
    changed = t.build("make")
    assert changed.counts[0] == 0, changed.wrapped.stderr
    assert (t.wrapped / "y.txt").read_text() == "one THREE\n"


def test_a_pipe_from_outside_is_never_replayed(twin):
    t = twin({"Makefile": "got.txt:\n\tcat > got.txt\n"})
    first = t.build("make", piped="first\n")
    assert "read from stdin (pipe)" in first.wrapped.stderr, first.wrapped.stderr
    t.sh("rm got.txt")
    second = t.build("make", piped="second\n")
    assert second.counts[0] == 0, second.wrapped.stderr
    assert (t.wrapped / "got.txt").read_text() == "second\n"


def test_a_pipe_from_outside_through_a_pipeline_is_never_replayed(twin):
    # the recipe's own pipe is internal, but its first command reads the build's stdin
    t = twin({"Makefile": "got.txt:\n\tcat | tr a-z A-Z > got.txt\n"})
    t.build("make", piped="first\n")
    t.sh("rm got.txt")
    second = t.build("make", piped="second\n")
    assert second.counts[0] == 0, second.wrapped.stderr
    assert (t.wrapped / "got.txt").read_text() == "SECOND\n"
