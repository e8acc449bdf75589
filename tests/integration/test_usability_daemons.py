"""Daemon life cycle: idle timers count builds, not `status`; the coordinator exits when idle;
`daemon stop` leaves no VDir or counter file; `daemon restart`; a changed configuration
reaches the next build, and `daemon status` shows what a daemon runs with."""
from __future__ import annotations

import pytest

import json
import os
import subprocess
import sys
import time

from support.build import tool_env, vrift
from support.daemon import daemon_pid, daemons, make_project, track  # noqa: F401
from vrift.wrap import fastwrap
from vrift.daemon import process, server
from vrift.daemon.paths import coordinator_files


def _wait(cond, timeout=30.0, every=0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


def _stop_if_idle(project_id: str) -> bool:
    """What `vrift wrap` does on a configuration change, in a process of its own as wrap is."""
    code = ("import os, sys\nfrom vrift.wrap import fastwrap\n"
            "print(fastwrap.stop_for_new_config(os.environ, sys.argv[1], 5000))\n")
    done = subprocess.run([sys.executable, "-c", code, project_id], env=tool_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_status_does_not_keep_a_daemon_alive(tmp_path, daemons, run_vrift):
    proj = make_project(tmp_path)
    (proj.root / ".vrift.yaml").write_text("daemon:\n  idle_timeout_s: 3\n")
    vrift("wrap", "--", "true", cwd=proj.root, check=True)
    pid = daemon_pid(daemons, proj)
    assert pid and process.pid_alive(pid)
    # keep asking for status more often than the idle timeout: the daemon exits anyway
    gone = _wait(lambda: run_vrift("status", "--json", check=True) and not process.pid_alive(pid), 30)
    assert gone, "vrift status reset the daemon's idle timer"


def test_coordinator_exits_when_idle(tmp_path, daemons):
    daemons.user_config_path.write_text("daemon:\n  health_interval_s: 0.2\n  idle_timeout_s: 1\n"
                                        "  coordinator_idle_s: 2\n")
    proj = make_project(tmp_path)
    vrift("wrap", "--", "true", cwd=proj.root, check=True)
    coord = process.read_pid(coordinator_files(daemons).pid_file)
    assert coord and process.pid_alive(coord)
    track(daemons, coord)
    assert _wait(lambda: not process.pid_alive(coord), 40), "the coordinator did not exit when idle"
    assert not coordinator_files(daemons).pid_file.exists()
    # the next build starts what it needs again
    done = vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=proj.root, check=True)
    assert done.stdout.strip() != "[]"


def test_stop_removes_vdirs_and_counter_files(tmp_path, daemons, run_vrift):
    proj = make_project(tmp_path)
    vrift("wrap", "--", "true", cwd=proj.root, check=True)
    stale = daemons.shm_dir / "vrift_counters_999999"  # a wrapper killed before it cleaned up
    stale.write_bytes(b"\0" * 256)
    assert daemons.vdir_path(proj.id).exists()
    done = run_vrift("daemon", "stop", check=True)
    assert "removed" in done.stdout
    assert not list(daemons.shm_dir.glob("vrift_*")), list(daemons.shm_dir.iterdir())
    assert not list(daemons.run_dir.glob("p-*.config"))


def test_restart_and_config_changes_reach_the_next_build(tmp_path, daemons, run_vrift):
    proj = make_project(tmp_path)
    vrift("wrap", "--", "true", cwd=proj.root, check=True)
    first = daemon_pid(daemons, proj)
    status = json.loads(run_vrift("daemon", "status", "--json", check=True).stdout)
    (row,) = status["projects"]
    assert row["settings"]["durability"] == "wal" and row["settings"]["cache.max_size"] == "5G"
    assert row["config_changed"] is False

    restarted = json.loads(run_vrift("daemon", "restart", str(proj.root), "--json", check=True).stdout)
    assert restarted["old_pid"] == first and restarted["pid"] != first and not process.pid_alive(first)
    second = restarted["pid"]
    track(daemons, second)

    from vrift.daemon.client import ProjectClient
    from vrift.daemon.paths import project_files

    with ProjectClient(project_files(daemons, proj.id).socket) as build:  # a build keeps it busy
        build.hello(os.getpid())
        (proj.root / ".vrift.yaml").write_text("durability: sync\n")
        text = run_vrift("daemon", "status", env={"COLUMNS": "80"}, check=True).stdout
        assert "durability=wal" in text and "configuration changed" in text
        assert max(map(len, text.splitlines())) <= 80 or "running with" in text
    # the build is gone: the next one runs with the new configuration (the daemon stopped by
    # itself when idle, or this wrap stopped it)
    done = vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=proj.root, check=True)
    assert done.stdout.strip() != "[]", done.stderr
    third = daemon_pid(daemons, proj)
    track(daemons, third)
    assert third not in (None, second) and not process.pid_alive(second)
    (row,) = json.loads(run_vrift("daemon", "status", "--json", check=True).stdout)["projects"]
    assert row["settings"]["durability"] == "sync" and row["durability"] == "sync" and not row["config_changed"]


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_a_busy_daemon_is_not_stopped_for_a_config_change(tmp_path, daemons):
    """A build is connected: the stale check leaves the daemon to it (it restarts when idle)."""
    from vrift.daemon.client import ProjectClient
    from vrift.daemon.paths import project_files

    assert fastwrap.SHUTDOWN_IF_IDLE == server.SHUTDOWN_IF_IDLE
    proj = make_project(tmp_path)
    vrift("wrap", "--", "true", cwd=proj.root, check=True)
    pid = daemon_pid(daemons, proj)
    sock = project_files(daemons, proj.id).socket
    with ProjectClient(sock) as build:
        build.hello(os.getpid())
        assert _stop_if_idle(proj.id) is False
        assert process.pid_alive(pid)
    # once the daemon has seen the build's connection close, it stops
    def idle() -> bool:
        with ProjectClient(sock) as probe:
            return probe.stats()["clients"] <= 1  # the probe itself

    assert _wait(idle, 60, every=0.2), "the build's connection never closed on the daemon's side"
    stopped = _stop_if_idle(proj.id)
    log = project_files(daemons, proj.id).log_file
    assert stopped, (process.pid_alive(pid), log.read_text()[-2000:] if log.exists() else "no log")
    assert not process.pid_alive(pid)
