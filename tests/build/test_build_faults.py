"""Builds that meet a broken vrift still finish with the right outputs: the project daemon
killed mid-build, a corrupted VDir, no preload library, vrift disabled, a broken plugin."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from support.build import (assert_same_outputs, copy_tree, generate, ninja_rebuilt, parse_summary, plain,
                           require_tools, tool_env, vrift)
from support.daemon import daemon_pid, daemons, track, wait_daemon_back  # noqa: F401 - fixture
from vrift.identity import Project

pytestmark = pytest.mark.usefixtures("daemons")


@pytest.fixture(autouse=True)
def _tools():
    require_tools("ninja", "cc", "ar")


def test_project_daemon_killed_mid_build_the_build_completes_correctly(tmp_path, daemons):
    home = daemons
    vtree = generate(tmp_path / "v", units=60, headers=8)
    ptree = copy_tree(vtree, tmp_path / "p")
    plain("ninja", "-j2", cwd=ptree)
    vrift("sync", cwd=vtree, check=True)  # the daemon runs before the build starts
    project = Project.at(vtree)
    old = daemon_pid(home, project)
    assert old
    build = subprocess.Popen([sys.executable, "-m", "vrift", "wrap", "ninja", "-j2"], cwd=vtree, env=tool_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        objs = vtree / "build/obj/d000"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not objs.is_dir() or len(list(objs.glob("*.o"))) < 8):
            time.sleep(0.01)
        assert build.poll() is None, "the build ended before the daemon could be killed"
        os.kill(old, signal.SIGKILL)
        out, err = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert build.returncode == 0, f"{out}\n{err}"
    assert_same_outputs(vtree, ptree)
    track(home, wait_daemon_back(home, project, old, 10))  # the coordinator restarts it
    again = vrift("wrap", "ninja", cwd=vtree, check=True)
    assert "ninja: no work to do." in again.stdout, "the index after the crash agrees with the tree"
    assert_same_outputs(vtree, ptree)


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_corrupted_vdir_makes_processes_fall_back_and_the_build_is_correct(tmp_path, daemons):
    home = daemons
    vtree = generate(tmp_path / "v", units=20, headers=6)
    ptree = copy_tree(vtree, tmp_path / "p")
    plain("ninja", cwd=ptree)
    vrift("sync", cwd=vtree, check=True)
    vdir = home.vdir_path(Project.at(vtree).id)
    # the shell maps the VDir at start; ninja, started after the header is overwritten, finds it bad
    script = f"{sys.executable} -c \"import os; fd = os.open('{vdir}', os.O_WRONLY); os.pwrite(fd, b'JUNK', 0)\" && ninja"
    wrapped = vrift("wrap", "--", "sh", "-c", script, cwd=vtree, check=True)
    assert len(ninja_rebuilt(wrapped.stdout)) == 20 + 1 + 2
    assert "processes fell back to the real filesystem" in parse_summary(wrapped.stderr)["notes"]
    assert_same_outputs(vtree, ptree)
    # the daemon notices (≤ 1 s) and rebuilds the VDir from LMDB; the next build is accelerated
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and vdir.read_bytes()[:4] == b"JUNK":
        time.sleep(0.05)
    again = vrift("wrap", "ninja", cwd=vtree, check=True)
    assert "ninja: no work to do." in again.stdout
    s = parse_summary(again.stderr)
    assert s["served"] > 0 and "fell back" not in s["notes"]


def test_missing_preload_library_runs_the_build_on_the_real_filesystem(tmp_path):
    vtree = generate(tmp_path / "v", units=10, headers=4)
    ptree = copy_tree(vtree, tmp_path / "p")
    plain("ninja", cwd=ptree)
    env = tool_env()
    env["VRIFT_PRELOAD_LIB"] = str(tmp_path / "gone/libvrift.so")
    wrapped = vrift("wrap", "ninja", cwd=vtree, env=env, check=True)
    s = parse_summary(wrapped.stderr)
    assert "not accelerated: the preload library is missing" in s["notes"] and s["served"] == 0
    assert_same_outputs(vtree, ptree)


@pytest.mark.parametrize("how", ["env", "config"])
def test_disabled_vrift_runs_the_tool_unchanged(tmp_path, how):
    vtree = generate(tmp_path / "v", units=6, headers=3)
    ptree = copy_tree(vtree, tmp_path / "p")
    plain("ninja", cwd=ptree)
    env = tool_env()
    if how == "env":
        env["VRIFT_ENABLED"] = "0"
    else:
        (vtree / ".vrift.yaml").write_text("enabled: false\n")
    wrapped = vrift("wrap", "--", "sh", "-c", 'echo "preload=[$LD_PRELOAD]"; ninja', cwd=vtree, env=env, check=True)
    assert "preload=[]" in wrapped.stdout
    notes = parse_summary(wrapped.stderr)["notes"]
    assert notes == ("not accelerated: VRIFT_ENABLED=0" if how == "env"
                     else "not accelerated: disabled by the configuration (enabled: false)")
    assert_same_outputs(vtree, ptree)


def test_broken_plugins_are_reported_by_name_and_the_build_is_fine(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "tp_import_error.py").write_text("import no_such_module_anywhere\n")
    (plugins / "tp_post_raises.py").write_text(
        "from vrift.hooks import hookimpl\n"
        "@hookimpl\ndef vrift_post_build(summary):\n    raise RuntimeError('post-build exploded')\n")
    (plugins / "tp_env.py").write_text(
        "from vrift.hooks import hookimpl\n"
        "@hookimpl\ndef vrift_prepare_env(env):\n    env['TP_SEEN'] = 'yes'\n")
    vtree = generate(tmp_path / "v", units=6, headers=3)
    (vtree / ".vrift.yaml").write_text("plugins:\n  - tp_import_error\n  - tp_post_raises\n  - tp_env\n")
    ptree = copy_tree(vtree, tmp_path / "p")
    plain("ninja", cwd=ptree)
    env = tool_env()
    env["PYTHONPATH"] = str(plugins)
    wrapped = vrift("wrap", "--", "sh", "-c", 'echo "tp=$TP_SEEN"; ninja', cwd=vtree, env=env)
    assert wrapped.returncode == 0, wrapped.stderr
    assert "tp=yes" in wrapped.stdout
    errors = [line for line in wrapped.stderr.splitlines() if "plugin" in line]
    assert len(errors) == 2, wrapped.stderr
    assert "plugin 'tp_import_error' could not be loaded (config): ModuleNotFoundError" in errors[0]
    assert "plugin 'tp_post_raises' failed in vrift_post_build (config): RuntimeError: post-build exploded" in errors[1]
    assert "not accelerated" not in parse_summary(wrapped.stderr)["notes"]
    assert_same_outputs(vtree, ptree)
