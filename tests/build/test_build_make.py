"""Real GNU make + gcc builds through `vrift wrap make` (make itself under the preload library),
compared byte for byte with plain make on a copy, including incremental builds."""
from __future__ import annotations

import os

import pytest

from support.build import (assert_same_outputs, copy_tree, generate, let_clock_tick, make_rebuilt, parse_summary,
                           plain, require_tools, vrift)
from support.daemon import daemons  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("daemons")


@pytest.fixture(autouse=True)
def _tools():
    require_tools("make", "cc", "ar")


def both(vtree, ptree, *args):
    wrapped = vrift("wrap", "make", *args, cwd=vtree, check=True)
    reference = plain("make", *args, cwd=ptree)
    return make_rebuilt(wrapped.stdout), make_rebuilt(reference.stdout), wrapped


@pytest.mark.slow
def test_generated_project_with_j4_equals_plain(tmp_path):
    vtree = generate(tmp_path / "v", units=200)
    ptree = copy_tree(vtree, tmp_path / "p")
    ours, theirs, wrapped = both(vtree, ptree, "-j4")
    assert ours == theirs and len(ours) == 200 + 1 + 4 + 1
    assert assert_same_outputs(vtree, ptree) >= 206
    s = parse_summary(wrapped.stderr)
    assert s["committed"] >= 206 and s["served"] > 0
    again = vrift("wrap", "make", "-j4", cwd=vtree, check=True)
    assert make_rebuilt(again.stdout) == []
    s = parse_summary(again.stderr)
    assert s["served"] > s["passed"], "make's __xstat calls of a no-op build come from memory"


def test_incremental_builds_rebuild_exactly_what_plain_make_rebuilds(tmp_path):
    vtree = generate(tmp_path / "v", units=30, headers=6)
    ptree = copy_tree(vtree, tmp_path / "p")
    ours, theirs, _ = both(vtree, ptree)
    assert ours == theirs and len(ours) == 30 + 1 + 1 + 1

    def rename_save(t):
        h = t / "include/h002.h"
        tmp = h.with_name("h002.h.new")
        tmp.write_text(h.read_text() + "#define Y 2\n")
        os.rename(tmp, h)

    def edit(t):
        with open(t / "include/h004.h", "a") as f:
            f.write("/* appended outside vrift */\n")

    steps = {
        "edit a header": edit,
        "touch a source": lambda t: os.utime(t / "src/d000/u00005.c"),
        "save a header by rename": rename_save,
        "delete an object": lambda t: os.unlink(t / "build/obj/d000/u00009.o"),
        "delete an archive": lambda t: os.unlink(t / "build/lib/libg0000.a"),
    }
    for name, change in steps.items():
        let_clock_tick()
        change(vtree)
        change(ptree)
        ours, theirs, wrapped = both(vtree, ptree)
        assert ours, f"{name}: plain make rebuilt nothing, the step tests nothing"
        assert ours == theirs, f"{name}: vrift ran {ours}, plain make {theirs}"
        assert_same_outputs(vtree, ptree)
        assert make_rebuilt(vrift("wrap", "make", cwd=vtree, check=True).stdout) == [], name
