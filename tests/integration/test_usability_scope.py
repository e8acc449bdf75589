"""One on/off parser (Python and the preload library), VRIFT_CACHE=0 for one build, the
VRIFT_FALLBACK_MODE/VRIFT_ENABLED words, and cache.scope."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from support.build import parse_summary, require_tools, tool_env, vrift
from support.daemon import daemons, make_project  # noqa: F401
from vrift import native, onoff
from vrift.cache import scope

WORDS = [*onoff.BOOL_WORDS, "TRUE", "Yes", "oN", "OFF", " 1 ", "\tno\n", "2", "", "  ", "y", "tru", "onn",
         "1x", "-1", "enable", "0.0", "truee", "nope"]
PRINT_ENV = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('VRIFT_')}))"


STATS = 200
STAT_LOOP = f"import os\nfor _ in range({STATS}): os.stat('src/a.c')\n"


def test_the_library_and_python_parse_the_same_words(tmp_path, daemons):
    """For each word, a process under the library with VRIFT_FALLBACK_MODE (then VRIFT_ENABLED)
    set to it: the library serves its stats from the index exactly when the Python parser
    says the word leaves vrift on."""
    proj = make_project(tmp_path)
    for n, (name, active_when) in enumerate((("VRIFT_FALLBACK_MODE", False), ("VRIFT_ENABLED", True))):
        for w in WORDS:
            env = tool_env()
            env["LOOP"] = STAT_LOOP
            out = tmp_path / f"s{n}.json"
            inner = f"{name}='{w}' exec {sys.executable} -c \"$LOOP\""
            vrift("wrap", "--no-cache", "-q", "--summary-json", out, "--", "sh", "-c", inner, cwd=proj.root,
                  env=env, check=True)
            served = json.loads(out.read_text())["stats_served"]
            # blank: as if unset; a word that is neither on nor off turns the library off
            expect_active = onoff.parse(w) is active_when if w.strip() else True
            assert (served >= STATS) == expect_active, (name, w, served)


@pytest.mark.parametrize("value, accelerated, note", [
    ("yes", False, "not accelerated: VRIFT_FALLBACK_MODE=yes"),
    ("off", True, None),
    ("2", False, "not accelerated: configuration error: environment variable VRIFT_FALLBACK_MODE: expected one of"),
])
def test_fallback_mode_words(tmp_path, daemons, run_vrift, value, accelerated, note):
    proj = make_project(tmp_path)
    env = tool_env()
    env["VRIFT_FALLBACK_MODE"] = value
    done = vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=proj.root, env=env, check=True)
    assert ("[]" not in done.stdout) == accelerated, done.stdout
    if note:
        assert parse_summary(done.stderr)["notes"].startswith(note), done.stderr
    shown = run_vrift("config", "show", cwd=proj.root, env={"VRIFT_FALLBACK_MODE": value})
    assert (shown.returncode == 0) == (value != "2")
    if value == "2":
        assert "VRIFT_FALLBACK_MODE: expected one of 0, 1, true, false, yes, no, on, off, got '2'" in shown.stderr


def test_vrift_cache_0_turns_only_the_cache_off_for_one_build(tmp_path, daemons):
    proj = make_project(tmp_path)
    for word in ("0", "off", "False"):
        env = tool_env()
        env["VRIFT_CACHE"] = word
        seen = json.loads(vrift("wrap", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root, env=env,
                                check=True).stdout)
        assert "VRIFT_CACHE" not in seen and "VRIFT_ACTION_ROLE" not in seen and "VRIFT_VDIR" in seen
    seen = json.loads(vrift("wrap", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root, check=True).stdout)
    assert seen["VRIFT_CACHE"] == "1"
    env = tool_env()
    env["VRIFT_CACHE"] = "0"
    shown = json.loads(vrift("config", "show", "--json", cwd=proj.root, env=env, check=True).stdout)
    assert shown["cache.enabled"] == {"value": False, "source": "env VRIFT_CACHE"}


def _make_project(base):
    root = base / "m"
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.c").write_text("int a(void) { return 1; }\n")
    (root / "src" / "t.txt").write_text("hello\n")
    (root / "Makefile").write_text(
        "all: out/a.o out/t.txt\n"
        "out/a.o: src/a.c\n\tmkdir -p out\n\tcc -c src/a.c -o out/a.o\n"
        "out/t.txt: src/t.txt\n\tmkdir -p out\n\ttr a-z A-Z < src/t.txt > out/t.txt\n")
    return root


def _cache(root, env):
    vrift("daemon", "stop", cwd=root, env=env, check=True)
    return json.loads(vrift("cache", "stats", "--json", cwd=root, env=env, check=True).stdout)


def test_a_daemon_started_by_a_cache_off_build_caches_the_next(tmp_path, daemons):
    require_tools("make", "cc", "tr")
    root = _make_project(tmp_path)
    env = tool_env()
    vrift("wrap", "make", cwd=root, env=dict(env, VRIFT_CACHE="0"), check=True)  # starts the daemon
    shutil.rmtree(root / "out")
    vrift("wrap", "make", cwd=root, env=env, check=True)
    stats = _cache(root, env)
    assert stats["recorded"] >= 3 and stats["uncacheable"] == 0, stats


def test_scope_compilers_caches_compilers_and_listed_tools(tmp_path, daemons):
    require_tools("make", "cc", "tr")
    root = _make_project(tmp_path)
    (root / ".vrift.yaml").write_text("cache:\n  scope: compilers\n")
    env = tool_env()
    vrift("wrap", "make", cwd=root, env=env, check=True)
    stats = _cache(root, env)
    reasons = stats["uncacheable_reasons"]
    # cc is cached; tr and the mkdirs are not compilers
    assert stats["recorded"] == 1 and reasons == {"not a compiler (cache.scope: compilers)": 3}, stats
    (root / ".vrift.yaml").write_text("cache:\n  scope: compilers\n  always: [tr]\n")
    shutil.rmtree(root / "out")
    vrift("wrap", "make", cwd=root, env=env, check=True)
    stats = _cache(root, env)
    assert stats["hits"] == 1 and stats["recorded"] == 2, stats


def test_command_names_and_scope():
    assert scope.command_names("dash", [b"/bin/sh", b"-c", b"CC=1 cc -c a.c -o a.o"]) == {"dash", "sh", "cc"}
    assert scope.in_scope("compilers", "x86_64-linux-gnu-gcc-12", [b"cc", b"-c", b"a.c"])
    assert scope.in_scope("compilers", "dash", [b"/bin/sh", b"-c", b"/usr/bin/clang++ -c a.cc"])
    assert not scope.in_scope("compilers", "dash", [b"/bin/sh", b"-c", b"cd x && cc -c a.c"])
    assert not scope.in_scope("compilers", "tr", [b"tr", b"a-z", b"A-Z"])
    assert scope.in_scope("compilers", "tr", [b"tr"], always=["tr"]) and scope.in_scope("all", "tr", [b"tr"])
