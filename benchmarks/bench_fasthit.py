"""Warm rebuilds with hits decided in the preload library (the action table) side by side with
the same hits decided by the daemon (VRIFT_CACHE_TABLE=0), ccache's warm rebuild and no cache,
on the generated project (benchmarks/gen_project.py), with make and ninja at -j1 and -j2; and
one hit measured alone against the exec of the compiler driver.

    python benchmarks/bench_fasthit.py                     # 200 units, 20 headers, 3 runs
    python benchmarks/bench_fasthit.py --units 200 --runs 5 --json out.json

Every build is from clean (`rm -rf build`), every warm build's program must print what the plain
build's prints.  Medians of --runs.  Machine load moves every number: compare within one run.
"""
from __future__ import annotations

import argparse
import json
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


def run(cmd, cwd, env) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def timed(cmd, cwd, env) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - t0


def clean(root: Path) -> None:
    shutil.rmtree(root / "build", ignore_errors=True)


def output(root: Path) -> str:
    return subprocess.run([str(root / "build/app")], capture_output=True, text=True, check=True).stdout


def table_records(shm: Path) -> int:
    for f in shm.glob("vrift-*/vrift_actions_*"):
        data = f.read_bytes()
        return int.from_bytes(data[28:32], "little") if len(data) >= 64 else 0
    return 0


def build_cmd(tool: str, jobs: int) -> list[str]:
    return [tool, f"-j{jobs}"] if tool == "ninja" else [tool, f"-j{jobs}", "-s"]


def median_warm(cmd, root, env, runs, expect) -> float:
    times = []
    for _ in range(runs):
        clean(root)
        times.append(timed(cmd, root, env))
        if output(root) != expect:
            raise SystemExit(f"{root}: the warm build's program differs from the plain build's")
    return statistics.median(times)


LOOP = """
n={n}; tot=0
for i in $(seq 1 $n); do
  s=${{EPOCHREALTIME/./}}; {cmd} >/dev/null; e=${{EPOCHREALTIME/./}}
  tot=$((tot + e - s))
done
echo $((tot / n))
"""


def per_command_us(cmd: str, root: Path, env: dict, n: int, wrapped: bool) -> int:
    """Microseconds per run of `cmd`, timed by a bash loop around it (bash's clock, no exec):
    under `vrift wrap -- bash` each run of cmd is an action of its own, looked up and replayed."""
    script = LOOP.format(n=n, cmd=cmd)
    argv = [*VRIFT, "wrap", "-q", "--", "bash", "-c", script] if wrapped else ["bash", "-c", script]
    return int(run(argv, root, env).stdout.split()[-1])


def one_hit(root: Path, venv: dict, slow: dict, n: int) -> dict:
    """One replayed compile alone (the output left in place: it is not an input) from the
    table and from the daemon, against the exec of the compiler driver alone."""
    obj = next((root / "build/obj").rglob("u*.o"))
    rel = obj.relative_to(root)
    src = Path("src") / rel.relative_to("build/obj").with_suffix(".c")
    cmd = f"cc -O0 -Iinclude -MMD -MF {rel}.d -c {src} -o {rel}"
    return {"table_hit_us": per_command_us(cmd, root, venv, n, True),
            "daemon_hit_us": per_command_us(cmd, root, slow, n, True),
            "driver_exec_us": per_command_us("cc -dumpversion", root, dict(os.environ), n, False)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--units", type=int, default=200)
    ap.add_argument("--headers", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tools", default="make,ninja")
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="vrbench-fast-"))
    rows = []
    try:
        home, shm = base / "home", base / "shm"
        home.mkdir()
        shm.mkdir()
        venv = dict(os.environ, VRIFT_HOME=str(home), VRIFT_SHM_DIR=str(shm))
        for var in ("VRIFT_PROJECT_ROOT", "VRIFT_ENABLED", "VRIFT_FALLBACK_MODE", "VRIFT_CACHE_TABLE"):
            venv.pop(var, None)
        plain_root, cc_root, vr_root = base / "plain", base / "ccache", base / "vrift"
        gen_project.generate(plain_root, args.units, args.headers)
        gen_project.generate(cc_root, args.units, args.headers, cc="ccache cc")
        gen_project.generate(vr_root, args.units, args.headers)
        (vr_root / ".vrift.yaml").write_text("")
        penv = dict(os.environ)
        cenv = dict(os.environ, CCACHE_DIR=str(base / "ccache-dir"))
        run(build_cmd("ninja", 2), plain_root, penv)
        expect = output(plain_root)
        run(build_cmd("ninja", 2), cc_root, cenv)  # ccache cold
        run([*VRIFT, "wrap", "-q", "--", *build_cmd("ninja", 2)], vr_root, venv)  # vrift cold: records
        edges = args.units + 2 + -(-args.units // 10)
        deadline = time.monotonic() + 30
        while table_records(shm) < args.units and time.monotonic() < deadline:
            time.sleep(0.1)
        print(f"{args.units} units, {args.headers} headers; action table: {table_records(shm)} records; "
              f"{edges} edges", flush=True)
        slow = dict(venv, VRIFT_CACHE_TABLE="0")
        for tool in args.tools.split(","):
            for jobs in (int(j) for j in args.jobs.split(",")):
                cmd = build_cmd(tool, jobs)
                r = {"tool": tool, "jobs": jobs}
                r["none"] = median_warm(cmd, plain_root, penv, args.runs, expect)
                r["ccache"] = median_warm(cmd, cc_root, cenv, args.runs, expect)
                r["vrift_daemon"] = median_warm([*VRIFT, "wrap", "-q", "--", *cmd], vr_root, slow, args.runs, expect)
                r["vrift_table"] = median_warm([*VRIFT, "wrap", "-q", "--", *cmd], vr_root, venv, args.runs, expect)
                rows.append(r)
                print(f"  {tool} -j{jobs}: none {r['none']:.2f} s, ccache warm {r['ccache']:.2f} s, "
                      f"vrift (daemon decides) {r['vrift_daemon']:.2f} s, vrift (table) {r['vrift_table']:.2f} s"
                      f" = {r['ccache'] / r['vrift_table']:.2f}x ccache, {r['none'] / r['vrift_table']:.1f}x none",
                      flush=True)
        run([*VRIFT, "wrap", "-q", "--", "ninja", "-j2"], vr_root, venv)
        single = one_hit(vr_root, venv, slow, 30)
        print(f"one compile hit alone: from the table {single['table_hit_us'] / 1000:.2f} ms, decided by the daemon "
              f"{single['daemon_hit_us'] / 1000:.2f} ms; exec of the compiler driver alone (`cc -dumpversion`, "
              f"no library) {single['driver_exec_us'] / 1000:.2f} ms", flush=True)
        stats = json.loads(run([*VRIFT, "cache", "stats", "--json"], vr_root, venv).stdout)
        print(f"cache stats: {stats.get('hits')} hits, {stats.get('fast_hits')} from the table", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "single": single}, indent=1))
    finally:
        subprocess.run([*VRIFT, "daemon", "stop"], cwd=base / "vrift", env=venv, capture_output=True)
        subprocess.run([*VRIFT, "coordinator", "stop"], cwd=base / "vrift", env=venv, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
