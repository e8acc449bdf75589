"""Soundness: pipes, and the streams and metadata around an action's outputs.  A pipe both of
whose ends belong to the action is internal (`cpp x | sed > y`, a `$(shell … | …)` probe): the
action is cached; a pipe from outside (`echo x | vrift wrap make` into a recipe reading stdin)
is data the cache cannot see, never replayed."""
from __future__ import annotations

from support.soundness import daemons, needs_c_side, twin  # noqa: F401

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


def test_an_append_to_a_new_file_is_replayed_only_where_it_is_absent(twin):
    t = twin({"Makefile": "log.txt: in.txt\n\tcat in.txt >> log.txt\n", "in.txt": "one\n"})
    t.build("make")
    t.sh("rm log.txt")
    warm = t.build("make")
    assert warm.counts[0] == 1, warm.wrapped.stderr  # absent again: the first run is right
    t.sh("touch in.txt")  # make runs it again, over the existing log: it appends
    t.build("make")
    assert (t.wrapped / "log.txt").read_text() == "one\none\n"


def test_touch_keeps_what_is_there(twin):
    # touch opens without O_TRUNC: a new stamp is empty, an existing one keeps its bytes
    t = twin({"Makefile": "stamp: in.txt\n\ttouch stamp\n", "in.txt": "one\n"})
    t.build("make")
    t.sh("rm stamp")
    warm = t.build("make")
    assert warm.counts[0] == 1, warm.wrapped.stderr
    t.sh("echo kept > stamp")
    t.sh("touch in.txt")
    t.build("make")
    assert (t.wrapped / "stamp").read_text() == "kept\n"


def test_the_umask_is_part_of_the_key(twin):
    t = twin({"Makefile": "app: main.c\n\tcc -o app main.c\n", "main.c": "int main(void) { return 0; }\n"})
    t.build("make", umask=0o077)
    t.sh("rm app")
    other = t.build("make", umask=0o022)  # another umask: another key, the compile runs
    assert other.counts[0] == 0, other.wrapped.stderr
    t.sh("rm app")
    same = t.build("make", umask=0o077)
    assert same.counts[0] == 1, same.wrapped.stderr
    assert oct((t.wrapped / "app").stat().st_mode & 0o777) == "0o700"


def test_a_hard_link_is_made_again_not_replayed_as_a_copy(twin):
    t = twin({"Makefile": "hard.txt: data.txt\n\tln -f data.txt hard.txt\n", "data.txt": "one\n"})
    first = t.build("make")
    assert "creates a hard link" in first.wrapped.stderr, first.wrapped.stderr
    t.sh("rm hard.txt")
    t.build("make")  # the snapshot compares link counts: 2 in both trees
    assert (t.wrapped / "hard.txt").stat().st_ino == (t.wrapped / "data.txt").stat().st_ino


def test_explicit_times_are_kept(twin):
    t = twin({"Makefile": "all: a.h b.h\na.h: orig.h\n\tcp -p orig.h a.h\nb.h: orig.h\n\tcp orig.h b.h && touch -r orig.h b.h\n",
              "orig.h": "#define O 1\n"})
    t.sh("touch -d '2001-02-03 04:05:06' orig.h")
    first = t.build("make")
    assert "sets file times" in first.wrapped.stderr, first.wrapped.stderr
    t.sh("rm a.h b.h")
    t.build("make")
    for root in t.roots:
        for name in ("a.h", "b.h"):
            assert (root / name).stat().st_mtime_ns == (root / "orig.h").stat().st_mtime_ns, (root, name)


def test_touch_without_a_time_is_still_cached(twin):
    t = twin({"Makefile": "stamp: in.txt\n\tcp in.txt stamp && touch stamp\n", "in.txt": "one\n"})
    t.build("make")
    t.sh("rm stamp")
    warm = t.build("make")
    assert warm.counts[0] == 1, warm.wrapped.stderr


BUILD_SH = """\
read -r flags
cc $flags -c a.c -o a.o
cc $flags -c b.c -o b.o
"""


def test_an_uncacheable_script_under_make_still_has_its_compiles_replayed(twin):
    t = twin({"Makefile": "all: a.c b.c build.sh\n\tsh build.sh\n.PHONY: all\n", "build.sh": BUILD_SH,
              "a.c": "int a;\n", "b.c": "int b;\n"})
    t.build("make", piped="-O1\n")
    t.sh("rm a.o b.o")
    warm = t.build("make", piped="-O1\n")
    assert warm.counts == (2, 1, 1), warm.wrapped.stderr  # the compiles hit; the script runs
    t.edit("a.c", "int a;", "int a = 1;")
    edited = t.build("make", piped="-O1\n")
    assert edited.counts == (1, 2, 1), edited.wrapped.stderr  # a.c compiles again, b.o hits


def test_what_an_uncacheable_script_exports_is_in_its_childrens_keys(twin):
    # the value comes from the pipe (seen by nobody); gen.sh reads it from its environment
    script = "read -r flags\nexport FLAGS=\"$flags\"\nsh gen.sh > out.txt\n"
    t = twin({"Makefile": "all:\n\tsh build.sh\n.PHONY: all\n", "build.sh": script, "gen.sh": "echo \"$FLAGS\"\n"})
    t.build("make", piped="-O1\n")
    t.build("make", piped="-O2\n")
    assert (t.wrapped / "out.txt").read_text() == "-O2\n"
    again = t.build("make", piped="-O2\n")
    assert again.counts[0] == 1, again.wrapped.stderr  # the same environment: gen.sh hits
