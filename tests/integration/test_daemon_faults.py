"""SPEC §8 with real processes and signals: every fault row as a test."""
from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import blake3
import pytest

from support.daemon import Writer, daemon_pid, daemons, make_project, track, vdir_entry, wait_daemon_back  # noqa: F401
from vrift.daemon import process
from vrift.daemon.client import (DaemonError, DaemonUnavailable, ProjectClient, connect_project, ensure_coordinator,
                                 wait_for)
from vrift.daemon.paths import coordinator_files, project_files
from vrift.daemon.protocol import HEADER, Frame, Msg, ProtocolError, Tag, read_frame
from vrift.vdir import layout


def commit_stream(home, proj, stop: threading.Event, acked: list, errors: list, tag: str):
    """Commit files until stopped, reconnecting whenever the daemon goes away (a client
    reattaching); records every acknowledged (path, digest)."""
    n = 0
    client = None
    (proj.root / "out").mkdir(exist_ok=True)
    while not stop.is_set():
        try:
            if client is None:
                client = ProjectClient(project_files(home, proj.id).socket, 5000)
                client.hello()
                w = Writer(client, proj)
            n += 1
            data = f"{tag} {n}\n".encode()
            digest, _ = w.write(f"out/{tag}{n}.o", data)
            acked.append((f"out/{tag}{n}.o", digest))
        except (DaemonUnavailable, DaemonError) as e:
            errors.append(str(e))
            if client is not None:
                client.close()
            client = None
            time.sleep(0.005)
    if client is not None:
        client.close()


@pytest.mark.parametrize("durability", ["sync", "wal"])
def test_project_daemon_killed_during_commits(daemons, tmp_path, durability):
    home = daemons
    proj = make_project(tmp_path)
    (proj.root / ".vrift.yaml").write_text(f"durability: {durability}\n")
    with connect_project(home, proj) as c:
        old = c.hello()["pid"]
    stop, acked, errors = threading.Event(), [], []
    t = threading.Thread(target=commit_stream, args=(home, proj, stop, acked, errors, "k"))
    t.start()
    assert wait_for(lambda: len(acked) >= 30, 30)
    os.kill(old, signal.SIGKILL)
    killed_at = time.monotonic()
    new = wait_daemon_back(home, proj, old, 10)
    back_after = time.monotonic() - killed_at
    track(home, new)
    count_at_restart = len(acked)
    assert wait_for(lambda: len(acked) >= count_at_restart + 20, 30), errors[-3:]  # clients reattached
    stop.set()
    t.join()
    assert new is not None and back_after <= 2.0, f"restarted after {back_after:.2f}s"
    lost = [(p, d) for p, d in acked if (e := vdir_entry(home, proj, p)) is None or e.digest != d]
    assert lost == []
    for p, d in acked:
        assert blake3.blake3((proj.root / p).read_bytes()).digest() == d


def test_coordinator_killed_daemons_keep_serving_and_are_rediscovered(daemons, tmp_path):
    home = daemons
    proj = make_project(tmp_path)
    with connect_project(home, proj) as c:
        pid = c.hello()["pid"]
        coord = process.read_pid(coordinator_files(home).pid_file)
        os.kill(coord, signal.SIGKILL)
        assert wait_for(lambda: not process.pid_alive(coord), 5)
        assert Writer(c, proj).write("during.o", b"still served")[0]  # builds unaffected
    with ensure_coordinator(home) as coordinator:
        assert coordinator.hello()["pid"] != coord
        projects = coordinator.list()["projects"]
    assert [(p["root"], p["pid"]) for p in projects] == [(str(proj.root), pid)]


def test_corrupted_vdir_is_rebuilt_from_lmdb(daemons, tmp_path):
    from vrift.vdir.shm import VDirError, VDirReader

    home = daemons
    proj = make_project(tmp_path)
    with connect_project(home, proj) as c:
        c.sync()
        vdir = home.vdir_path(proj.id)
        with open(vdir, "r+b") as f:
            f.write(b"\0" * 64)  # header magic and version gone
        with pytest.raises(VDirError):
            VDirReader(vdir)  # what a client sees: it falls back

        def readable():
            try:
                return vdir_entry(home, proj, "src/a.c") is not None
            except VDirError:
                return False

        assert wait_for(readable, 10)
        assert c.stats()["vdir_rebuilds"] >= 1
        assert vdir_entry(home, proj, "src/a.c").digest == blake3.blake3(b"int a;\n").digest()


def test_crash_of_project_a_is_not_noticed_by_project_b(daemons, tmp_path):
    home = daemons
    a = make_project(tmp_path, "a")
    b = make_project(tmp_path, "b")
    with connect_project(home, a) as ca, connect_project(home, b) as cb:
        pid_a, pid_b = ca.hello()["pid"], cb.hello()["pid"]
        stop, acked, errors = threading.Event(), [], []
        t = threading.Thread(target=commit_stream, args=(home, b, stop, acked, errors, "b"))
        t.start()
        assert wait_for(lambda: len(acked) >= 10, 30)
        os.kill(pid_a, signal.SIGKILL)
        track(home, wait_daemon_back(home, a, pid_a, 10))
        n = len(acked)
        assert wait_for(lambda: len(acked) >= n + 10, 30)
        stop.set()
        t.join()
        assert errors == [] and daemon_pid(home, b) == pid_b


CLIENT_KILLED = r"""
import os, sys, time
from pathlib import Path
from vrift.daemon.client import ProjectClient
sock, root = sys.argv[1], Path(sys.argv[2])
c = ProjectClient(sock, 5000)
c.hello()
c.begin_write([root / "half.o"])
d = root / ".vrift" / "staging"
d.mkdir(parents=True, exist_ok=True)
fd = os.open(d / f"{os.getpid()}.1", os.O_WRONLY | os.O_CREAT, 0o600)
import fcntl; fcntl.flock(fd, fcntl.LOCK_SH)
os.write(fd, b"half written")
print("ready", flush=True)
time.sleep(600)
"""


def test_client_killed_between_open_and_commit_is_rolled_back(daemons, tmp_path):
    home = daemons
    proj = make_project(tmp_path)
    with connect_project(home, proj) as c:
        c.sync()
        child = subprocess.Popen([sys.executable, "-c", CLIENT_KILLED, str(project_files(home, proj.id).socket),
                                  str(proj.root)], stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout.readline().strip() == "ready"
            assert vdir_entry(home, proj, "half.o").flags & layout.F_DIRTY
            staging = proj.staging_dir / f"{child.pid}.1"
            assert staging.exists()
        finally:
            child.kill()
            child.wait()
        assert wait_for(lambda: not staging.exists(), 10)
        assert wait_for(lambda: vdir_entry(home, proj, "half.o") is None
                        or vdir_entry(home, proj, "half.o").is_deleted, 10)
        assert not (proj.root / "half.o").exists()
        assert c.stats()["rollbacks"] >= 1
        assert Writer(c, proj).write("after.o", b"ok")[0]


def malformed_frames(rng: random.Random, root: bytes):
    """Random bytes, huge and negative lengths, truncated frames, wrong versions, path escapes."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.randbytes(rng.randrange(1, 64)), True
    if kind == 1:
        return HEADER.pack(b"VRP1", 1, Msg.COMMIT, 1, rng.choice([0xFFFFFFFF, 0x80000000, (1 << 20) + 1])), True
    if kind == 2:
        return HEADER.pack(b"VRP1", rng.choice([0, 2, 0xFFFF]), Msg.PING, 1, 0), True
    if kind == 3:
        body = struct.pack("<HI", Tag.PATH, 1000) + b"short"
        return HEADER.pack(b"VRP1", 1, Msg.INVALIDATE, 1, len(body)) + body, True
    if kind == 4:
        escape = rng.choice([b"/etc/passwd", root + b"/../x", root + b"/src/\0x", b"../../x", b"", root + b"/.vrift/y"])
        return Frame(Msg.COMMIT, 3).add(Tag.PATH, escape).add(Tag.STAGING, b"/etc/shadow").encode(), False
    if kind == 5:
        return Frame(rng.randrange(0x30, 0x7000), 4).encode(), False  # unknown type
    return Frame(Msg.HELLO, 5).add(Tag.PID, b"\x01").encode(), False  # malformed field


def test_fuzz_malformed_frames(daemons, tmp_path):
    home = daemons
    proj = make_project(tmp_path)
    sock_path = os.fsencode(project_files(home, proj.id).socket)
    with connect_project(home, proj) as c:
        pid = c.hello()["pid"]
        before = c.stats()["entries"]
    rng = random.Random(1234)
    root = os.fsencode(proj.root)
    sent = 0
    s = None
    while sent < 10_000:
        if s is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(sock_path)
        data, closes = malformed_frames(rng, root)
        try:
            s.sendall(data)
            if closes or len(data) < 16:
                s.shutdown(socket.SHUT_WR)  # truncated frames end with the connection
                while s.recv(65536):
                    pass
                s.close()
                s = None
            else:
                answer = read_frame(s)
                assert answer is not None and answer.is_error and answer.request_id in (3, 4, 5)
        except (OSError, ProtocolError):
            s.close()
            s = None
        sent += 1
    with connect_project(home, proj, autostart=False) as c:
        assert c.hello()["pid"] == pid
        assert Writer(c, proj).write("after-fuzz.o", b"right")[0] == blake3.blake3(b"right").digest()
        stats = c.stats()
        assert stats["entries"] == before + 1 and stats["bad_frames"] > 1000


def test_other_uid_is_refused_by_the_project_daemon(daemons, tmp_path):
    if os.getuid() != 0:
        pytest.skip("switching uid needs root")
    import pwd
    home = daemons
    proj = make_project(tmp_path)
    with connect_project(home, proj) as c:
        c.hello()
    sock = project_files(home, proj.id).socket
    for d in (home.root.parent, home.root, home.run_dir):
        os.chmod(d, 0o755)
    os.chmod(sock, 0o666)  # only SO_PEERCRED stands in the way now
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        try:
            os.setuid(pwd.getpwnam("nobody").pw_uid)
            c = ProjectClient(sock, 3000)
            c.ping()
            os.write(w, b"answered")
        except Exception:
            os.write(w, b"refused")
        os._exit(0)
    os.close(w)
    outcome = os.read(r, 64)
    os.waitpid(child, 0)
    assert outcome == b"refused"
    with connect_project(home, proj, autostart=False) as c:
        assert c.stats()["rejected_uid"] == 1


def test_staging_left_by_dead_processes_is_swept_at_start(daemons, tmp_path):
    home = daemons
    proj = make_project(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    proj.staging_dir.mkdir(parents=True)
    leftovers = [proj.staging_dir / f"{dead.pid}.1", proj.staging_dir / f"{dead.pid}.r0"]
    for f in leftovers:
        f.write_bytes(b"orphan")
    legacy = proj.staging_dir / str(dead.pid)
    legacy.mkdir()  # a per-process directory of an earlier release
    (legacy / "1").write_bytes(b"orphan")
    mine = [proj.staging_dir / f"{os.getpid()}.1", proj.staging_dir / f"{os.getpid()}.r0"]
    for f in mine:
        f.write_bytes(b"alive writer")
    with connect_project(home, proj) as c:
        c.sync()
        assert wait_for(lambda: not any(f.exists() for f in leftovers) and not legacy.exists(), 10)
        assert all(f.exists() for f in mine)  # a live process's staging is never touched
