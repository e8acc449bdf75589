"""No-op build: `vrift wrap ninja` vs `ninja`, and `vrift wrap make` vs `make`, whole command,
on a generated project (SPEC §12: ≥ 1.5× faster at 50,000 edges), plus the time from
`vrift wrap` to the tool's exec (target ≤ 30 ms).

    python benchmarks/bench_noop.py                    # 50,000 edges, 7 runs
    python benchmarks/bench_noop.py --edges 20000 --runs 5 --dir /tmp/noop

The project is generated with `benchmarks/gen_project.py --stub` (same graph and depfiles as a
C project, cheap commands) and built once by each tool; then each no-op build is timed N times,
plain and wrapped alternating, and the medians compared.  Columns that say where the time
goes: the tool alone under the preload library (LD_PRELOAD set by hand, no wrapper), and the
wrapper's own cost up to the tool's exec.  A private VRIFT_HOME/VRIFT_SHM_DIR is used and the
daemons are stopped at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gen_project  # noqa: E402

VRIFT = [sys.executable, "-m", "vrift"]


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return took


def median_pair(a: list[str], b: list[str], cwd: Path, env: dict, runs: int) -> tuple[float, float]:
    """Medians of `a` and `b`, run alternately (after one warm-up each) so drift hits both."""
    timed(a, cwd, env)
    timed(b, cwd, env)
    ta, tb = [], []
    for _ in range(runs):
        ta.append(timed(a, cwd, env))
        tb.append(timed(b, cwd, env))
    return statistics.median(ta), statistics.median(tb)


def wrap_to_exec_ms(cwd: Path, env: dict, runs: int) -> tuple[float, float]:
    """(median ms from starting `vrift wrap` to the tool's first instruction in main, the same
    for starting the tool directly): the tool prints CLOCK_REALTIME in ns (`date +%s%N`)."""
    def one(cmd):
        t0 = time.time_ns()
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout
        return (int(out.strip()) - t0) / 1e6

    wrapped = [one([*VRIFT, "wrap", "-q", "--", "date", "+%s%N"]) for _ in range(runs + 1)][1:]
    direct = [one(["date", "+%s%N"]) for _ in range(runs)]
    return statistics.median(wrapped), statistics.median(direct)


def preload_env(env: dict, cwd: Path) -> dict:
    """The environment `vrift wrap` gives the tool, captured from a wrapped `env`."""
    out = subprocess.run([*VRIFT, "wrap", "-q", "--", "env", "-0"], cwd=cwd, env=env, capture_output=True,
                         check=True).stdout.decode()
    captured = dict(item.split("=", 1) for item in out.split("\0") if "=" in item)
    captured.pop("VRIFT_COUNTERS", None)  # the wrapper removed that file already
    return captured


def summary_of(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return next((line for line in proc.stderr.splitlines() if line.startswith("vrift: ")), "(no summary)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (kept and reused if given)")
    parser.add_argument("--tools", default="ninja,make")
    args = parser.parse_args(argv)

    base = args.dir or Path(tempfile.mkdtemp(prefix="vrift-noop-"))
    vhome = Path(tempfile.mkdtemp(prefix="vrn", dir="/tmp"))
    env = dict(os.environ, VRIFT_HOME=str(vhome / "h"), VRIFT_SHM_DIR=str(vhome / "shm"))
    (vhome / "shm").mkdir(mode=0o700)
    for var in ("VRIFT_PROJECT_ROOT", "VRIFT_ENABLED", "VRIFT_FALLBACK_MODE", "LD_PRELOAD"):
        env.pop(var, None)
    tools = args.tools.split(",")
    rows = []
    try:
        for tool in tools:
            root = base / tool
            t0 = time.perf_counter()
            info = gen_project.generate(root, gen_project.units_for_edges(args.edges), stub=True)
            (root / ".vrift.yaml").touch()
            build = ["ninja", "-j4"] if tool == "ninja" else ["make", "-j4", "-s"]
            subprocess.run(build, cwd=root, env=env, check=True, stdout=subprocess.DEVNULL)
            print(f"{tool}: {info['edges']} edges, {info['units']} units, generated and built in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
            noop = ["ninja"] if tool == "ninja" else ["make", "-s"]
            t0 = time.perf_counter()
            timed([*VRIFT, "wrap", "-q", *noop], root, env)  # starts the daemons, indexes the tree
            print(f"{tool}: first vrift wrap (daemon start + ingest) {time.perf_counter() - t0:.1f}s",
                  file=sys.stderr)
            plain, wrapped = median_pair(noop, [*VRIFT, "wrap", "-q", *noop], root, env, args.runs)
            tool_env = preload_env(env, root)
            preloaded = statistics.median([timed(noop, root, tool_env) for _ in range(args.runs)])
            rows.append((tool, plain, wrapped, preloaded, summary_of([*VRIFT, "wrap", *noop], root, env)))
        to_exec, direct = wrap_to_exec_ms(base / tools[0], env, args.runs)
    finally:
        subprocess.run([*VRIFT, "daemon", "stop"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(vhome, ignore_errors=True)
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    print(f"\nNo-op build, {args.edges} edges, median of {args.runs} runs (plain and wrapped alternating)\n")
    print(f"{'tool':6} {'plain ms':>9} {'vrift wrap ms':>14} {'speed-up':>9} {'tool under preload ms':>22}  target")
    for tool, plain, wrapped, preloaded, _ in rows:
        print(f"{tool:6} {plain * 1000:9.1f} {wrapped * 1000:14.1f} {plain / wrapped:8.2f}x "
              f"{preloaded * 1000:22.1f}  >= 1.50x")
    print(f"\n`vrift wrap` start to the tool's exec: {to_exec:.1f} ms (starting the tool directly: {direct:.1f} ms; "
          f"wrapper cost {to_exec - direct:.1f} ms; target <= 30 ms)")
    for tool, *_, summary in rows:
        print(f"{tool}: {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
