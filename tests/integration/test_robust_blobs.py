"""Lost blobs come back with `vrift ingest`, doctor names them; no counters file outlives its wrapper.

Found: a blob quarantined by `vrift cas verify --quarantine` was never stored again by `vrift
ingest` (stat unchanged: digest reused) while `vrift doctor` said all ok; `vrift wrap` killed
with -9 left its `vrift_counters_<pid>` file in the shared-memory directory for good."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import blake3

from support.daemon import daemons, make_project  # noqa: F401
from vrift.cas.store import CAS
from vrift.home import Home


def test_a_quarantined_blob_is_reported_and_stored_again(vrift_env, tmp_path, run_vrift):
    vrift_env["VRIFT_INGEST_BLOBS"] = "copy"  # ingest stores sources (lazy: it hashes them only)
    proj = make_project(tmp_path, files={"src/a.c": b"int a;\n", "src/b.c": b"int b;\n"})
    run_vrift("ingest", str(proj.root), check=True)
    home = Home.from_env(vrift_env)
    cas = CAS(home.cas_dir)
    digest = blake3.blake3(b"int a;\n").digest()
    blob = cas._path(digest.hex())
    os.chmod(blob, 0o644)
    with open(blob, "wb") as f:
        f.write(b"rot")  # the disk rotted it
    verify = run_vrift("cas", "verify", "--quarantine")
    assert "moved 1 bad blobs" in verify.stdout, verify.stdout + verify.stderr
    assert not cas.has(digest)
    doctor = run_vrift("doctor")
    assert doctor.returncode != 0
    assert "1 indexed files have no blob in the CAS (1 quarantined)" in doctor.stdout, doctor.stdout
    assert "vrift ingest" in doctor.stdout
    run_vrift("ingest", str(proj.root), check=True)
    assert cas.has(digest)
    with open(cas._path(digest.hex()), "rb") as f:
        assert f.read() == b"int a;\n"
    assert "every indexed file has its blob" in run_vrift("doctor").stdout


def test_a_killed_wrapper_leaves_no_counters_file_for_good(daemons, tmp_path, vrift_env):
    home = daemons
    proj = make_project(tmp_path)
    wrap = subprocess.Popen([sys.executable, "-m", "vrift", "wrap", "sleep", "30"], cwd=proj.root, env=vrift_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        stale = home.user_shm_dir / f"vrift_counters_{wrap.pid}"
        deadline = time.monotonic() + 30
        while not stale.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stale.exists()
    finally:
        os.killpg(wrap.pid, signal.SIGKILL)  # the wrapper and its sleep
        wrap.wait()
    assert stale.exists()  # what kill -9 leaves
    r = subprocess.run([sys.executable, "-m", "vrift", "wrap", "true"], cwd=proj.root, env=vrift_env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not stale.exists()
    assert not [p for p in home.user_shm_dir.iterdir() if p.name.startswith("vrift_counters_")]
