"""The write path's cost in a real build: plain `make -jN` against `vrift wrap --no-cache make -jN`
(and, with --record, `vrift wrap make -jN` recording into an empty action cache) on a generated
project, clean builds, runs alternating, median of --runs.

    python benchmarks/bench_wrap_write.py [--units 100] [--jobs 2] [--runs 3] [--record]

Every build's outputs are compared byte for byte with the plain build's.  The load average is
printed: the numbers only mean something on a quiet machine.
"""
from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import gen_project  # noqa: E402

VRIFT = [sys.executable, "-m", "vrift"]


def clean_build(cmd: list[str], root: Path, env: dict) -> float:
    shutil.rmtree(root / "build", ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {root}: {r.stderr[-2000:]}")
    return dt


def same_outputs(a: Path, b: Path) -> int:
    n = 0
    for p in sorted((a / "build").rglob("*")):
        if p.is_file():
            q = b / p.relative_to(a)
            if not filecmp.cmp(p, q, shallow=False):
                sys.exit(f"{p} differs from {q}")
            n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--record", action="store_true", help="also `vrift wrap` recording into an empty cache")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vbw"))
    env = dict(os.environ, VRIFT_HOME=str(base / "h"), VRIFT_SHM_DIR=str(base / "shm"))
    env.pop("MAKEFLAGS", None)
    plain_tree, vrift_tree = base / "plain", base / "vrift"
    gen_project.generate(plain_tree, args.units, 12)
    shutil.copytree(plain_tree, vrift_tree, symlinks=True)
    (vrift_tree / ".vrift.yaml").write_text("")
    make = ["make", f"-j{args.jobs}"]
    kinds = {"plain": (make, plain_tree), "vrift wrap --no-cache": ([*VRIFT, "wrap", "--no-cache", "--", *make], vrift_tree)}
    if args.record:
        kinds["vrift wrap (recording)"] = ([*VRIFT, "wrap", "--", *make], vrift_tree)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        subprocess.run([*VRIFT, "daemon", "start"], cwd=vrift_tree, env=env, capture_output=True)
        clean_build(kinds["vrift wrap --no-cache"][0], vrift_tree, env)  # daemon up, page cache warm
        clean_build(make, plain_tree, env)
        load = os.getloadavg()
        for _ in range(args.runs):
            for kind, (cmd, root) in kinds.items():
                if kind.endswith("(recording)"):
                    subprocess.run([*VRIFT, "cache", "clear"], cwd=root, env=env, capture_output=True)
                times[kind].append(clean_build(cmd, root, env))
                if root is vrift_tree:
                    same_outputs(vrift_tree, plain_tree)
        load_after = os.getloadavg()
    finally:
        subprocess.run([*VRIFT, "daemon", "stop"], cwd=vrift_tree, env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.units} units, make -j{args.jobs}, median of {args.runs} alternating clean builds; "
          f"load average {load[0]:.2f} before, {load_after[0]:.2f} after")
    print("| build | median s | runs | vs plain |")
    print("|---|---:|---|---:|")
    ref = statistics.median(times["plain"])
    for kind, ts in times.items():
        m = statistics.median(ts)
        print(f"| {kind} | {m:.2f} | {', '.join(f'{t:.2f}' for t in ts)} | {100 * (m / ref - 1):+.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
