"""The remote cache on a fresh machine: checkout A is built by machine 1 (one VRIFT_HOME) and
uploaded; checkout B (same sources, another path) by machine 2 (another, empty VRIFT_HOME) reads
through the remote.  Side by side with ccache 4.7+ using the same Redis as `remote_storage`
(a fresh local CCACHE_DIR for the second machine), the same from nginx WebDAV, a cold build with
a remote that is down against one without a remote, and how long the upload backlog takes to
drain after the cold build (`vrift daemon stop` flushes it).

    python benchmarks/bench_remote.py                 # 200 units, make -j2
    python benchmarks/bench_remote.py --units 50 --jobs 2 --json out.json

Servers (redis-server, nginx) run on free loopback ports in a temporary directory and are
stopped at the end.  Every build's program must print what the plain build's prints.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import gen_project  # noqa: E402
from support.remote import Nginx, RedisServer, free_port  # noqa: E402

VRIFT = [sys.executable, "-m", "vrift"]


NOTES: dict[str, str] = {}  # what vrift said about a timed command (its summary line, the stop's report)


def run(cmd, cwd, env, note: str | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    if note:
        said = [line for line in (proc.stderr + proc.stdout).splitlines()
                if line.startswith("vrift: ") and "committed" in line or "remote uploads" in line]
        NOTES[note] = "; ".join(said)
    return took


class Machine:
    def __init__(self, base: Path, remote: str | None):
        self.home = base / "h"
        self.home.mkdir(parents=True, mode=0o700)
        (base / "shm").mkdir(mode=0o700)
        self.env = dict(os.environ, VRIFT_HOME=str(self.home), VRIFT_SHM_DIR=str(base / "shm"))
        self.env.pop("VRIFT_CACHE_REMOTE", None)
        if remote:
            self.env["VRIFT_CACHE_REMOTE"] = remote

    def build(self, proj: Path, jobs: int, note: str) -> float:
        run(VRIFT + ["wrap", "-q", "--", "true"], proj, self.env)  # daemon up, tree ingested: not timed
        return run(VRIFT + ["wrap", "make", f"-j{jobs}"], proj, self.env, note)

    def stop(self, note: str | None = None) -> float:
        return run(VRIFT + ["daemon", "stop"], self.home, self.env, note)


def checkout(src: Path, where: Path) -> Path:
    shutil.copytree(src, where, ignore=shutil.ignore_patterns("build", ".vrift"))
    return where


def program(proj: Path) -> str:
    return subprocess.run([str(proj / "build/app")], capture_output=True, text=True, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vrb", dir="/tmp"))
    servers = []
    rows = {}
    try:
        src = base / "src"
        gen_project.generate(src, args.units, 20)
        (src / ".vrift.yaml").write_text("")
        ref = checkout(src, base / "plain" / "co")
        rows["plain build"] = run(["make", f"-j{args.jobs}"], ref, os.environ)
        expected = program(ref)

        redis = RedisServer(base, "--maxmemory", "1gb", "--maxmemory-policy", "allkeys-lru")
        nginx = Nginx(base)
        servers += [redis, nginx]
        for name, url in (("redis", redis.url), ("nginx", nginx.url("/vrift"))):
            m1, m2 = Machine(base / f"{name}-m1", url), Machine(base / f"{name}-m2", url)
            a, b = checkout(src, base / f"{name}-a" / "co"), checkout(src, base / f"{name}-b" / "co")
            what = f"vrift cold, uploading to {name}"
            rows[what] = m1.build(a, args.jobs, what)
            what = f"upload backlog drain ({name}): vrift daemon stop"
            rows[what] = m1.stop(what)
            what = f"vrift fresh machine from {name}"
            rows[what] = m2.build(b, args.jobs, what)
            assert program(b) == expected
            m2.stop()
            (r,) = json.loads(subprocess.run(VRIFT + ["cache", "stats", "--json"], env=m2.env, capture_output=True,
                                             text=True, check=True).stdout)["counters"]["remote"].values()
            NOTES[what] += (f"; in the daemon: entries {r.get('entry_s', 0):.2f} s, blob fetches "
                            f"{r.get('fetch_s', 0):.2f} s, storing blobs in the CAS {r.get('store_s', 0):.2f} s")
            if name == "redis":  # the floor: the same machine again, every hit local (no blob stored)
                run(VRIFT + ["wrap", "-q", "--", "rm", "-rf", "build"], b, m2.env)
                what = "vrift warm, local hits (after make clean)"
                rows[what] = m2.build(b, args.jobs, what)
            m2.stop()

        # ccache with the same Redis (its own key space: ccache's keys start with "ccache:")
        cc_env = dict(os.environ, CCACHE_REMOTE_STORAGE=f"redis://127.0.0.1:{redis.port}", CCACHE_BASEDIR=str(base))
        for step, where in (("cold", "cc-a"), ("fresh machine", "cc-b")):
            proj = checkout(src, base / where / "co")
            env = dict(cc_env, CCACHE_DIR=str(base / f"{where}-ccache"))
            rows[f"ccache {step} (redis remote)"] = run(["make", f"-j{args.jobs}", "CC=ccache cc"], proj, env)
            assert program(proj) == expected

        dead = free_port()  # nothing listens: connection refused
        for name, url in (("no remote", None), ("a dead remote", f"redis://127.0.0.1:{dead}/0")):
            m = Machine(base / f"cold-{name.replace(' ', '-')}", url)
            proj = checkout(src, base / f"cold-{name.replace(' ', '-')}-co" / "co")
            rows[f"vrift cold, {name}"] = m.build(proj, args.jobs, f"vrift cold, {name}")
            assert program(proj) == expected
            m.stop()
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(base, ignore_errors=True)
    load = os.getloadavg()
    print(f"{args.units} units, make -j{args.jobs}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for what, s in rows.items():
        print(f"  {what:<48} {s:7.2f} s  {NOTES.get(what, '')}")
    fresh, cc = rows["vrift fresh machine from redis"], rows["ccache fresh machine (redis remote)"]
    print(f"  fresh machine from Redis: vrift {cc / fresh:.2f}x faster than ccache")
    print(f"  cold with a dead remote: {100 * (rows['vrift cold, a dead remote'] / rows['vrift cold, no remote'] - 1):+.1f}%")
    if args.json:
        Path(args.json).write_text(json.dumps({"units": args.units, "jobs": args.jobs, "load": load, "seconds": rows, "notes": NOTES},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
