"""The write path's cost in a real build: plain `make -jN` against `vrift wrap --no-cache make -jN`
(and, with --record, `vrift wrap make -jN` recording into an empty action cache) on a generated
project, clean builds, runs alternating, median of --runs.

    python benchmarks/bench_wrap_write.py [--units 100] [--jobs 2] [--runs 3] [--record]
                                          [--baseline DIR]

Each build reports its wall time and its CPU: the build's own (the wrapper and everything under
it) plus the project daemon's during the build, read from /proc — on a shared machine CPU
seconds are steadier than wall time.  `--baseline DIR` runs the same vrift builds a second time
with the vrift package found in DIR (a checkout of another commit, its native libraries built),
each with its own daemon and tree, alternating with the others: before and after in one run.
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


def process_cpu(pid: int | None) -> float:
    """User + system CPU seconds of a running process (0 when there is none)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daemon_pid(home: Path) -> int | None:
    for f in (home / "run").glob("p-*.pid"):
        return int(f.read_text())
    return None


def clean_build(cmd: list[str], root: Path, env: dict, daemon: int | None = None) -> tuple[float, float, float]:
    """(wall s, CPU s of the build and of the daemon during it, the daemon's share)."""
    shutil.rmtree(root / "build", ignore_errors=True)
    time.sleep(0.2)  # the daemon's share of the removal is not the build's
    d0, c0 = process_cpu(daemon), os.times()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    c1 = os.times()
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed in {root}: {r.stderr[-2000:]}")
    cpu = (c1.children_user - c0.children_user) + (c1.children_system - c0.children_system)
    d = process_cpu(daemon) - d0
    return dt, cpu + d, d


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
    ap.add_argument("--baseline", type=Path, help="also run vrift from this directory (before/after in one run)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vbw"))
    plain_tree = base / "plain"
    gen_project.generate(plain_tree, args.units, 12)
    make = ["make", f"-j{args.jobs}"]
    plain_env = dict(os.environ)
    plain_env.pop("MAKEFLAGS", None)
    kinds: dict[str, tuple[list[str], Path, dict]] = {"plain": (make, plain_tree, plain_env)}
    variants = {"": None}
    if args.baseline is not None:
        variants = {" (baseline)": args.baseline.resolve(), "": None}
    setups = []
    for i, (label, pythonpath) in enumerate(variants.items()):
        tree = base / f"vrift{i}"
        shutil.copytree(plain_tree, tree, symlinks=True)
        (tree / ".vrift.yaml").write_text("")
        env = dict(plain_env, VRIFT_HOME=str(base / f"h{i}"), VRIFT_SHM_DIR=str(base / f"shm{i}"))
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        kinds[f"vrift wrap --no-cache{label}"] = ([*VRIFT, "wrap", "--no-cache", "--", *make], tree, env)
        if args.record:
            kinds[f"vrift wrap (recording){label}"] = ([*VRIFT, "wrap", "--", *make], tree, env)
        setups.append((tree, env))
    times: dict[str, list[tuple[float, float, float]]] = {k: [] for k in kinds}
    try:
        pids = {}
        for tree, env in setups:
            subprocess.run([*VRIFT, "daemon", "start"], cwd=tree, env=env, capture_output=True)
            clean_build([*VRIFT, "wrap", "--no-cache", "--", *make], tree, env)  # daemon up, page cache warm
            pids[tree] = daemon_pid(Path(env["VRIFT_HOME"]))
        clean_build(make, plain_tree, plain_env)
        load = os.getloadavg()
        for _ in range(args.runs):
            for kind, (cmd, root, env) in kinds.items():
                if "(recording)" in kind:
                    subprocess.run([*VRIFT, "cache", "clear"], cwd=root, env=env, capture_output=True)
                times[kind].append(clean_build(cmd, root, env, pids.get(root)))
                if root is not plain_tree:
                    same_outputs(root, plain_tree)
        load_after = os.getloadavg()
    finally:
        for tree, env in setups:
            subprocess.run([*VRIFT, "daemon", "stop"], cwd=tree, env=env, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    print(f"{args.units} units, make -j{args.jobs}, median of {args.runs} alternating clean builds; "
          f"load average {load[0]:.2f} before, {load_after[0]:.2f} after; CPU = the build's + the daemon's")
    print("| build | wall s (median) | CPU s (median) | CPU runs | daemon CPU s (median) | wall vs plain "
          "| CPU vs plain |")
    print("|---|---:|---:|---|---:|---:|---:|")
    ref_wall = statistics.median(t for t, _, _ in times["plain"])
    ref_cpu = statistics.median(c for _, c, _ in times["plain"])
    for kind, ts in times.items():
        wall = statistics.median(t for t, _, _ in ts)
        cpu = statistics.median(c for _, c, _ in ts)
        daemon = statistics.median(d for _, _, d in ts)
        print(f"| {kind} | {wall:.2f} | {cpu:.2f} | {', '.join(f'{c:.2f}' for _, c, _ in ts)} | {daemon:.2f} | "
              f"{100 * (wall / ref_wall - 1):+.0f}% | {100 * (cpu / ref_cpu - 1):+.0f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
