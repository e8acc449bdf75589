"""Commits against a real project daemon, per durability mode and client count.

    python benchmarks/bench_commit.py [--seconds 3] [--clients 1,4,16] [--modes sync,wal,async]
                                      [--flow written|commit]

Each client is a separate process with its own connection.  `--flow written` (the preload
library's flow, default): write a small staging file, rename it into place under a shared flock
of its directory, send a one-way WRITTEN; the rate is the daemon's — every commit processed
(hashed, stored, indexed, DIRTY cleared), measured up to the answer of a SYNC sent after the
last client finished — and the latency is the client's own close path (rename + send).
`--flow commit`: the synchronous COMMIT round trip.  The plain filesystem peer, measured in the
same run, is write+rename per second without any daemon.  The daemon's CPU per commit (user +
system, from /proc) is reported too: on a shared machine it is steadier than the rates.
Targets (SPEC §12): sync ≥ 900, wal ≥ 5,000, async ≥ 6,600 commits/s.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"sync": 900, "wal": 5000, "async": 6600}


def client_run(sock: str, root: str, idx: int, seconds: float, flow: str, start_at: float, out) -> None:
    import fcntl

    from vrift.daemon.client import ProjectClient
    from vrift.daemon.protocol import Msg, Tag

    c = ProjectClient(sock, 60_000)
    if flow == "commit":
        c.hello()
    staging = Path(root) / ".vrift" / "staging" / str(os.getpid())
    staging.mkdir(parents=True, exist_ok=True)
    outdir = Path(root) / "out" / f"c{idx}"
    outdir.mkdir(parents=True, exist_ok=True)
    lat = []
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        n += 1
        s = staging / str(n)
        target = outdir / f"o{n % 500}.o"
        if flow == "written":  # as the library does at the open
            c.notify(Msg.WRITING, (Tag.PATH, os.fsencode(target)))
        with open(s, "wb") as f:
            f.write(b"object %d %d\n" % (idx, n) * 8)
        a = time.perf_counter()
        if flow == "commit":
            c.commit(os.fsencode(target), os.fsencode(s))
        else:
            dfd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)
            fcntl.flock(dfd, fcntl.LOCK_SH)
            os.rename(s, target)
            os.close(dfd)
            c.written(os.fsencode(target))
        lat.append(time.perf_counter() - a)
    out.put((lat, t0, time.perf_counter()))
    c.close()


def plain_run(base: str, idx: int, seconds: float, start_at: float, out) -> None:
    d = Path(base) / f"c{idx}"  # outside the project: the daemon's watcher must not see the peer
    d.mkdir(parents=True, exist_ok=True)
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        n += 1
        tmp = d / f".t{n}"
        with open(tmp, "wb") as f:
            f.write(b"object %d %d\n" % (idx, n) * 8)
        os.rename(tmp, d / f"o{n % 500}.o")
    out.put(([0.0] * n, t0, time.perf_counter()))


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(target, args_of, clients: int) -> tuple[list[float], float]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    start_at = time.time() + 0.5
    procs = [ctx.Process(target=target, args=(*args_of(i), start_at, q)) for i in range(clients)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    lat = [x for r in results for x in r[0]]
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return lat, len(lat) / wall


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--modes", default="sync,wal,async")
    parser.add_argument("--flow", choices=("written", "commit"), default="written")
    parser.add_argument("--dir", default=None, help="where the projects live (default: a temp dir on /tmp)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vb", dir=args.dir or "/tmp"))
    os.environ["VRIFT_HOME"] = str(base / "h")
    os.environ["VRIFT_SHM_DIR"] = str(base / "shm")
    from vrift.daemon.client import CoordinatorClient, connect_project
    from vrift.daemon.paths import coordinator_files
    from vrift.home import Home
    from vrift.identity import Project

    home = Home.from_env().ensure()
    counts = [int(x) for x in args.clients.split(",")]
    rows = []
    try:
        for mode in args.modes.split(","):
            root = base / f"p-{mode}"
            root.mkdir()
            (root / ".vrift.yaml").write_text(f"durability: {mode}\n")
            project = Project.at(root)
            with connect_project(home, project) as c:
                hello = c.hello()
                sock, pid = hello["socket"], hello["pid"]
                c.sync()
            for n in counts:
                with connect_project(home, project) as c:
                    st0 = c.stats()
                    before = st0["commits"]
                    cpu0 = process_cpu(pid)
                    t0 = time.time()
                    lat, rate = run_clients(client_run, lambda i: (sock, str(root), i, args.seconds, args.flow), n)
                    c.sync()  # every WRITTEN sent before it has been processed
                    cpu = process_cpu(pid) - cpu0
                    st1 = c.stats()
                    done = st1["commits"] - before
                    reused = st1.get("commits_reused", 0) - st0.get("commits_reused", 0)
                    if args.flow == "written":
                        rate = done / (time.time() - t0 - 0.5)  # the clients start 0.5 s after t0
                    if done < len(lat):
                        print(f"{mode}: only {done} of {len(lat)} writes committed", file=sys.stderr)
                _, plain = run_clients(plain_run, lambda i: (str(base / f"plain-{mode}"), i, args.seconds), n)
                lat.sort()
                p50 = statistics.median(lat) * 1e6
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e6
                cpu_us = cpu / max(done, 1) * 1e6
                rows.append((mode, n, len(lat), p50, p99, rate, plain, TARGETS[mode], cpu_us))
                print(f"{mode:5} clients={n:2}: {rate:8.0f} commits/s  p50 {p50:7.0f} us  p99 {p99:7.0f} us  "
                      f"daemon {cpu_us:5.0f} us CPU/commit; {reused} hashed by the watcher first", file=sys.stderr)
    finally:
        try:
            with CoordinatorClient(coordinator_files(home).socket, 60_000) as c:
                c.shutdown(flags=1)
        except Exception as e:
            print(f"shutdown: {e}", file=sys.stderr)
        time.sleep(0.5)
        shutil.rmtree(base, ignore_errors=True)
    print("| mode | clients | commits | p50 µs | p99 µs | commits/s | daemon CPU µs/commit | plain write+rename/s "
          "| commit/plain | target | meets |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for mode, n, total, p50, p99, rate, plain, target, cpu_us in rows:
        print(f"| {mode} | {n} | {total:,} | {p50:,.0f} | {p99:,.0f} | {rate:,.0f} | {cpu_us:,.0f} | {plain:,.0f} | "
              f"{rate / plain:.2f} | {target:,} | {'yes' if rate >= target else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
