"""The action cache through `vrift wrap` and `vrift cache`: the build's environment, the summary,
the CLI, and real ninja builds of a generated C project (cold, warm after clean, a header edit,
a second checkout, --no-cache)."""
from __future__ import annotations

import json
import re
import sys

import pytest

from support.build import (assert_same_outputs, generate, let_clock_tick, ninja_rebuilt, parse_summary, plain,
                           require_tools, summary, tool_env, vrift)
from support.cache import FakeAction, out
from support.daemon import connect_project, daemons, make_project  # noqa: F401
from vrift import native

PRINT_ENV = "import os, json; print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('VRIFT_')}))"


def test_the_build_gets_the_cache_contract(tmp_path, daemons):
    proj = make_project(tmp_path)
    seen = json.loads(vrift("wrap", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root, check=True).stdout)
    assert seen["VRIFT_CACHE"] == "1" and seen["VRIFT_ACTION_ROLE"] == "tool"
    assert seen["VRIFT_CACHE_ENV"] == "PATH:LANG:LC_ALL:SOURCE_DATE_EPOCH" and "VRIFT_CACHE_EXPLAIN" not in seen
    seen = json.loads(vrift("wrap", "--explain", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root,
                            check=True).stdout)
    assert seen["VRIFT_CACHE_EXPLAIN"] == "1"
    env = tool_env()
    env["VRIFT_CACHE"] = "1"  # inherited from an outer wrapper: --no-cache still turns it off
    seen = json.loads(vrift("wrap", "--no-cache", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root, env=env,
                            check=True).stdout)
    assert not any(k.startswith(("VRIFT_CACHE", "VRIFT_ACTION")) for k in seen)
    (proj.root / ".vrift.yaml").write_text("cache:\n  enabled: false\n")
    seen = json.loads(vrift("wrap", "--", sys.executable, "-c", PRINT_ENV, cwd=proj.root, check=True).stdout)
    assert "VRIFT_CACHE" not in seen


def test_summary_and_cache_commands(tmp_path, daemons, run_vrift):
    """Actions played by hand through the daemon while a wrapped command runs: the summary
    counts them, `vrift cache` shows and clears them."""
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n", "build/.keep": b""})
    script = f"""
import os, sys
sys.path.insert(0, {str(tmp_path.parent)!r})
from vrift.daemon.client import ProjectClient
sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parents[1])!r})
from support.cache import FakeAction, out
with ProjectClient(os.environ["VRIFT_SOCKET"]) as c:
    for n in range(2):
        a = FakeAction({str(proj.root)!r})
        if not c.action_lookup("/bin/sh", {str(proj.root)!r}, [b"cc", b"-c", b"src/a.c"], a.id)["hit"]:
            open({str(proj.root / 'build/a.o')!r}, "wb").write(b"OBJ")
            a.log(("R", {bytes(proj.root / 'src/a.c')!r}), ("W", {bytes(proj.root / 'build/a.o')!r}), *out(1, b"hi\\n"))
            c.action_end(a.id, 0)
            import time; time.sleep(0.3)
    a = FakeAction({str(proj.root)!r})
    c.action_lookup("/bin/sh", {str(proj.root)!r}, [b"sh", b"-c", b"date"], a.id)
    a.log(("N", b"device /dev/urandom"))
    c.action_end(a.id, 0)
"""
    done = vrift("wrap", "--explain", "--", sys.executable, "-c", script, cwd=proj.root, check=True)
    notes = parse_summary(done.stderr)["notes"]
    assert "cache: 2 missed, 1 uncacheable (top: device ×1)" in notes, done.stderr
    assert summary(done.stderr).startswith("vrift: 1/3 cached ("), done.stderr
    assert "vrift: cache miss: cc -c src/a.c: no entry for this key" in done.stderr
    assert "vrift: cache uncacheable: sh -c date: device /dev/urandom" in done.stderr
    run_vrift("daemon", "stop", check=True)  # counters are folded into LMDB at shutdown
    stats = json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)
    assert stats["keys"] == 1 and stats["fingerprints"] == 1
    assert stats["counters"]["hits"] == 1 and stats["counters"]["uncacheable"] == {"device": 1}
    text = run_vrift("cache", "stats", check=True).stdout
    assert re.search(r"hits\s+1 \(33\.3%\)", text) and re.search(r"misses\s+2\b", text) and "device" in text
    with __import__("vrift.cache.store", fromlist=["CacheStore"]).CacheStore(daemons) as store:
        key = next(store.keys())[0].hex()
    shown = json.loads(run_vrift("cache", "show", key[:10], "--json", check=True).stdout)
    fp = shown["fingerprints"][0]
    files = [i for i in fp["inputs"] if i[0] != "P"]  # P: where argv[0] (cc) resolves in PATH
    assert fp["outputs"][0][0] == "build/a.o" and files == [["R", "src/a.c", files[0][2]]]
    assert "build/a.o" in run_vrift("cache", "show", key, check=True).stdout
    missing = run_vrift("cache", "show", "ffff0000")
    assert missing.returncode == 1 and "no cache entry" in missing.stderr
    assert json.loads(run_vrift("cache", "clear", "--json", check=True).stdout) == {"keys": 1, "fingerprints": 1}
    assert json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)["keys"] == 0


# -- real builds ---------------------------------------------------------------------------------
def _c_side_ready() -> str | None:
    lib = native.preload_library()
    try:
        with open(lib, "rb") as f:
            data = f.read()
    except (OSError, TypeError):
        return "the preload library is not built"
    if b"VRIFT_ACTION_ROLE" not in data or b"VRIFT_ACTION_STARTED" not in data:
        return "the preload library does not record or replay actions yet (vrift/preload: action identity, recording, LOOKUP at exec)"
    return None


needs_c_side = pytest.mark.skipif(_c_side_ready() is not None, reason=_c_side_ready() or "")
def cache_counts(stderr: str) -> tuple[int, int, int]:
    """(hits, misses, uncacheable) of the summary line."""
    return parse_summary(stderr)["cache"]


@pytest.fixture
def projects(tmp_path, daemons):
    require_tools("ninja", "cc", "ar")
    units = 200
    ref = generate(tmp_path / "plain", units)
    plain("ninja", cwd=ref)
    return ref, generate(tmp_path / "p", units), units


@needs_c_side
def test_cold_then_warm_after_clean_replays_every_action(projects, tmp_path):
    ref, proj, units = projects
    edges = units + 1 + -(-units // 50) + 1
    cold = vrift("wrap", "ninja", cwd=proj, check=True)
    hits, misses, uncacheable = cache_counts(cold.stderr)
    assert hits == 0 and misses == edges and uncacheable == 0, cold.stderr
    assert_same_outputs(proj, ref)
    plain("ninja", "-t", "clean", cwd=proj)
    warm = vrift("wrap", "ninja", cwd=proj, check=True)
    assert cache_counts(warm.stderr) == (edges, 0, 0), warm.stderr
    assert_same_outputs(proj, ref)
    dry = plain("ninja", "-n", "-d", "explain", cwd=proj, env=tool_env())  # the ninja `vrift wrap` ran
    assert dry.stdout.strip().endswith("no work to do."), "\n".join(
        line for line in (dry.stdout + dry.stderr).splitlines() if not line.startswith("["))[:3000]

    # a header edit: exactly the units that include it miss; their archives and the link hit
    # again when the objects come out byte-identical (a comment does not change them)
    let_clock_tick()
    header = proj / "include/h005.h"
    header.write_text(header.read_text() + "/* edited */\n")
    edited = vrift("wrap", "--explain", "ninja", cwd=proj, check=True)
    compiled = [e for e in ninja_rebuilt(edited.stdout) if e.startswith("CC ")]
    hits, misses, _ = cache_counts(edited.stderr)
    assert misses == len(compiled) > 0 and hits == len(ninja_rebuilt(edited.stdout)) - len(compiled), edited.stderr
    assert "include/h005.h changed" in edited.stderr

    # a second checkout of the same sources hits the first one's entries
    other = generate(tmp_path / "q", units)
    header = other / "include/h005.h"
    header.write_text(header.read_text() + "/* edited */\n")
    second = vrift("wrap", "ninja", cwd=other, check=True)
    assert cache_counts(second.stderr) == (edges, 0, 0), second.stderr
    assert_same_outputs(other, proj)


@needs_c_side
def test_no_cache_records_nothing(tmp_path, daemons, run_vrift):
    require_tools("ninja", "cc", "ar")
    proj = generate(tmp_path / "p", 10)
    done = vrift("wrap", "--no-cache", "ninja", cwd=proj, check=True)
    assert "cache:" not in parse_summary(done.stderr)["notes"]
    assert not (proj / ".vrift/actions").exists() or not any((proj / ".vrift/actions").iterdir())
    run_vrift("daemon", "stop", check=True)
    stats = json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)
    assert stats["keys"] == 0 and not stats["counters"].get("misses")
