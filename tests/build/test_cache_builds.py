"""The action cache in real builds (gcc, ar, ninja, make, real daemons): a generated source,
archives and a link replayed after a clean; flags, tools and inputs outside the root in the key;
uncacheable edges detected inside a build that stays right; the make path; cache entries in gc."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from support.build import (assert_same_outputs, copy_tree, gen_project, let_clock_tick, ninja_rebuilt, output_files,
                           plain, require_tools, tool_env, vrift)
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

UNITS = 12
LIBS = 1


def generate(root: Path, units: int = UNITS, **kw) -> Path:
    gen_project.generate(root, units, 8, **kw)
    (root / ".vrift.yaml").write_text("")
    return root


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    let_clock_tick()
    path.write_text(text.replace(old, new))


def program_output(root: Path, env: dict | None = None) -> str:
    return subprocess.run([str(root / "build/app")], capture_output=True, text=True, check=True, timeout=10,
                          env=env).stdout


def compiles(stdout: str) -> list[str]:
    return [e for e in ninja_rebuilt(stdout) if e.startswith("CC ")]


def stats(run_vrift) -> dict:
    run_vrift("daemon", "stop", check=True)  # the daemons fold their counters into LMDB at shutdown
    return json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)


@pytest.fixture
def tools(daemons):
    require_tools("ninja", "cc", "ar")
    return daemons


# 1 ----------------------------------------------------------------------------------------------
def test_generator_archives_and_link_are_replayed_after_clean(tmp_path, tools):
    ref = generate(tmp_path / "plain", generator=True)
    plain("ninja", cwd=ref)
    proj = generate(tmp_path / "p", generator=True)
    edges = UNITS + 1 + LIBS + 1 + 2  # compiles, main.o, archive, link, generator + its compile

    cold = vrift("wrap", "ninja", cwd=proj, check=True)
    assert cache_counts(cold.stderr) == (0, edges, 0), cold.stderr
    assert_same_outputs(proj, ref)

    plain("ninja", "-t", "clean", cwd=proj)
    assert not (proj / "build/app").exists() and not (proj / "build/gen/table.c").exists()
    warm = vrift("wrap", "ninja", cwd=proj, check=True)
    ran = ninja_rebuilt(warm.stdout)
    assert len(ran) == edges and {"GEN build/gen/table.c", "AR build/lib/libg0000.a", "LINK build/app"} <= set(ran)
    assert cache_counts(warm.stderr) == (edges, 0, 0), warm.stderr
    assert_same_outputs(proj, ref)
    assert program_output(proj) == program_output(ref) and program_output(proj).startswith("total ")
    assert os.access(proj / "build/app", os.X_OK)


# 2 ----------------------------------------------------------------------------------------------
EXT_USERS = (2, 5, 9)  # units that include a header from outside the project


def test_flags_tools_and_outside_inputs_make_the_right_actions_miss(tmp_path, tools):
    outside = tmp_path / "outside"
    (outside / "bin").mkdir(parents=True)
    (outside / "include").mkdir()
    ext_h = outside / "include/ext.h"
    ext_h.write_text("#define EXT_K 40\n")
    mycc = outside / "bin/mycc"
    mycc.write_text("#!/bin/sh\nexec cc \"$@\"\n")
    mycc.chmod(0o755)
    env = tool_env()
    env["PATH"] = f"{outside / 'bin'}{os.pathsep}{env['PATH']}"  # the same PATH (in the key) throughout

    proj = generate(tmp_path / "p")
    edit(proj / "build.ninja", "cflags = -O0 -Iinclude", f"cflags = -O0 -Iinclude -I{outside / 'include'}")
    for i in EXT_USERS:
        src = proj / gen_project.unit_path(i)
        edit(src, '#include "common.h"\n', '#include "common.h"\n#include "ext.h"\n')
        edit(src, "return x * SCALE", "return EXT_K + x * SCALE")
    all_compiles = UNITS + 1

    def build(expect_compiles: int | None = None):
        done = vrift("wrap", "--explain", "ninja", cwd=proj, env=env, check=True)
        hits, misses, uncacheable = cache_counts(done.stderr)
        assert uncacheable == 0, done.stderr
        if expect_compiles is not None:
            assert len(compiles(done.stdout)) == expect_compiles, done.stdout
        return done, hits, misses

    cold, hits, misses = build(all_compiles)
    assert hits == 0

    # a flag: every compile misses (different objects, so the archive and link too)
    edit(proj / "build.ninja", "cflags = -O0", "cflags = -O1")
    done, hits, misses = build(all_compiles)
    assert (hits, misses) == (0, all_compiles + 2), done.stderr
    # back to the first flag: the first entries are still there
    edit(proj / "build.ninja", "cflags = -O1", "cflags = -O0")
    done, hits, misses = build(all_compiles)
    assert (hits, misses) == (all_compiles + 2, 0), done.stderr

    # a tool: the compiles and the link (also $cc) miss; the objects come out the same, so the
    # archive hits
    edit(proj / "build.ninja", "cc = cc\n", "cc = mycc\n")
    done, hits, misses = build(all_compiles)
    assert (hits, misses) == (1, all_compiles + 1), done.stderr
    # the same tool's name, other content (outside the root): the compiles miss again
    let_clock_tick()
    mycc.write_text("#!/bin/sh\n# v2\nexec cc \"$@\"\n")
    plain("ninja", "-t", "clean", cwd=proj)
    done, hits, misses = build(all_compiles)
    assert (hits, misses) == (1, all_compiles + 1), done.stderr
    assert "mycc changed" in done.stderr, done.stderr

    # an input outside the root: exactly the units including it miss
    edit(ext_h, "EXT_K 40", "EXT_K 41")
    done, hits, misses = build(len(EXT_USERS))
    assert sorted(compiles(done.stdout)) == sorted(f"CC {gen_project.obj_path(i)}" for i in EXT_USERS)
    assert (hits, misses) == (0, len(EXT_USERS) + 2), done.stderr
    assert "ext.h changed" in done.stderr, done.stderr

    ref = copy_tree(proj, tmp_path / "plain")
    plain("ninja", cwd=ref, env=env)
    assert_same_outputs(proj, ref)
    assert program_output(proj) == program_output(ref)


# 3 ----------------------------------------------------------------------------------------------
UNCACHEABLE_RULES = """
rule random
  command = head -c 8 /dev/urandom | od -x > $out
  description = RANDOM $out
rule stdin
  command = cat > $out
  description = STDIN $out
  pool = console
rule outside
  command = echo side > {side} && echo done > $out
  description = OUTSIDE $out
build build/random.txt: random
build build/stdin.txt: stdin
build build/outside.txt: outside
build all: phony build/app build/random.txt build/stdin.txt build/outside.txt
default all
"""


def wrap_with_stdin(proj: Path, data: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "vrift", "wrap", "--explain", "ninja"], cwd=proj, env=tool_env(),
                          input=data, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_uncacheable_edges_run_every_time_and_the_rest_hits(tmp_path, tools, run_vrift):
    side = tmp_path / "side/stamp"
    side.parent.mkdir()
    proj = generate(tmp_path / "p")
    ninja = proj / "build.ninja"
    ninja.write_text(ninja.read_text().replace("default build/app\n", "") + UNCACHEABLE_RULES.format(side=side))
    cacheable = UNITS + 1 + LIBS + 1

    cold = wrap_with_stdin(proj, "first\n")
    # an uncacheable action is a miss too: it was looked up, then could not be recorded
    assert cache_counts(cold.stderr) == (0, cacheable + 3, 3), cold.stderr
    notes = cold.stderr
    for reason in ("device", "read from stdin", "writes outside the project root"):
        assert reason in notes, notes
    first_random = (proj / "build/random.txt").read_text()
    assert (proj / "build/stdin.txt").read_text() == "first\n" and side.exists()

    plain("ninja", "-t", "clean", cwd=proj)
    side.unlink()
    warm = wrap_with_stdin(proj, "second\n")
    assert cache_counts(warm.stderr) == (cacheable, 3, 3), warm.stderr
    # run, not replayed: new randomness, the new stdin, the file outside written again
    assert (proj / "build/random.txt").read_text() != first_random
    assert (proj / "build/stdin.txt").read_text() == "second\n"
    assert side.exists() and (proj / "build/outside.txt").read_text() == "done\n"
    assert program_output(proj).startswith("total ")

    counters = stats(run_vrift)["counters"]
    assert counters["hits"] == cacheable and sum(counters["uncacheable"].values()) == 6, counters
    reasons = " ".join(counters["uncacheable"])
    for reason in ("device", "stdin", "outside"):
        assert reason in reasons, counters


# 4 ----------------------------------------------------------------------------------------------
def test_make_cold_clean_warm_all_hits(tmp_path, daemons):
    require_tools("make", "cc", "ar")
    ref = generate(tmp_path / "plain", generator=True)
    plain("make", "-j2", cwd=ref)
    proj = generate(tmp_path / "p", generator=True)

    cold = vrift("wrap", "make", "-j2", cwd=proj, check=True)
    # make runs each recipe line as an action: `mkdir -p build/obj/d000` again hits the first
    hits, misses, uncacheable = cache_counts(cold.stderr)
    assert misses >= UNITS + 5 and uncacheable == 0, cold.stderr
    assert_same_outputs(proj, ref)

    shutil.rmtree(proj / "build")
    warm = vrift("wrap", "make", "-j2", cwd=proj, check=True)
    assert cache_counts(warm.stderr) == (hits + misses, 0, 0), warm.stderr
    assert_same_outputs(proj, ref)
    assert program_output(proj) == program_output(ref)
    assert "Nothing to be done" in vrift("wrap", "make", cwd=proj, check=True).stdout


# 5 ----------------------------------------------------------------------------------------------
def blob_digests(home) -> set[bytes]:
    from vrift.cas.store import CAS

    return {digest for digest, *_ in CAS(home.cas_dir).iter_blobs()}


def gc(run_vrift, *args) -> dict:
    return json.loads(run_vrift("gc", "--json", "--older-than", "0", *args, check=True).stdout)


def test_cache_entries_keep_their_blobs_through_gc(tmp_path, tools, run_vrift):
    proj = generate(tmp_path / "p")
    vrift("wrap", "ninja", cwd=proj, check=True)
    sources = {blake3.blake3(p.read_bytes()).digest() for p in proj.rglob("*") if p.is_file()
               and ".vrift" not in p.parts and "build" not in p.parts}
    outputs = {blake3.blake3(p.read_bytes()).digest() for p in output_files(proj).values()} - sources
    assert len(outputs) >= UNITS + 3  # objects, depfiles, archive, program
    assert outputs <= blob_digests(tools)

    # only the cache refers to the outputs now
    shutil.rmtree(proj / "build")
    run_vrift("sync", cwd=proj, check=True)
    run_vrift("ingest", cwd=proj, check=True)
    run_vrift("daemon", "stop", check=True)  # nothing runs while gc goes with a grace of 0
    before = gc(run_vrift)
    assert before["referenced"] >= len(outputs) and "action cache" in before["sources"], before
    swept = gc(run_vrift, "--delete")
    assert outputs <= blob_digests(tools), "gc removed blobs a cache entry names"
    assert gc(run_vrift)["removable"] == 0

    assert json.loads(run_vrift("cache", "clear", "--json", check=True).stdout)["keys"] == UNITS + 1 + LIBS + 1
    after = gc(run_vrift)
    assert after["removable"] >= len(outputs), after
    assert after["referenced"] == swept["referenced"] - after["removable"], (swept, after)
    gc(run_vrift, "--delete")
    assert not outputs & blob_digests(tools), "blobs only the cleared cache named survived gc"



def test_make_runs_the_compiler_itself_and_its_content_is_in_the_key(tmp_path, daemons):
    """Under make a simple recipe line is the compiler itself (no shell): the action's executable
    is `cc` from PATH, and the key holds its digest: other bytes at the same path, another key."""
    require_tools("make", "cc", "ar")
    real_cc = Path(os.path.realpath(shutil.which("cc")))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = tool_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"

    def install_cc(version: int) -> None:  # a compiler that runs the real one
        src = tmp_path / "wrapper.c"
        src.write_text(f'#include <unistd.h>\nstatic const char v[] = "v{version}";\n'
                       f'int main(int c, char **a) {{ if (c < 0) return v[1]; a[0] = (char *)"{real_cc}"; '
                       'execv(a[0], a); return 127; }\n')  # gcc finds cc1 from its argv[0]
        plain(real_cc, "-O1", "-o", tmp_path / "cc.new", src, cwd=tmp_path)
        os.replace(tmp_path / "cc.new", bin_dir / "cc")

    install_cc(1)
    proj = generate(tmp_path / "p")
    compile_lines = UNITS + 1

    def build() -> tuple[subprocess.CompletedProcess, int, int]:
        done = vrift("wrap", "--explain", "make", cwd=proj, env=env, check=True)
        shutil.rmtree(proj / "build")
        hits, misses, uncacheable = cache_counts(done.stderr)
        assert uncacheable == 0, done.stderr
        return done, hits, misses

    _, _, misses = build()
    assert misses >= compile_lines
    done, hits, misses = build()
    assert misses == 0 and hits >= compile_lines + 2, done.stderr
    first = (bin_dir / "cc").read_bytes()
    install_cc(2)
    assert (bin_dir / "cc").read_bytes() != first
    done, hits, misses = build()
    assert misses == compile_lines + 1, done.stderr  # + the link, also $(CC)
    new_keys = [line for line in done.stderr.splitlines()
                if line.startswith("vrift: cache miss: cc ") and "no entry for this key" in line]
    assert len(new_keys) == compile_lines + 1, done.stderr
