"""Answers the index cannot keep true are asked of the kernel: files with several names, tombstones.

Found: a file edited through a hard link (a second name inside the tree, or one outside it)
kept its other name indexed with the old size, and `vrift sync` did not fix it; a file written
by a process without the library (a static binary) at a path deleted a moment before was
answered ENOENT from its tombstone (`cc1: fatal error: … No such file or directory` where plain
make succeeds)."""
from __future__ import annotations

import pytest

import os
import subprocess
from pathlib import Path

from support.daemon import daemons, make_project  # noqa: F401
from support.preload import counters_file, read_counters
from test_preload_daemon import vrift_env_for
from vrift.daemon.client import connect_project


def _stat(env: dict, cwd: Path, *paths: str) -> list[str]:
    proc = subprocess.run(["stat", "-c", "%n %s", *paths], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    return proc.stdout.splitlines() + [line for line in proc.stderr.splitlines() if line]


def test_a_file_edited_through_another_name_is_seen_by_every_name(daemons, tmp_path, vrift_env):
    home = daemons
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n"})
    os.link(proj.root / "src/a.c", proj.root / "src/alias.c")  # a second name inside the tree
    outside = tmp_path / "outside.c"
    os.link(proj.root / "src/a.c", outside)  # and one outside it
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
        with open(outside, "ab") as f:  # no library, no event under the root for this name
            f.write(b"int b;\n")
        counters = counters_file(tmp_path / "counters")
        env = vrift_env_for(vrift_env, info, counters)
        got = _stat(env, proj.root, "src/a.c", "src/alias.c")
        assert got == _stat(vrift_env, proj.root, "src/a.c", "src/alias.c") == ["src/a.c 14", "src/alias.c 14"]
        assert read_counters(counters)["STAT_SERVED"] == 0  # nlink 3: never from memory


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_a_path_recreated_without_the_library_is_seen_at_once(daemons, tmp_path, vrift_env):
    home = daemons
    proj = make_project(tmp_path, files={"src/gen.h": b"#define A 1\n", "src/other.h": b"x\n"})
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
        counters = counters_file(tmp_path / "counters")
        env = vrift_env_for(vrift_env, info, counters)
        # deleted through the library: the daemon publishes a tombstone
        subprocess.run(["rm", "src/gen.h"], env=env, cwd=proj.root, check=True, timeout=60)
        c.sync()
        # recreated by a process without the library, and stat-ed at once (no SYNC between)
        (proj.root / "src/gen.h").write_bytes(b"#define A 2\n")
        assert _stat(env, proj.root, "src/gen.h") == ["src/gen.h 12"]
        # a file with one name that is not a tombstone is still answered from memory
        before = read_counters(counters)["STAT_SERVED"]
        assert _stat(env, proj.root, "src/other.h") == ["src/other.h 2"]
        assert read_counters(counters)["STAT_SERVED"] > before
