"""Storing many small files in the CAS: one fsync per blob against batched durability.

    python benchmarks/bench_cas.py                  # 100,000 files of 1-8 KiB, 20% duplicates
    python benchmarks/bench_cas.py --files 20000 --workers 4

For each mode a fresh store receives the same tree through a thread pool (as ingest does):
`fsync` syncs every new blob (data, then its directory) before returning; `batched` stores
without fsync and calls `CAS.sync()` (one syncfs) after every 4,096 files, the way a bulk
writer makes a batch durable before its index entries are published.  Also reported: the
second pass over the same tree (all duplicates), `stats()` over the full store and `verify`.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vrift.cas import CAS  # noqa: E402
from vrift.cas.verify import verify  # noqa: E402

BATCH = 4096


def make_files(root: Path, n: int, dup_ratio: float, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    shared = [rng.randbytes(rng.randint(1024, 8192)) for _ in range(max(1, n // 50))]
    paths = []
    for i in range(n):
        d = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        data = rng.choice(shared) if rng.random() < dup_ratio else rng.randbytes(rng.randint(1024, 8192))
        p = d / f"f{i}"
        p.write_bytes(data)
        paths.append(str(p))
    return paths


def store_all(cas: CAS, paths: list[str], workers: int, fsync: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    new = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i in range(0, len(paths), BATCH):
            batch = paths[i:i + BATCH]
            new += sum(r.new for r in pool.map(lambda p: cas.store_file(p, fsync=fsync), batch))
            if not fsync:
                cas.sync()
    return time.perf_counter() - t0, new


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dup", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 2))
    ap.add_argument("--dir", default=None, help="Where to create the tree and stores (default: a temp dir in /tmp).")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="vrift-bench-cas-", dir=args.dir))
    try:
        paths = make_files(base / "src", args.files, args.dup)
        os.sync()
        print(f"{args.files:,} files of 1-8 KiB, {args.dup:.0%} duplicate content, {args.workers} threads, "
              f"{os.cpu_count()} CPUs")
        results = {}
        for mode, fsync in (("batched", False), ("fsync", True)):
            cas = CAS(base / f"cas-{mode}")
            seconds, new = store_all(cas, paths, args.workers, fsync)
            results[mode] = seconds
            print(f"  {mode:8s} first store: {args.files / seconds:10,.0f} files/s  ({seconds:.2f}s, {new:,} new blobs)")
            seconds2, new2 = store_all(cas, paths, args.workers, fsync)
            print(f"  {mode:8s} again (all dup): {args.files / seconds2:7,.0f} files/s  ({seconds2:.2f}s, {new2} new)")
        t0 = time.perf_counter()
        count, size = cas.stats()
        t_stats = time.perf_counter() - t0
        print(f"  stats(): {count:,} blobs, {size / 2**20:.1f} MiB in {t_stats * 1000:.0f} ms")
        t0 = time.perf_counter()
        report = verify(cas, workers=args.workers)
        t_verify = time.perf_counter() - t0
        print(f"  verify: {report.checked:,} blobs in {t_verify:.2f}s ({report.checked / t_verify:,.0f} blobs/s), "
              f"{len(report.bad)} bad")
        print(f"  batched is {results['fsync'] / results['batched']:.1f}x faster than one fsync per blob")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
