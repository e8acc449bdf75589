"""Committed index updates per second in each durability mode, one update per commit.

    python benchmarks/bench_durability.py              # 5,000 updates per mode
    python benchmarks/bench_durability.py --updates 20000 --batch 8

Each update is acknowledged only when the mode's promise holds (sync: LMDB fsynced; wal:
WAL fdatasynced; async: LMDB written, env.sync in the background).  `--batch` puts several
updates in one apply(), which is what the project daemon's group commit does under
concurrent clients.  Side by side: a bare `os.fdatasync` loop on the same disk, the floor
any durable mode pays.  Targets (SPEC §12): sync ≥ 900, wal ≥ 5,000, async ≥ 6,600 /s.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vrift.home import Home  # noqa: E402
from vrift.identity import Project
from vrift.vdir.entry import Entry  # noqa: E402
from vrift.vdir.index import ProjectIndex  # noqa: E402

TARGETS = {"sync": 900, "wal": 5000, "async": 6600}


def run_mode(base: Path, mode: str, updates: int, batch: int) -> dict:
    home = Home(root=base / mode / "home", shm_dir=base / mode / "shm").ensure()
    root = base / mode / "proj"
    root.mkdir(parents=True)
    st = os.stat(root)
    index = ProjectIndex(home, Project.at(root), durability=mode).open()
    try:
        t0 = time.perf_counter()
        for i in range(0, updates, batch):
            index.apply([Entry.from_stat(b"out/%d.o" % j, st, digest=j.to_bytes(32, "little"))
                         for j in range(i, min(updates, i + batch))])
        dt = time.perf_counter() - t0
        stats = index.stats()
    finally:
        index.close(unlink_shm=True)
    return {"mode": mode, "updates_per_s": updates / dt, "us_per_commit": dt / (updates / batch) * 1e6,
            "wal_fsyncs": stats["wal_fsyncs"], "lmdb_flushes": stats["flushes"]}


def fdatasync_floor(base: Path, n: int = 500) -> float:
    fd = os.open(base / "floor", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            os.write(fd, b"x" * 150)
            os.fdatasync(fd)
        return n / (time.perf_counter() - t0)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=1, help="updates per commit (group commit)")
    ap.add_argument("--dir", default=None, help="where to run (default: a temp dir on the same disk as ~)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vrift-bench-dur-", dir=args.dir))
    try:
        floor = fdatasync_floor(base)
        print(f"bare write+fdatasync on this disk: {floor:,.0f}/s")
        print(f"{'mode':6} {'updates/s':>11} {'µs/commit':>10} {'target':>8} {'vs target':>9}")
        for mode in ("sync", "wal", "async"):
            r = run_mode(base, mode, args.updates, args.batch)
            print(f"{mode:6} {r['updates_per_s']:>11,.0f} {r['us_per_commit']:>10.0f} {TARGETS[mode]:>8,} "
                  f"{r['updates_per_s'] / TARGETS[mode]:>8.2f}x")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
