"""Shared fixtures: every test runs against its own VRIFT_HOME and VRIFT_SHM_DIR."""
from __future__ import annotations

import os
import shutil
import tempfile
import subprocess
import sys
from pathlib import Path

import pytest

from vrift.home import Home


@pytest.fixture
def vrift_env(tmp_path, monkeypatch) -> dict:
    """Point VRIFT_HOME and VRIFT_SHM_DIR at private temporary directories.

    VRIFT_HOME is kept short (directly under /tmp): Unix socket paths live under it and are
    limited to 107 bytes, which pytest's tmp_path can exceed."""
    base = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    home = base / "h"
    shm = base / "shm"
    home.mkdir(mode=0o700)
    shm.mkdir(mode=0o700)
    monkeypatch.setenv("VRIFT_HOME", str(home))
    monkeypatch.setenv("VRIFT_SHM_DIR", str(shm))
    # COLUMNS: pytest-xdist sets it in its workers, and vrift cuts tables to it
    for var in ("VRIFT_PROJECT_ROOT", "VRIFT_LMDB_DURABILITY", "VRIFT_ENABLED", "VRIFT_FALLBACK_MODE", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    env = dict(os.environ)
    yield env
    stop_processes_of(home)
    shutil.rmtree(base, ignore_errors=True)


def stop_processes_of(home: Path) -> None:
    """No vrift process outlives its test: whatever still runs with this VRIFT_HOME (a daemon
    auto-started by a command, one a coordinator restarted late) is terminated, then killed."""
    import signal
    import time

    want = b"VRIFT_HOME=" + os.fsencode(home) + b"\0"

    def alive() -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) != os.getpid():
                try:
                    with open(f"/proc/{d}/environ", "rb") as f:
                        if want in f.read() + b"\0":
                            pids.append(int(d))
                except OSError:
                    pass
        return pids

    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 2.0)):
        pids = alive()
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive() and time.monotonic() < deadline:
            time.sleep(0.02)


@pytest.fixture
def home(vrift_env) -> Home:
    return Home.from_env(vrift_env).ensure()


@pytest.fixture
def run_vrift(vrift_env):
    """Run the real `vrift` CLI in a subprocess; returns CompletedProcess (text)."""

    def run(*args, cwd=None, env=None, check=False, input=None, timeout=120):
        full_env = dict(vrift_env)
        if env:
            full_env.update(env)
        proc = subprocess.run([sys.executable, "-m", "vrift", *map(str, args)], cwd=cwd, env=full_env,
                              capture_output=True, text=True, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"vrift {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    return run


REPO = Path(__file__).resolve().parent.parent
