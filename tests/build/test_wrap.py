"""`vrift wrap` as a user sees it, with a real daemon: the environment contract, exit status,
stdout/stderr and signals passed through unchanged, the summary line, the CLI around it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support.build import parse_summary, tool_env, vrift
from support.daemon import daemons  # noqa: F401 - fixture
from vrift import native
from vrift.identity import Project

pytestmark = pytest.mark.usefixtures("daemons")


@pytest.fixture
def proj(tmp_path):
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / ".vrift.yaml").write_text("")
    (root / "src/a.c").write_text("int a;\n")
    return root


PRINT_ENV = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith(('VRIFT_', 'LD_'))}))"


def test_the_tool_gets_the_environment_contract(proj, daemons):
    env = tool_env()
    env["LD_PRELOAD"] = "libc.so.6"  # something already preloaded is kept, after ours
    out = vrift("wrap", "--", sys.executable, "-c", PRINT_ENV, cwd=proj / "src", env=env, check=True)
    seen = json.loads(out.stdout)
    project = Project.at(proj)
    assert seen["VRIFT_PROJECT_ROOT"] == str(project.root)
    assert seen["VRIFT_VDIR"] == str(daemons.vdir_path(project.id))
    assert seen["VRIFT_SOCKET"].endswith(f"p-{project.id[:16]}.sock") and os.path.exists(seen["VRIFT_SOCKET"])
    assert seen["VRIFT_STAGING_DIR"] == str(project.staging_dir)
    assert seen["LD_PRELOAD"] == f"{native.preload_library()} libc.so.6"
    counters = seen["VRIFT_COUNTERS"]
    assert not os.path.exists(counters), "the counters file is removed after the build"
    s = parse_summary(out.stderr)
    assert s["notes"] == "" and s["served"] + s["passed"] > 0


def test_exit_status_stdout_and_stderr_pass_through_unchanged(proj):
    payload = bytes(range(256)) * 64
    script = ("import sys; sys.stdout.buffer.write(bytes(range(256)) * 64); sys.stdout.flush();"
              "sys.stderr.buffer.write(b'to stderr\\x00\\xff\\n'); sys.exit(7)")
    proc = subprocess.run([sys.executable, "-m", "vrift", "wrap", "-q", "--", sys.executable, "-c", script],
                          cwd=proj, env=tool_env(), capture_output=True)
    assert proc.returncode == 7
    assert proc.stdout == payload
    assert proc.stderr == b"to stderr\x00\xff\n", "-q: nothing but the tool's own stderr"
    # stdin too, and the summary comes after everything the tool wrote
    proc = subprocess.run([sys.executable, "-m", "vrift", "wrap", "cat"], cwd=proj, env=tool_env(),
                          input=b"from stdin\n", capture_output=True)
    assert proc.returncode == 0 and proc.stdout == b"from stdin\n"
    assert proc.stderr.decode().startswith("vrift: 0 files written, ")


def test_command_not_found_and_not_executable_exit_like_a_shell(proj):
    missing = vrift("wrap", "-q", "no-such-tool-anywhere", cwd=proj)
    assert missing.returncode == 127 and "no-such-tool-anywhere: command not found" in missing.stderr
    (proj / "script.sh").write_text("#!/bin/sh\necho hi\n")
    denied = vrift("wrap", "-q", "--", "./script.sh", cwd=proj)
    assert denied.returncode == 126


def _start(proj, script, *extra):
    """The wrapper in its own process group, as a shell runs a foreground job."""
    proc = subprocess.Popen([sys.executable, "-m", "vrift", "wrap", *extra, "--", sys.executable, "-c", script],
                            cwd=proj, env=tool_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_ctrl_c_reaches_the_tool_and_the_wrapper_returns_its_status(proj):
    # a tool that handles SIGINT: it exits 5, and the wrapper (same group) must not die of it
    handled = _start(proj, "import signal, sys, time\n"
                           "signal.signal(signal.SIGINT, lambda *a: sys.exit(5))\n"
                           "print('ready', flush=True)\ntime.sleep(60)\n")
    os.killpg(handled.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    out, err = handled.communicate(timeout=30)
    assert handled.returncode == 5, err
    assert b"Traceback" not in err and b"files written" in err
    # a tool that dies of SIGINT: 128 + 2, like a shell reports it
    killed = _start(proj, "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_DFL)\n"
                          "print('ready', flush=True)\ntime.sleep(60)\n")
    os.killpg(killed.pid, signal.SIGINT)
    _, err = killed.communicate(timeout=30)
    assert killed.returncode == 130 and b"Traceback" not in err


def test_sigterm_sent_to_the_wrapper_alone_is_forwarded(proj):
    proc = _start(proj, "import signal, sys, time\n"
                        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(9))\n"
                        "print('ready', flush=True)\ntime.sleep(60)\n", "-q")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 9, err


def test_common_path_imports_no_click_yaml_or_pluggy(proj):
    vrift("wrap", "-q", "true", cwd=proj, check=True)  # starts the daemon, fills the caches
    env = tool_env()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vrift", "wrap", "-q", "true"], cwd=proj,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    heavy = {"click", "yaml", "pluggy", "importlib.metadata", "vrift.cli", "vrift.config", "vrift.identity", "vrift.home",
             "vrift.daemon.client", "dataclasses", "subprocess"}
    assert not imported & heavy, sorted(imported & heavy)
    # a changed configuration is read again (and the cache rewritten)
    (proj / ".vrift.yaml").write_text("enabled: false\n")
    off = vrift("wrap", "true", cwd=proj)
    assert "disabled by the configuration" in off.stderr


def test_root_option_and_tool_directory_choose_the_project(proj, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    out = vrift("wrap", "-q", "--root", proj, "--", sys.executable, "-c", PRINT_ENV, cwd=other, check=True)
    assert json.loads(out.stdout)["VRIFT_PROJECT_ROOT"] == str(proj.resolve())
    (proj / "build.ninja").write_text("rule touch\n  command = touch $out\nbuild out.txt: touch\n")
    ninja = vrift("wrap", "ninja", "-C", proj, cwd=other, check=True)  # -C moves the root discovery
    assert (proj / "out.txt").exists() and parse_summary(ninja.stderr)["committed"] >= 1
    bad = vrift("wrap", "--adapter", "scons", "true", cwd=proj)
    assert bad.returncode == 1 and "unknown adapter 'scons'" in bad.stderr
    assert "Usage" in vrift("wrap", "--help", cwd=proj, check=True).stdout


def test_nested_wrap_keeps_one_preload_and_the_outer_project(proj):
    inner = f"{sys.executable} -m vrift wrap -q -- {sys.executable} -c \"{PRINT_ENV}\""
    out = vrift("wrap", "-q", "--", "sh", "-c", inner, cwd=proj / "src", check=True)
    seen = json.loads(out.stdout)
    assert seen["LD_PRELOAD"] == str(native.preload_library())
    assert seen["VRIFT_PROJECT_ROOT"] == str(proj.resolve())


def test_plugins_command_lists_builtins_and_failures(proj, tmp_path):
    listed = vrift("plugins", "--json", cwd=proj, check=True)
    names = {p["name"]: p for p in json.loads(listed.stdout)["plugins"]}
    assert {"ninja", "make", "generic"} <= set(names)
    assert names["ninja"]["source"] == "entry point" and names["ninja"]["hooks"] == ["vrift_register_adapters"]
    (proj / ".vrift.yaml").write_text("plugins:\n  - tp_nowhere\n")
    broken = vrift("plugins", cwd=proj)
    assert broken.returncode == 1
    assert "failed: plugin 'tp_nowhere' could not be loaded (config): ModuleNotFoundError" in broken.stdout
    assert "ninja" in broken.stdout


def test_hook_make_prints_the_line_and_emits_a_fragment(proj, daemons):
    line = vrift("hook", "make", cwd=proj, check=True).stdout.strip()
    assert line.startswith("-include $(if $(VRIFT_VDIR),,$(shell") and "vrift hook make --emit" in line
    emitted = vrift("hook", "make", "--emit", cwd=proj / "src", check=True).stdout.strip()
    text = open(emitted).read()
    project = Project.at(proj)
    assert f"export VRIFT_VDIR := {daemons.vdir_path(project.id)}" in text
    assert f"export LD_PRELOAD := {native.preload_library()} $(filter-out" in text
    assert os.stat(emitted).st_mode & 0o777 == 0o600
    off = tool_env()
    off["VRIFT_ENABLED"] = "0"
    disabled = vrift("hook", "make", "--emit", cwd=proj, env=off, check=True)
    assert disabled.stdout == "" and "recipes run without vrift (VRIFT_ENABLED=0)" in disabled.stderr
