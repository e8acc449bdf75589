"""Real ninja + gcc builds through `vrift wrap ninja`, compared byte for byte with plain ninja on
a copy of the same tree, including incremental builds after changes made outside vrift."""
from __future__ import annotations

import os

import pytest

from support.build import (assert_same_outputs, copy_tree, generate, let_clock_tick, ninja_rebuilt, parse_summary,
                           plain, require_tools, vrift)
from support.daemon import daemons  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("daemons")


@pytest.fixture(autouse=True)
def _tools():
    require_tools("ninja", "cc", "ar")


def both(vtree, ptree, *args):
    """The same ninja command in the vrift tree (wrapped) and the plain tree; the edges each ran."""
    wrapped = vrift("wrap", "ninja", *args, cwd=vtree, check=True)
    reference = plain("ninja", *args, cwd=ptree)
    return ninja_rebuilt(wrapped.stdout), ninja_rebuilt(reference.stdout), wrapped


@pytest.mark.slow
def test_generated_project_of_200_units_with_j4_equals_plain(tmp_path):
    vtree = generate(tmp_path / "v", units=200)
    ptree = copy_tree(vtree, tmp_path / "p")
    ours, theirs, wrapped = both(vtree, ptree, "-j4")
    assert len(ours) == len(theirs) == 200 + 4 + 2  # units, 4 libraries, main.o, the link
    assert sorted(ours) == sorted(theirs)
    assert assert_same_outputs(vtree, ptree) >= 206
    s = parse_summary(wrapped.stderr)
    assert s["committed"] >= 206, "every object, archive and the program went through the daemon"
    assert s["served"] > 0 and "not accelerated" not in s["notes"]
    again = vrift("wrap", "ninja", "-j4", cwd=vtree, check=True)
    assert "ninja: no work to do." in again.stdout
    s = parse_summary(again.stderr)
    assert s["served"] > s["passed"], "a no-op build answers its stat calls from memory"
    assert plain(vtree / "build/app", cwd=vtree).stdout == plain(ptree / "build/app", cwd=ptree).stdout


def _edit(path, text):
    with open(path, "w") as f:  # an editor's plain in-place write, outside vrift
        f.write(text)


def _atomic_save(path, text):
    tmp = path.with_name(path.name + ".swp")
    tmp.write_text(text)
    os.rename(tmp, path)  # how many editors save: write a new file, rename it over the old


def test_incremental_builds_rebuild_exactly_what_plain_ninja_rebuilds(tmp_path):
    vtree = generate(tmp_path / "v", units=40, headers=8)
    ptree = copy_tree(vtree, tmp_path / "p")
    ours, theirs, _ = both(vtree, ptree)
    assert ours == theirs and len(ours) == 40 + 1 + 2

    steps = {
        "edit a header": lambda t: _edit(t / "include/h003.h", (t / "include/h003.h").read_text() + "/* edited */\n"),
        "touch a source": lambda t: os.utime(t / "src/d000/u00007.c"),
        "save a header by rename": lambda t: _atomic_save(t / "include/h005.h",
                                                          (t / "include/h005.h").read_text() + "#define X5 1\n"),
        "delete an object": lambda t: os.unlink(t / "build/obj/d000/u00011.o"),
        "delete a unit": lambda t: (os.unlink(t / "src/d000/u00039.c"), generate(t, units=39, headers=8)),
        "edit a nested header": lambda t: _edit(t / "include/h001.h", (t / "include/h001.h").read_text() + "\n"),
    }
    for name, change in steps.items():
        let_clock_tick()
        change(vtree)
        change(ptree)
        ours, theirs, wrapped = both(vtree, ptree)
        assert ours, f"{name}: plain ninja rebuilt nothing, the step tests nothing"
        assert ours == theirs, f"{name}: vrift rebuilt {ours}, plain ninja {theirs}"
        assert_same_outputs(vtree, ptree)
        summary = parse_summary(wrapped.stderr)
        # every rebuilt output went through vrift: written and committed, or replayed by the cache
        assert summary["committed"] + summary["cache"][0] >= 1, wrapped.stderr
        assert "ninja: no work to do." in vrift("wrap", "ninja", cwd=vtree, check=True).stdout, name
