"""stat() of clean indexed files through the preload library vs the kernel (SPEC §12).

    python benchmarks/bench_stat.py [--files 10000] [--rounds 50]

Builds a tree of FILES files, indexes it into a VDir, compiles benchmarks/stat_bench.c and
runs it twice in this run: plain, and with the library preloaded.  Prints the median ns per
call of each, and the ratio.  Targets: <= 200 ns and >= 8x faster than the kernel.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.preload import build_vdir, counters_file, index_tree, preload_env, read_counters  # noqa: E402


def make_tree(root: Path, files: int) -> list[str]:
    """A source-like tree: 100 files per directory, three levels deep."""
    paths = []
    for i in range(files):
        rel = f"src/mod{i // 1000:03d}/part{(i // 100) % 10}/file_{i:06d}.h"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i % 512))
        paths.append(rel)
    return paths


def run_bench(binary: Path, paths_file: Path, rounds: int, env: dict, cwd: Path) -> dict:
    out = subprocess.run([str(binary), str(paths_file), str(rounds)], env=env, cwd=cwd, capture_output=True,
                         text=True, check=True).stdout
    return {k: float(v) for k, v in (item.split("=") for item in out.split())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vrift-bench-stat-"))
    try:
        root = Path(os.path.realpath(work / "proj"))
        root.mkdir()
        paths = make_tree(root, args.files)
        rng = __import__("random").Random(42)
        rng.shuffle(paths)  # no help from directory locality in the kernel's dcache walk
        vdir = work / "vdir"
        build_vdir(vdir, root, index_tree(root))
        binary = work / "stat_bench"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "stat_bench.c")], check=True)
        paths_file = work / "paths.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        counters = counters_file(work / "counters")
        env = {k: v for k, v in os.environ.items() if not k.startswith("VRIFT_") and k != "LD_PRELOAD"}
        kernel = run_bench(binary, paths_file, args.rounds, env, root)
        lib = run_bench(binary, paths_file, args.rounds, preload_env(env, root, vdir, counters=counters), root)
        c = read_counters(counters)
        if lib["checksum"] != kernel["checksum"]:
            print("answers differ between the library and the kernel", file=sys.stderr)
            return 1
        if c["STAT_SERVED"] < lib["calls"]:
            print(f"only {c['STAT_SERVED']} of {lib['calls']:.0f} calls served from memory", file=sys.stderr)
            return 1
        ratio = kernel["median_ns"] / lib["median_ns"]
        print(f"stat() of {args.files} indexed files x {args.rounds} rounds (relative paths, shuffled)")
        print(f"{'':24} {'median ns/call':>15} {'min ns/call':>12}")
        print(f"{'kernel (plain stat)':24} {kernel['median_ns']:>15.1f} {kernel['min_ns']:>12.1f}")
        print(f"{'libvrift (from VDir)':24} {lib['median_ns']:>15.1f} {lib['min_ns']:>12.1f}")
        print(f"ratio kernel/libvrift: {ratio:.1f}x   (targets: <= 200 ns, >= 8x)")
        print(f"served from memory: {c['STAT_SERVED']} calls")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
