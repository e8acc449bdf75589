"""No frozen view: a VDir nobody keeps true any more is not answered from.

Found: a wrapped shell idle longer than the daemon's idle timeout kept the VDir of the exited
daemon — stale sizes, `make -n` saw nothing to do; the daemon killed while the coordinator was
also down left running wrapped processes with a frozen index.  Now a daemon that stops marks its
VDir DEAD (readers fall back at once) and a live daemon beats in the header; a reader finding the
beat stale (a daemon killed -9) falls back too."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from support.daemon import daemon_pid, daemons, make_project  # noqa: F401
from support.preload import counters_file, read_counters
from test_preload_daemon import vrift_env_for
from vrift.daemon import process
from vrift.daemon.client import CoordinatorClient, DaemonUnavailable, connect_project, wait_for
from vrift.daemon.paths import coordinator_files

# Stats src/a.c until its size is the one asked for on stdin (or 60 s pass), printing each change.
WATCH = textwrap.dedent(r"""
    import os, sys, time
    print("ready", os.stat("src/a.c").st_size, flush=True)
    want = int(sys.stdin.readline())
    deadline = time.monotonic() + 60
    size = None
    while time.monotonic() < deadline:
        size = os.stat("src/a.c").st_size
        if size == want:
            break
    print("saw", size, flush=True)
""")


def _watch(env, root) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WATCH], cwd=root, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().split() == ["ready", "7"]
    return proc


def _finish(proc: subprocess.Popen, want: int) -> str:
    try:
        proc.stdin.write(f"{want}\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    return out.strip()


IDLE_1S = "daemon:\n  health_interval_s: 0.2\n  idle_timeout_s: 1\n  cleanup_after_s: 600\n"


def test_no_idle_exit_while_wrapped_processes_live(daemons, tmp_path, vrift_env):
    home = daemons
    home.user_config_path.write_text(IDLE_1S)
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n"})
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
    pid = daemon_pid(home, proj)
    proc = _watch(vrift_env_for(vrift_env, info, counters_file(tmp_path / "counters")), proj.root)
    # an idle shell of the build: no request for three idle timeouts; the daemon stays for it
    assert not wait_for(lambda: not process.pid_alive(pid), 3)
    (proj.root / "src/a.c").write_bytes(b"int a = 1;\n")  # the watcher sees it: the view stays true
    assert _finish(proc, 11) == "saw 11"
    assert wait_for(lambda: not process.pid_alive(pid), 30)  # the process ended: idle exit


def test_a_daemon_that_stops_leaves_no_frozen_view(daemons, tmp_path, vrift_env, run_vrift):
    home = daemons
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n"})
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
    pid = daemon_pid(home, proj)
    counters = counters_file(tmp_path / "counters")
    proc = _watch(vrift_env_for(vrift_env, info, counters), proj.root)  # a wrapped process that stays
    try:
        with CoordinatorClient(coordinator_files(home).socket, 5000) as co:
            co.shutdown(flags=1)  # every daemon stops, nobody restarts them
    except DaemonUnavailable:
        pass
    assert wait_for(lambda: not process.pid_alive(pid), 30)
    (proj.root / "src/a.c").write_bytes(b"int a = 1;\n")  # edited with nobody watching
    assert _finish(proc, 11) == "saw 11"
    assert read_counters(counters)["FALLBACKS"] >= 1


def test_a_daemon_killed_with_the_coordinator_down_leaves_no_frozen_view(daemons, tmp_path, vrift_env):
    home = daemons
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n"})
    with connect_project(home, proj) as c:
        c.sync()
        info = c.hello()
    pid = daemon_pid(home, proj)
    counters = counters_file(tmp_path / "counters")
    proc = _watch(vrift_env_for(vrift_env, info, counters), proj.root)
    coordinator = process.read_pid(coordinator_files(home).pid_file)
    try:
        with CoordinatorClient(coordinator_files(home).socket, 5000) as co:
            co.shutdown()  # nobody restarts the daemon
    except DaemonUnavailable:
        pass  # it may close the connection as it goes instead of answering
    assert wait_for(lambda: not process.pid_alive(coordinator), 10)
    os.kill(pid, signal.SIGKILL)  # no chance to mark anything
    assert wait_for(lambda: not process.pid_alive(pid), 10)
    (proj.root / "src/a.c").write_bytes(b"int a = 22;\n")
    assert _finish(proc, 12) == "saw 12"  # after the beat went stale (3 s), the kernel answers
    assert read_counters(counters)["FALLBACKS"] >= 1
