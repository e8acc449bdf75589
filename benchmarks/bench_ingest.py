"""First ingest and re-ingest of a generated tree, side by side with the plain filesystem.

    python benchmarks/bench_ingest.py                 # 100,000 files, ~20% duplicate content
    python benchmarks/bench_ingest.py --files 20000   # smaller

Reports files/s for the first ingest (hash + store + LMDB + VDir) and for a re-ingest of the
unchanged tree (stat only), next to a plain `lstat` walk and a plain `cp -r` of the same tree,
plus VDir bytes per indexed file and peak RSS.  Targets (SPEC §12): first ≥ 20,000 files/s,
re-ingest ≥ 200,000 files/s, VDir ≤ 256 B/file, daemon RSS ≤ 200 MB at 100,000 files.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vrift.cas import CAS  # noqa: E402
from vrift.ingest import Ingester  # noqa: E402
from vrift.home import Home  # noqa: E402
from vrift.identity import Project
from vrift.vdir.index import ProjectIndex  # noqa: E402


def make_tree(root: Path, files: int, dup_ratio: float, seed: int = 1) -> int:
    rng = random.Random(seed)
    per_dir = 100
    shared = [rng.randbytes(rng.randint(200, 4000)) for _ in range(max(1, files // 50))]
    total = 0
    for i in range(files):
        d = root / f"d{i // (per_dir * per_dir):03d}" / f"s{(i // per_dir) % per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        data = rng.choice(shared) if rng.random() < dup_ratio else rng.randbytes(rng.randint(200, 4000))
        (d / f"f{i}.c").write_bytes(data)
        total += len(data)
    return total


def plain_walk(root: Path) -> int:
    n = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for d in it:
                st = d.stat(follow_symlinks=False)
                n += 1
                if d.is_dir(follow_symlinks=False):
                    stack.append(d.path)
    return n


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--dup", type=float, default=0.2)
    ap.add_argument("--durability", default="wal", choices=["sync", "wal", "async"])
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vrift-bench-", dir=args.dir))
    os.environ["VRIFT_HOME"] = str(work / "home")
    os.environ["VRIFT_SHM_DIR"] = str(work / "shm")
    try:
        src = work / "tree"
        src.mkdir()
        t_make, nbytes = timed(lambda: make_tree(src, args.files, args.dup))
        subprocess.run(["sync"], check=False)
        home = Home.from_env().ensure()
        project = Project.at(src)
        t_walk, n_walk = timed(lambda: plain_walk(src))
        t_cp, _ = timed(lambda: subprocess.run(["cp", "-r", str(src), str(work / "copy")], check=True))
        shutil.rmtree(work / "copy")

        index = ProjectIndex(home, project, durability=args.durability).open()
        cas = CAS(home.cas_dir)
        ing = Ingester(project, index, cas)
        t_first, first = timed(ing.ingest)
        t_again, again = timed(ing.ingest)
        vdir_bytes = os.path.getsize(index.vdir_path)
        entries = len(index)
        index.close()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        paths = first.paths
        rows = [
            ("plain lstat walk", n_walk / t_walk, "-", "-"),
            ("plain cp -r", paths / t_cp, "-", "-"),
            ("vrift first ingest", paths / t_first, f"{(paths / t_first) / (paths / t_cp):.2f}x cp -r", "20,000"),
            ("vrift re-ingest", paths / t_again, f"{(paths / t_again) / (n_walk / t_walk):.2f}x walk", "200,000"),
        ]
        print(f"tree: {args.files:,} files ({paths:,} paths incl. dirs), {nbytes / 2**20:.0f} MiB, "
              f"{args.dup:.0%} duplicate content, made in {t_make:.1f}s; durability {args.durability}")
        print(f"{'what':<22}{'paths/s':>12}  {'ratio':<16}{'target':>10}")
        for name, rate, ratio, target in rows:
            print(f"{name:<22}{rate:>12,.0f}  {ratio:<16}{target:>10}")
        print(f"first ingest: hashed {first.hashed:,}, new blobs {first.new_blobs:,} "
              f"(dedup kept {first.hashed - first.new_blobs:,} files out of the CAS), {t_first:.2f}s")
        print(f"re-ingest: hashed {again.hashed}, reused {again.reused:,}, {t_again:.3f}s")
        print(f"VDir: {vdir_bytes:,} bytes for {entries:,} entries = {vdir_bytes / entries:.0f} B/entry (target ≤ 256)")
        print(f"peak RSS of this process: {rss_mb:.0f} MB (target ≤ 200 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
