"""`vrift doctor` sees a broken .vrift.yaml, a full CAS file system and a crash-looping daemon,
and says how to fix each (text and --json); a build whose daemon dies asks for it back, bounded."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from support.build import tool_env, vrift
from support.daemon import daemon_pid, daemons, make_project, track, wait_daemon_back  # noqa: F401
from vrift.daemon import process
from vrift.daemon.client import wait_for
from vrift.daemon.paths import coordinator_files


def _doctor(cwd, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    text = vrift("doctor", cwd=cwd, env=env or tool_env())
    js = vrift("doctor", "--json", cwd=cwd, env=env or tool_env())
    return text, {c["name"]: c for c in json.loads(js.stdout)["checks"]}


def test_a_broken_vrift_yaml_is_named_with_its_line(tmp_path, vrift_env):
    project = make_project(tmp_path)
    (project.root / ".vrift.yaml").write_text("durability: wal\nignore:\n  - build\n  - [unclosed\n")
    text, checks = _doctor(project.root)
    assert text.returncode == 1
    c = checks["configuration"]
    assert c["level"] == 2 and f"{project.root}/.vrift.yaml:" in c["detail"] and "fix that line" in c["detail"]
    line = c["detail"].split(".vrift.yaml:")[1].split(":")[0]
    assert line.isdigit() and int(line) >= 4
    assert ".vrift.yaml:" in text.stdout and "Traceback" not in text.stdout + text.stderr
    (project.root / ".vrift.yaml").write_text("durability: fast\n")  # valid YAML, invalid value
    _, checks = _doctor(project.root)
    assert checks["configuration"]["level"] == 2 and ".vrift.yaml:1:" in checks["configuration"]["detail"]
    (project.root / ".vrift.yaml").write_text("durability: wal\n")
    _, checks = _doctor(project.root)
    assert checks["configuration"]["level"] == 0


@pytest.fixture
def small_fs():
    """A 4 MiB tmpfs (root only: skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="vrfs", dir="/tmp"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        os.rmdir(mnt)
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        os.rmdir(mnt)


def test_a_full_cas_file_system_is_reported_with_the_fix(tmp_path, small_fs, vrift_env):
    home = small_fs / "h"
    env = dict(tool_env(), VRIFT_HOME=str(home))
    project = make_project(tmp_path)
    vrift("ingest", project.root, cwd=project.root, env=env, check=True)
    _, checks = _doctor(project.root, env)
    assert checks["CAS file system"]["level"] == 0, checks["CAS file system"]
    with open(small_fs / "filler", "wb", buffering=0) as f:  # what someone else writes there
        while os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize > 150 * 1024:
            f.write(b"\0" * 16384)
            f.flush()
        _, checks = _doctor(project.root, env)
        c = checks["CAS file system"]
        assert c["level"] == 1 and "nearly full" in c["detail"] and str(small_fs) in c["detail"], c
        try:
            while True:
                f.write(b"\0" * 4096)

        except OSError:
            pass
    text, checks = _doctor(project.root, env)
    c = checks["CAS file system"]
    assert text.returncode == 1 and c["level"] == 2 and c["detail"].startswith("full:")
    assert "vrift gc" in c["detail"] and "cache.max_size" in c["detail"]


def _kill_daemon(home, project) -> int:
    pid = daemon_pid(home, project)
    assert pid
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_crash_looping_daemon_is_not_restarted_forever_and_doctor_says_so(tmp_path, daemons):
    home = daemons
    project = make_project(tmp_path)
    vrift("sync", cwd=project.root, check=True)
    last = None
    for _ in range(3):  # the coordinator (health checks every 0.2 s) restarts it twice
        last = _kill_daemon(home, project)
        back = wait_daemon_back(home, project, last, 30)
        if back is None:
            break
        track(home, back)
    # the third death within the window: no restart by the coordinator (it has seen it once the
    # crash file has three lines)
    from vrift.daemon import crashes
    from vrift.daemon.paths import project_files

    assert wait_for(lambda: crashes.looping(project_files(home, project.id)), 30)
    assert not wait_for(lambda: (daemon_pid(home, project) or 0) not in (0, last), 2)
    text, checks = _doctor(project.root)
    c = checks[f"daemon {project.root}"]
    assert text.returncode == 1 and c["level"] == 2 and "crash-looping: 3 deaths" in c["detail"]
    assert "vrift daemon restart" in c["detail"]
    # a build still runs, and correctly: it asks for a daemon itself
    r = vrift("wrap", "sh", "-c", "cat README", cwd=project.root, check=True)
    assert r.stdout == "hello\n"
    track(home, daemon_pid(home, project))


# A wrapped script: waits until the daemon it started under is gone and another serves (a new
# pid in the pid file), then stats the project in a child until memory answers.
AFTER_RESTART = r"""
import os, subprocess, sys, time
pid_file = sys.argv[1]
old = open(pid_file).read().split()[0]  # the daemon this build was started with
print("started", old, flush=True)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        now = open(pid_file).read().split()[0]
    except (OSError, IndexError):
        now = None
    if now and now != old and os.path.exists(f"/proc/{now}"):
        break
    time.sleep(0.05)
print("new daemon", now, flush=True)
for _ in range(100):
    subprocess.run([sys.executable, "-S", "-c", "import os\nfor _ in range(50): os.stat('README')"], check=True)
print(open("README").read(), end="")
"""


def test_a_build_whose_daemon_dies_with_the_coordinator_asks_for_it_back(tmp_path, daemons):
    home = daemons
    project = make_project(tmp_path)
    vrift("sync", cwd=project.root, check=True)
    coordinator = process.read_pid(coordinator_files(home).pid_file)
    pid_file = home.run_dir / f"p-{project.id[:16]}.pid"
    summary = tmp_path / "summary.json"
    build = subprocess.Popen([sys.executable, "-m", "vrift", "wrap", "--summary-json", str(summary), sys.executable,
                              "-c", AFTER_RESTART, str(pid_file)], cwd=project.root, env=tool_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = build.stdout.readline().split()  # the tool runs: its wrapper is past its SYNC
        assert started[0] == "started", started
        old = int(started[1])
        os.kill(coordinator, signal.SIGKILL)  # nobody left to restart it but the build itself
        assert wait_for(lambda: not process.pid_alive(coordinator), 10)
        os.kill(old, signal.SIGKILL)
        out, err = build.communicate(timeout=120)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert build.returncode == 0, err
    assert out.endswith("hello\n") and "new daemon None" not in out, out
    s = json.loads(summary.read_text())
    logs = "\n".join(f.read_text() for f in home.run_dir.glob("*.log"))
    assert "restarted it (1x)" in s.get("daemon_restarts", ""), (err + logs).replace("\n", " | ")
    assert s["stats_served"] > 0  # the processes started after the restart were served from memory
    new = daemon_pid(home, project)
    assert new and new != old
    track(home, new)
