"""Every example under examples/ builds through vrift to the same bytes as a plain build, and
does what its README says."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from support.build import (EXAMPLES, assert_same_outputs, copy_tree, make_rebuilt, parse_summary, plain,
                           require_tools, tool_env, vrift)
from support.daemon import daemons  # noqa: F401 - fixture
from vrift.daemon.client import connect_project
from vrift.identity import Project

pytestmark = pytest.mark.usefixtures("daemons")


def test_ninja_hello(tmp_path):
    require_tools("ninja", "cc")
    vtree = copy_tree(EXAMPLES / "ninja-hello", tmp_path / "v")
    ptree = copy_tree(EXAMPLES / "ninja-hello", tmp_path / "p")
    plain("ninja", cwd=ptree)
    wrapped = vrift("wrap", "ninja", cwd=vtree, check=True)
    assert "LINK build/hello" in wrapped.stdout and parse_summary(wrapped.stderr)["committed"] >= 5
    assert assert_same_outputs(vtree, ptree) == 5
    assert plain(vtree / "build/hello", cwd=vtree).stdout == "hello, ninja: 42\n"


def test_make_hello_through_wrap_and_through_the_makefile_line(tmp_path, daemons):
    require_tools("make", "cc")
    ptree = copy_tree(EXAMPLES / "make-hello", tmp_path / "p")
    plain("make", cwd=ptree)  # vrift not on PATH: the opt-in line is a no-op
    assert plain(ptree / "build/hello", cwd=ptree).stdout == "hello, make: 42\n"

    wrapped_tree = copy_tree(EXAMPLES / "make-hello", tmp_path / "w")
    wrapped = vrift("wrap", "make", cwd=wrapped_tree, check=True)
    assert parse_summary(wrapped.stderr)["committed"] >= 5, wrapped.stderr
    assert_same_outputs(wrapped_tree, ptree)

    # the one-line opt-in alone: plain `make` with vrift on PATH, recipes under the library
    hooked = copy_tree(EXAMPLES / "make-hello", tmp_path / "m")
    out = subprocess.run(["make"], cwd=hooked, env=tool_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert make_rebuilt(out.stdout) == make_rebuilt(plain("make", "-B", "-n", cwd=ptree).stdout)
    assert_same_outputs(hooked, ptree)
    with connect_project(daemons, Project.at(hooked), autostart=False) as client:
        client.sync()  # WRITTEN is one-way: the SYNC waits for every notification sent before it
        s = client.stats()  # the wrapped build's entries replay here: the line uses the cache too
        assert s["commits"] + s["cache"]["hits"] >= 5, "the recipes' outputs went through the daemon"
    again = subprocess.run(["make"], cwd=hooked, env=tool_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_plugin_example_installs_and_runs(tmp_path):
    require_tools("ninja", "cc")
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(EXAMPLES / "plugin")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = tool_env()
    env["PYTHONPATH"] = str(target)
    vtree = copy_tree(EXAMPLES / "ninja-hello", tmp_path / "v")
    listed = json.loads(vrift("plugins", "--json", cwd=vtree, env=env, check=True).stdout)
    stamp = next(p for p in listed["plugins"] if p["name"] == "buildstamp")
    assert stamp["source"] == "entry point" and stamp["hooks"] == ["vrift_cache_key", "vrift_post_build"]
    wrapped = vrift("wrap", "ninja", cwd=vtree, env=env, check=True)
    line = [x for x in wrapped.stderr.splitlines() if x.startswith("buildstamp: ")]
    assert line and line[0].startswith("buildstamp: ninja in v: ok, ") and "files committed" in line[0]
    from vrift.hooks.manager import load

    sys.path.insert(0, str(target))
    try:
        manager = load(report=None, entry_points=[("buildstamp", "vrift_buildstamp")])
        assert b"cc-version=" in manager.cache_key({"argv": ["cc", "-c", "x.c"]})
    finally:
        sys.path.remove(str(target))
        sys.modules.pop("vrift_buildstamp", None)


def test_multi_project_shares_blobs_and_builds(tmp_path, vrift_env):
    """Two projects with identical shared code: the user config lists both, `vrift ingest --all`
    indexes them, `vrift status` shows the blobs they share, and each builds like plain ninja."""
    require_tools("ninja", "cc")
    tree = copy_tree(EXAMPLES / "multi-project", tmp_path / "m")
    plain_tree = copy_tree(EXAMPLES / "multi-project", tmp_path / "p")
    home = vrift_env["VRIFT_HOME"]
    config = (tree / "user-config.yaml").read_text().replace("  - app-", f"  - {tree}/app-")
    with open(f"{home}/config.yaml", "w") as f:
        f.write(config)
    out = vrift("ingest", "--all", "--json", cwd=tree / "app-a", check=True)
    assert [r["root"] for r in json.loads(out.stdout)] == [str(tree / "app-a"), str(tree / "app-b")]
    status = json.loads(vrift("status", "--json", cwd=tree, check=True).stdout)
    rows = {p["root"]: p for p in status["projects"]}
    a, b = rows[str(tree / "app-a")], rows[str(tree / "app-b")]
    # common/strbuf.[ch] and .vrift.yaml are identical in both projects: stored once
    assert a["shared_blobs"] == b["shared_blobs"] == 3
    assert status["cas"]["blobs"] == status["dedup"]["referenced_blobs"] == a["unique_blobs"] + b["unique_blobs"] - 3
    for app in ("app-a", "app-b"):
        plain("ninja", cwd=plain_tree / app)
        vrift("wrap", "ninja", cwd=tree / app, check=True)
        assert_same_outputs(tree / app, plain_tree / app)
        assert plain(tree / app / "build" / app, cwd=tree).stdout == f"{app}: built from shared code\n"
