"""The remote cache in real builds: two VRIFT_HOMEs stand for two machines sharing one Redis or
nginx.  Machine 1 builds checkout A and uploads behind the build; machine 2 builds checkout B
(same sources, another path) from the remote, byte-identical to a plain build.  A remote that is
killed mid-build, silent, refusing or damaged never fails the build or makes it wrong."""
from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from support.build import assert_same_outputs, copy_tree, gen_project, plain, require_tools, tool_env, vrift
from conftest import stop_processes_of
from support.daemon import FAST_DAEMONS
from support.remote import (nginx, nginx_factory, redis_cluster, redis_factory, redis_server,  # noqa: F401 (fixtures)
                            server_dir, silent_port)
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side
UNITS = 6
EDGES = UNITS + 1 + 1 + 1  # units, one library, main.o, the link


class Machine:
    """A VRIFT_HOME (and shm dir) of its own, with the remote in its environment."""

    def __init__(self, base: Path, remote: str | None, config: str = ""):
        self.base = base
        self.home = base / "h"
        self.home.mkdir(mode=0o700, parents=True)
        (base / "shm").mkdir(mode=0o700)
        (self.home / "config.yaml").write_text(FAST_DAEMONS + config)
        env = tool_env()
        env.update(VRIFT_HOME=str(self.home), VRIFT_SHM_DIR=str(base / "shm"))
        env.pop("VRIFT_CACHE_REMOTE", None)
        if remote:
            env["VRIFT_CACHE_REMOTE"] = remote
        self.env = env

    def wrap(self, proj: Path, *cmd: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return vrift("wrap", *cmd, cwd=proj, env=self.env, timeout=timeout, check=True)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vrift", *args], env=self.env, capture_output=True, text=True,
                              timeout=120)

    def stop(self) -> subprocess.CompletedProcess:
        return self.cli("daemon", "stop")

    def stats(self) -> dict:
        return json.loads(self.cli("cache", "stats", "--json").stdout)

    def remote(self) -> dict:
        """The one remote's counters as folded into the cache (0 for those never counted)."""
        (counters,) = self.stats()["counters"]["remote"].values()
        return collections.defaultdict(int, counters)

    def close(self) -> None:
        self.stop()
        stop_processes_of(self.home)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def machines():
    require_tools("ninja", "cc", "ar")
    made: list[Machine] = []

    def make(remote: str | None, config: str = "") -> Machine:
        m = Machine(Path(tempfile.mkdtemp(prefix="vrm", dir="/tmp")), remote, config)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def sources(tmp_path):
    src = tmp_path / "src"
    gen_project.generate(src, UNITS, 8)
    (src / ".vrift.yaml").write_text("")
    ref = copy_tree(src, tmp_path / "ref")
    plain("ninja", cwd=ref)
    return src, ref


def checkout(sources, tmp_path, name: str) -> Path:
    return copy_tree(sources[0], tmp_path / name / "checkout")


def share(machines, sources, tmp_path, url: str) -> tuple[Machine, Machine, Path]:
    """Machine 1 builds checkout A and flushes; returns both machines and checkout B."""
    m1, m2 = machines(url), machines(url)
    a = checkout(sources, tmp_path, "a")
    cold = m1.wrap(a, "ninja")
    assert cache_counts(cold.stderr)[:2] == (0, EDGES), cold.stderr
    assert_same_outputs(a, sources[1])
    assert m1.stop().returncode == 0  # a clean shutdown flushes the uploads
    up = m1.remote()
    assert up["uploaded"] == EDGES, up
    return m1, m2, checkout(sources, tmp_path, "b")


def assert_hits_from_remote(m2: Machine, b: Path, ref: Path) -> None:
    warm = m2.wrap(b, "ninja")
    hits, misses, _ = cache_counts(warm.stderr)
    assert_same_outputs(b, ref)
    assert (hits, misses) == (EDGES, 0), warm.stderr
    m2.stop()
    down = m2.remote()
    assert down["hits"] == EDGES and down["corrupt"] == 0, down
    # backfilled: a third build of another checkout on machine 2 hits locally, remote or not
    return down


def test_second_machine_builds_from_redis(machines, sources, tmp_path, redis_server):
    m1, m2, b = share(machines, sources, tmp_path, redis_server.url)
    assert_hits_from_remote(m2, b, sources[1])
    plain("ninja", "-t", "clean", cwd=b)
    redis_server.stop()
    again = m2.wrap(b, "ninja")
    assert cache_counts(again.stderr)[:2] == (EDGES, 0), again.stderr  # from the local backfill
    assert_same_outputs(b, sources[1])


def test_second_machine_builds_from_nginx(machines, sources, tmp_path, nginx):
    m1, m2, b = share(machines, sources, tmp_path, nginx.url())
    assert_hits_from_remote(m2, b, sources[1])


def test_second_machine_builds_from_a_redis_cluster(machines, sources, tmp_path, redis_cluster):
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster)
    m1, m2, b = share(machines, sources, tmp_path, f"redis+cluster://{seeds}")
    assert_hits_from_remote(m2, b, sources[1])
    assert sum(1 for n in redis_cluster if n.keys()) == 3


def test_corrupted_remote_blobs_are_misses_and_the_build_is_right(machines, sources, tmp_path, redis_server):
    m1, m2, b = share(machines, sources, tmp_path, redis_server.url)
    r = redis_server.client()
    for k in r.scan_iter("vrift:cas:*"):
        r.set(k, b"\x00" + b"not the object code")
    warm = m2.wrap(b, "ninja")
    hits, misses, _ = cache_counts(warm.stderr)
    assert hits == 0 and misses == EDGES, warm.stderr
    assert_same_outputs(b, sources[1])
    m2.stop()
    down = m2.remote()
    assert down["corrupt"] >= 1 and down["hits"] == 0, down


def test_a_remote_killed_mid_build_is_skipped(machines, sources, tmp_path, redis_server):
    import threading
    import time

    m1, m2, b = share(machines, sources, tmp_path, redis_server.url)
    client = redis_server.client()
    done = threading.Event()
    before = client.info("stats")["keyspace_hits"]  # machine 1's uploads found some blobs there

    def kill_after_first_hit():  # one action read its entry and two blobs (object, depfile), then the server dies
        while not done.is_set():
            try:
                if client.info("stats")["keyspace_hits"] >= before + 4:
                    redis_server.kill()
                    return
            except Exception:  # noqa: BLE001 - dead already
                return
            time.sleep(0.002)

    killer = threading.Thread(target=kill_after_first_hit)
    killer.start()
    try:
        warm = m2.wrap(b, "ninja", "-j1")
    finally:
        done.set()
        killer.join()
    hits, misses, _ = cache_counts(warm.stderr)
    assert hits + misses == EDGES and 1 <= hits < EDGES, warm.stderr
    assert_same_outputs(b, sources[1])
    m2.stop()
    down = m2.remote()
    assert down["errors"] == 1 and down["skipped"] >= 1, down  # one failure, then the breaker


@pytest.mark.parametrize("how", ["silent", "wrong password", "dead"])
def test_a_cold_build_with_a_bad_remote_is_right(machines, sources, tmp_path, redis_factory, silent_port, how):
    if how == "silent":
        url = f"redis://127.0.0.1:{silent_port}/0"
    elif how == "wrong password":
        url = f"redis://:wrong@127.0.0.1:{redis_factory(password='right').port}/0"
    else:
        s = redis_factory()
        url = s.url
        s.kill()
    m = machines(url)
    a = checkout(sources, tmp_path, "a")
    cold = m.wrap(a, "ninja")
    assert cache_counts(cold.stderr)[:2] == (0, EDGES), cold.stderr
    assert_same_outputs(a, sources[1])
    stop = m.stop()
    assert stop.returncode == 0, stop.stderr
    r = m.remote()
    assert r["uploaded"] == 0 and r["timeouts"] + r["refused"] + r["errors"] >= 1, r
    assert "wrong" not in json.dumps(m.stats())
    if how == "silent":  # said once, in the build's summary line; lookups in flight together time out together
        import re

        m_ = re.search(rf"remote redis://127.0.0.1:{silent_port}/0: (\d+) timeouts", cold.stderr)
        assert m_ and 1 <= int(m_[1]) <= os.cpu_count() + 2, cold.stderr
    text = m.cli("cache", "stats").stdout
    assert "remote redis://" in text and "0 done, 0 failed" in text, text


def test_stop_flushes_in_bounded_time_and_reports(machines, sources, tmp_path, redis_server):
    # writes paused on the server: lookups (reads) answer, every upload waits for its 2 s timeout,
    # so the queue cannot drain within the 1 s the stopping daemon gives it
    redis_server.cli("client", "pause", "120000", "write")
    m = machines(redis_server.url + "|operation-timeout=2000", "cache:\n  remote_skip_s: 0\n  remote_flush_s: 1\n")
    a = checkout(sources, tmp_path, "a")
    try:
        m.wrap(a, "ninja")
        assert_same_outputs(a, sources[1])
        stop = m.stop()
    finally:
        redis_server.cli("client", "unpause")
    assert stop.returncode == 0, stop.stderr
    line = [x for x in stop.stdout.splitlines() if "pending remote uploads done" in x]
    assert len(line) == 1 and "not uploaded (dropped)" in line[0], stop.stdout
    r = m.remote()
    assert r["uploaded"] == 0 and r["upload_dropped"] >= 1 and r["timeouts"] >= 1, r
    assert redis_server.keys("vrift:ac:*") == []


def test_a_doctored_remote_entry_is_not_replayed(machines, sources, tmp_path, redis_server):
    from vrift.storage import codec

    m1, m2, b = share(machines, sources, tmp_path, redis_server.url)
    r = redis_server.client()
    for k in r.scan_iter("vrift:ac:*"):  # a failing exit status under the fingerprint's old id
        doc = json.loads(codec.unpack(r.get(k)))
        for f in doc["fingerprints"]:
            f["fingerprint"]["status"] = 1
        r.set(k, codec.pack(json.dumps(doc).encode(), 0))
    warm = m2.wrap(b, "ninja")
    assert cache_counts(warm.stderr)[:2] == (0, EDGES), warm.stderr
    assert_same_outputs(b, sources[1])
    m2.stop()
    down = m2.remote()
    assert down["corrupt"] == EDGES and down["hits"] == 0, down
