"""No garbage served: every VDir entry carries a checksum that readers verify before answering.

Stray bytes over an entry's size and mtime were served as real stat answers ("Timestamp out of
range" from make, "file too big" from ar) on every later build, unnoticed by the daemon's
health check and `vrift doctor`.  Now a damaged entry is asked of the kernel, counted, reported
once to the daemon, which scrubs and rebuilds the table from LMDB; doctor names it."""
from __future__ import annotations

import os
import random
import struct
import subprocess
from pathlib import Path

import pytest

from support.daemon import daemons, make_project  # noqa: F401
from support.preload import build_vdir, counters_file, entry_offset, index_tree, preload_env, read_counters
from test_preload_daemon import vrift_env_for
from vrift.daemon.client import connect_project, wait_for
from vrift.home import Home
from vrift.identity import Project
from vrift.vdir import layout, native
from vrift.vdir.shm import VDirCorrupt, VDirReader

CHECKSUM_AT = layout.field_offsets(layout.ENTRY_FIELDS)["checksum"][0]
SIZE_AT = layout.field_offsets(layout.ENTRY_FIELDS)["size"][0]
MTIME_AT = layout.field_offsets(layout.ENTRY_FIELDS)["mtime_sec"][0]
SLOW_HEALTH = "daemon:\n  health_interval_s: 600\n  idle_timeout_s: 600\n  cleanup_after_s: 600\n"


def test_python_checksum_is_the_c_checksum():
    rnd = random.Random(5)
    for _ in range(500):
        raw = rnd.randbytes(layout.ENTRY_SIZE)
        assert layout.entry_checksum(raw) == native.lib().vrift_entry_checksum(raw)


def test_every_byte_but_the_checksum_and_dirty_is_covered():
    rnd = random.Random(6)
    raw = layout.seal(rnd.randbytes(layout.ENTRY_SIZE))
    base = layout.entry_checksum(raw)
    for at in range(layout.ENTRY_SIZE):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[at] ^= 1 << bit
            changed = layout.entry_checksum(bytes(flipped)) != base
            exempt = CHECKSUM_AT <= at < CHECKSUM_AT + 4 or (at == 16 and 1 << bit == layout.F_DIRTY)
            assert changed != exempt, (at, bit)


def _scribble(vdir: Path, rel: bytes, at: int, data: bytes) -> None:
    off = entry_offset(vdir, rel)
    with open(vdir, "r+b") as f:
        f.seek(off + at)
        f.write(data)


def _wrapped_stat(env: dict, cwd: Path, *paths: str) -> list[str]:
    proc = subprocess.run(["stat", "-c", "%s %Y", *paths], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_a_damaged_entry_is_asked_of_the_kernel_and_counted(vrift_env, tmp_path):
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    (root / "a.c").write_bytes(b"x" * 100)
    (root / "b.c").write_bytes(b"y" * 200)
    vdir = Path(vrift_env["VRIFT_SHM_DIR"]) / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    _scribble(vdir, b"a.c", SIZE_AT, struct.pack("<q", 2**62))
    _scribble(vdir, b"a.c", MTIME_AT, struct.pack("<q", -2**60))
    plain = _wrapped_stat(vrift_env, root, "a.c", "b.c")
    counters = counters_file(tmp_path / "counters")
    through = _wrapped_stat(preload_env(vrift_env, root, vdir, counters=counters), root, "a.c", "b.c")
    assert through == plain and plain[0].startswith("100 ")
    c = read_counters(counters)
    assert c["VDIR_CORRUPT"] >= 1 and c["STAT_SERVED"] >= 1, c  # b.c still from memory
    with VDirReader(vdir) as r:
        assert len(r.damaged()) == 1
        with pytest.raises(VDirCorrupt, match="fails its checksum"):
            r.lookup(b"a.c")
        assert r.lookup(b"b.c").size == 200


def test_the_library_reports_it_and_the_daemon_rebuilds(daemons, tmp_path, vrift_env):
    home = daemons
    home.user_config_path.write_text(SLOW_HEALTH)  # only the client's report can trigger the scrub
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n", "src/b.c": b"int b;\n"})
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
        vdir = Path(info["vdir"])
        _scribble(vdir, b"src/a.c", SIZE_AT, b"\xff" * 16)
        counters = counters_file(tmp_path / "counters")
        env = vrift_env_for(vrift_env, info, counters)
        assert _wrapped_stat(env, proj.root, "src/a.c") == _wrapped_stat(vrift_env, proj.root, "src/a.c")
        assert read_counters(counters)["VDIR_CORRUPT"] >= 1

        def scrubbed():
            with VDirReader(vdir) as r:
                return not r.damaged() and r.lookup(b"src/a.c").size == 7

        assert wait_for(scrubbed, 10)
        stats = c.stats()
        assert stats["vdir_rebuilds"] >= 1 and stats["vdir_damaged_entries"] >= 1, stats


def test_the_health_check_scrubs_without_a_report(daemons, tmp_path):
    home = daemons  # health check every 0.2 s
    proj = make_project(tmp_path)
    with connect_project(home, proj) as c:
        c.sync()
        vdir = home.vdir_path(proj.id)
        _scribble(vdir, b"README", MTIME_AT, b"\x13" * 8)

        def scrubbed():
            try:
                with VDirReader(vdir) as r:
                    return not r.damaged()
            except VDirCorrupt:
                return False

        assert wait_for(scrubbed, 10)
        assert c.stats()["vdir_damaged_entries"] >= 1


def test_doctor_names_damaged_entries(vrift_env, tmp_path, run_vrift):
    proj = make_project(tmp_path)
    r = run_vrift("ingest", str(proj.root))
    assert r.returncode == 0, r.stderr
    ok = run_vrift("doctor")
    assert "checksums verified" in ok.stdout, ok.stdout
    vdir = Home.from_env(vrift_env).vdir_path(Project.at(proj.root).id)
    _scribble(vdir, b"src/a.c", SIZE_AT, b"\x01\x02\x03")
    bad = run_vrift("doctor")
    assert bad.returncode != 0
    assert "1 of its entries fail their checksum" in bad.stdout + bad.stderr, bad.stdout
    assert "Traceback" not in bad.stderr


def test_make_is_not_fooled_by_a_damaged_mtime(daemons, tmp_path, vrift_env):
    """The build that failed: a stray write over an mtime made make see a timestamp out of range."""
    home = daemons
    home.user_config_path.write_text(SLOW_HEALTH)
    proj = make_project(tmp_path, files={"in.txt": b"data\n",
                                         "Makefile": b"out.txt: in.txt\n\tcp in.txt out.txt\n"})
    subprocess.run(["make", "-s"], cwd=proj.root, check=True, timeout=60)
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
        _scribble(Path(info["vdir"]), b"in.txt", MTIME_AT, struct.pack("<q", 2**62))
        counters = counters_file(tmp_path / "counters")
        env = vrift_env_for(vrift_env, info, counters)
        proc = subprocess.run(["make", "-q"], cwd=proj.root, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (proc.returncode, proc.stderr)  # up to date, as plain make says
        assert "out of range" not in proc.stderr
        assert read_counters(counters)["VDIR_CORRUPT"] >= 1
