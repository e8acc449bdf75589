"""No crash on a shrunk, scribbled or unallocatable VDir.

Found: a VDir truncated while a wrapped process ran killed it with SIGBUS; random bytes over the
header of a live daemon's VDir killed the daemon (general protection fault in _vdir_native.so);
on a full tmpfs the daemon died with SIGBUS creating the VDir, at every restart, leaving a .tmp
file each time."""
from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.daemon import Writer, daemon_pid, daemons, make_project  # noqa: F401
from support.preload import build_vdir, counters_file, index_tree, preload_env, read_counters
from vrift.daemon import process
from vrift.daemon.client import connect_project, wait_for
from vrift.home import Home
from vrift.vdir import layout
from vrift.vdir.shm import VDirError, VDirReader

STAT_LOOP = textwrap.dedent(r"""
    import os, sys
    flag, n = sys.argv[1], int(sys.argv[2])
    sizes = set()
    for _ in range(200):
        sizes.add(tuple(os.stat(f"f{i}.c").st_size for i in range(n)))
    print("ready", flush=True)
    while not os.path.exists(flag):   # outside the project: always the kernel
        pass
    for _ in range(200):
        sizes.add(tuple(os.stat(f"f{i}.c").st_size for i in range(n)))
    print(sorted(sizes))
""")


def test_a_vdir_truncated_under_a_running_process_is_no_sigbus(vrift_env, tmp_path):
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    n = 30
    for i in range(n):
        (root / f"f{i}.c").write_bytes(b"x" * i)
    vdir = Home.from_env().ensure().user_shm_dir / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    counters = counters_file(tmp_path / "counters")
    flag = tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", STAT_LOOP, str(flag), str(n)], cwd=root, text=True,
                            env=preload_env(vrift_env, root, vdir, counters=counters),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.truncate(vdir, 0)  # another process of the user shrinks it: every page is gone
        flag.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, err)  # -7 was SIGBUS
    assert out.strip() == str([tuple(range(n))]), out  # every answer right, before and after
    c = read_counters(counters)
    assert c["STAT_SERVED"] >= 200 * n and c["FALLBACKS"] == 1, c


def test_a_program_s_own_sigbus_is_still_its_own(vrift_env, tmp_path):
    """The guard takes only faults inside its own mappings during a lookup."""
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    (root / "a").write_bytes(b"a")
    vdir = Home.from_env().ensure().user_shm_dir / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    code = textwrap.dedent("""
        import mmap, os
        os.stat("a")
        with open("m", "wb") as f:
            f.write(b"x" * 8192)
        f = open("m", "r+b")
        m = mmap.mmap(f.fileno(), 8192)
        os.truncate("m", 0)
        m[5000]
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=preload_env(vrift_env, root, vdir),
                          capture_output=True, timeout=60)
    assert proc.returncode == -7  # SIGBUS, as without the library


def test_random_header_bytes_do_not_kill_the_daemon(daemons, tmp_path):
    home = daemons
    proj = make_project(tmp_path)
    rnd = random.Random(11)
    with connect_project(home, proj) as c:
        c.sync()
        pid = daemon_pid(home, proj)
        writer = Writer(c, proj)
        vdir = home.vdir_path(proj.id)
        for round_ in range(20):
            with open(vdir, "r+b") as f:  # the daemon maps this very file
                if round_ % 2:
                    f.write(rnd.randbytes(layout.HEADER.size))
                else:  # plausible: only the geometry
                    f.seek(40)
                    f.write(rnd.randbytes(56))
            writer.write(f"src/n{round_}.c", b"int n%d;\n" % round_)  # the writer path touches it at once
        assert process.pid_alive(pid) and daemon_pid(home, proj) == pid

        def sound():
            try:
                with VDirReader(vdir) as r:
                    return r.lookup(b"src/n19.c") is not None and not r.damaged()
            except VDirError:
                return False

        assert wait_for(sound, 10)
        with VDirReader(vdir) as r:
            for i in range(20):
                assert r.lookup(b"src/n%d.c" % i).size == len(b"int n%d;\n" % i)


@pytest.fixture
def small_tmpfs(vrift_env):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    shm = Path(vrift_env["VRIFT_SHM_DIR"])
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(shm)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield shm
    finally:
        subprocess.run(["umount", "-l", str(shm)], check=False)


def _fill(shm: Path) -> Path:
    filler = shm / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_a_full_tmpfs_is_enospc_not_sigbus(small_tmpfs, daemons, tmp_path, vrift_env):
    home = daemons
    filler = _fill(small_tmpfs)
    files = {f"src/f{i:03d}.c": b"int x;\n" for i in range(300)}
    proj = make_project(tmp_path, files=files)
    ingest = subprocess.run([sys.executable, "-m", "vrift", "ingest", str(proj.root)], env=vrift_env,
                            capture_output=True, text=True, timeout=120)
    assert ingest.returncode >= 0, "killed by a signal"
    assert "Traceback" not in ingest.stderr
    with connect_project(home, proj) as c:  # the daemon runs, without a VDir
        info = c.hello()
        pid = daemon_pid(home, proj)
        assert not Path(info["vdir"]).exists()
        counters = counters_file(tmp_path / "counters")
        env = preload_env(vrift_env, proj.root, Path(info["vdir"]), counters=counters)
        out = subprocess.run(["stat", "-c", "%s", "src/f000.c"], cwd=proj.root, env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.stdout.strip() == "7" and read_counters(counters)["FALLBACKS"] == 1
        leftovers = [p.name for p in home.user_shm_dir.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == []
        filler.unlink()  # space again: the health check makes the VDir
        assert wait_for(lambda: Path(info["vdir"]).exists(), 10)
        assert process.pid_alive(pid) and daemon_pid(home, proj) == pid
        with VDirReader(info["vdir"]) as r:
            assert r.lookup(b"src/f299.c").size == 7
