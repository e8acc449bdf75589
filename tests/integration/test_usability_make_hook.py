"""The Makefile one-line opt-in uses the action cache as `vrift wrap make` does: each recipe is
an action, recorded on the first build and replayed after a clean, outputs byte-identical."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from support.build import EXAMPLES, assert_same_outputs, copy_tree, plain, require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401


def _without_vrift() -> dict:
    """An environment whose PATH has no `vrift` at all (a plain make must not find one)."""
    env = tool_env(with_vrift_on_path=False)
    env["PATH"] = os.pathsep.join(d for d in env["PATH"].split(os.pathsep)
                                  if not os.path.exists(os.path.join(d, "vrift")))
    return env


def _make(tree, env):
    done = subprocess.run(["make"], cwd=tree, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _cache(tree, env) -> dict:
    vrift("daemon", "stop", cwd=tree, env=env, check=True)  # counters are folded in at exit
    return json.loads(vrift("cache", "stats", "--json", cwd=tree, env=env, check=True).stdout)


def test_the_makefile_line_records_and_replays(tmp_path, daemons):
    require_tools("make", "cc")
    ptree = copy_tree(EXAMPLES / "make-hello", tmp_path / "p")
    plain("make", cwd=ptree, env=_without_vrift())
    hooked = copy_tree(EXAMPLES / "make-hello", tmp_path / "m")
    env = tool_env()
    _make(hooked, env)
    assert_same_outputs(hooked, ptree)
    cold = _cache(hooked, env)
    # four compiles (each `mkdir -p` line is one more action) and the link
    assert cold["recorded"] >= 5, cold  # later `mkdir -p build/obj` lines hit the first one

    shutil.rmtree(hooked / "build")
    _make(hooked, env)
    assert_same_outputs(hooked, ptree)
    warm = _cache(hooked, env)
    assert warm["hits"] - cold["hits"] >= 5 and warm["time_saved_s"] > 0, (cold, warm)
    assert plain(hooked / "build/hello", cwd=hooked).stdout == "hello, make: 42\n"

    # VRIFT_CACHE=0 make: the recipes run under the library, without the cache
    shutil.rmtree(hooked / "build")
    _make(hooked, dict(env, VRIFT_CACHE="0"))
    off = _cache(hooked, env)
    assert off["hits"] == warm["hits"] and off["misses"] == warm["misses"]
    assert_same_outputs(hooked, ptree)
