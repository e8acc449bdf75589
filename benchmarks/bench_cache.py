"""The action cache side by side with ccache and sccache: plain build, cold (empty cache,
recording) and warm after `ninja -t clean` (every step from the cache), on generated C projects
(benchmarks/gen_project.py).  Targets (docs/cache.md, docs/benchmarks.md): warm ≥ 20× faster
than no cache and ≥ 1.5× faster than ccache's warm rebuild; cold overhead ≤ 10%.

    python benchmarks/bench_cache.py                          # 200 units, and 1000 units x 5 headers
    python benchmarks/bench_cache.py --shape 200:20 --runs 3 --jobs 2 --json out.json

Each tool gets a private cache directory, removed before its cold run: VRIFT_HOME (the action
cache lives in it), CCACHE_DIR, SCCACHE_DIR.  The daemon (vrift) and server (sccache) are started
before the timed builds, so their start-up is not in the numbers.  The compiler is chosen through
gen_project's `cc` variable (`ccache cc`, `sccache cc`).  The link and the archives cannot be cached
by ccache or sccache (they only wrap the compiler), nor the generator step: they run in every
build of theirs, while vrift replays them.  Warm runs are repeated `--runs` times (median); cold
runs once each.  Every build's program is run and must print the same line as the plain build's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
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


def run(cmd: list[str], cwd: Path, env: dict, quiet: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    return proc


def timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = run(cmd, cwd, env)
    took = time.perf_counter() - t0
    summary = next((line for line in proc.stderr.splitlines() if line.startswith("vrift: ")), "")
    return took, summary


class Bench:
    def __init__(self, base: Path, units: int, headers: int, jobs: int, runs: int, generator: bool):
        self.base, self.units, self.headers, self.jobs, self.runs = base, units, headers, jobs, runs
        self.generator = generator
        self.rows: list[dict] = []
        self.expected = None
        self.plain_root: Path | None = None

    def project(self, name: str, cc: str) -> Path:
        root = self.base / name
        shutil.rmtree(root, ignore_errors=True)
        gen_project.generate(root, self.units, self.headers, cc=cc, generator=self.generator)
        return root

    def check(self, root: Path) -> None:
        out = subprocess.run([str(root / "build/app")], capture_output=True, text=True, check=True).stdout
        if self.expected is None:
            self.expected = out
        elif out != self.expected:
            raise SystemExit(f"{root}: the program prints {out!r}, the plain build's printed {self.expected!r}")

    def clean(self, root: Path, env: dict) -> None:
        run(["ninja", "-t", "clean"], root, env)

    def add(self, tool: str, phase: str, seconds: float, note: str = "") -> None:
        self.rows.append({"tool": tool, "phase": phase, "seconds": round(seconds, 3), "note": note})
        print(f"  {tool:<8} {phase:<6} {seconds:7.2f} s  {note}", flush=True)

    def warm(self, tool: str, cmd: list[str], root: Path, env: dict) -> None:
        times, note = [], ""
        for _ in range(self.runs):
            self.clean(root, env)
            took, note = timed(cmd, root, env)
            times.append(took)
            self.check(root)
        self.add(tool, "warm", statistics.median(times), note)

    def plain(self, before: str = "") -> float:
        """A plain build from clean; run before each cold build too, so a cold overhead compares
        builds made seconds apart (other load on the machine moves both)."""
        env = dict(os.environ)
        if self.plain_root is None:
            self.plain_root = self.project("plain", "cc")
        else:
            self.clean(self.plain_root, env)
        took, _ = timed(["ninja", f"-j{self.jobs}"], self.plain_root, env)
        self.check(self.plain_root)
        self.add("none", "cold", took, f"before {before}" if before else "")
        return took

    def cold(self, tool: str, cmd: list[str], root: Path, env: dict, phase: str = "cold") -> None:
        base = self.plain(f"{tool} {phase}")
        took, note = timed(cmd, root, env)
        self.check(root)
        self.add(tool, phase, took, note)
        self.rows[-1]["overhead"] = round(took / base - 1, 3)

    def vrift(self) -> None:
        home = self.base / "vrift-home"
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        shm = Path(tempfile.mkdtemp(prefix="vrbench-shm-"))
        env = dict(os.environ, VRIFT_HOME=str(home), VRIFT_SHM_DIR=str(shm))
        for var in ("VRIFT_PROJECT_ROOT", "VRIFT_LMDB_DURABILITY", "VRIFT_ENABLED", "VRIFT_FALLBACK_MODE"):
            env.pop(var, None)
        root = self.project("vrift", "cc")
        (root / ".vrift.yaml").write_text("")
        build = [*VRIFT, "wrap", "--", "ninja", f"-j{self.jobs}"]
        try:
            run([*VRIFT, "wrap", "-q", "--", "true"], root, env)  # daemon up, tree ingested
            self.cold("vrift", [*VRIFT, "wrap", "--no-cache", "--", "ninja", f"-j{self.jobs}"], root, env, "nocache")
            self.clean(root, env)
            self.cold("vrift", build, root, env)
            self.warm("vrift", build, root, env)
        finally:
            subprocess.run([*VRIFT, "daemon", "stop"], cwd=root, env=env, capture_output=True)
            subprocess.run([*VRIFT, "coordinator", "stop"], cwd=root, env=env, capture_output=True)
            shutil.rmtree(shm, ignore_errors=True)

    def ccache(self) -> None:
        if not shutil.which("ccache"):
            print("  ccache: not installed, skipped")
            return
        cache = self.base / "ccache-dir"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, CCACHE_DIR=str(cache))
        root = self.project("ccache", "ccache cc")
        self.cold("ccache", ["ninja", f"-j{self.jobs}"], root, env)
        self.warm("ccache", ["ninja", f"-j{self.jobs}"], root, env)
        stats = run(["ccache", "-s"], root, env).stdout
        self.rows[-1]["note"] = " ".join(line.strip() for line in stats.splitlines() if "Hits" in line
                                         or "Misses" in line)[:200]

    def sccache(self) -> None:
        if not shutil.which("sccache"):
            print("  sccache: not installed, skipped")
            return
        cache = self.base / "sccache-dir"
        shutil.rmtree(cache, ignore_errors=True)
        env = dict(os.environ, SCCACHE_DIR=str(cache), SCCACHE_SERVER_PORT="4299", SCCACHE_IDLE_TIMEOUT="0")
        root = self.project("sccache", "sccache cc")
        subprocess.run(["sccache", "--stop-server"], env=env, capture_output=True)
        run(["sccache", "--start-server"], root, env)
        try:
            self.cold("sccache", ["ninja", f"-j{self.jobs}"], root, env)
            self.warm("sccache", ["ninja", f"-j{self.jobs}"], root, env)
            stats = run(["sccache", "--show-stats"], root, env).stdout
            self.rows[-1]["note"] = " ".join(" ".join(line.split()) for line in stats.splitlines()
                                             if line.startswith(("Cache hits", "Cache misses")))[:200]
        finally:
            subprocess.run(["sccache", "--stop-server"], env=env, capture_output=True)

    def table(self) -> str:
        t = {(r["tool"], r["phase"]): r["seconds"] for r in self.rows}
        over = {(r["tool"], r["phase"]): r["overhead"] for r in self.rows if "overhead" in r}
        plain = [r["seconds"] for r in self.rows if r["tool"] == "none"]
        t[("none", "cold")] = none = statistics.median(plain) if plain else None
        cc_warm = t.get(("ccache", "warm"))
        lines = ["| build | wall (s) | vs no cache | vs ccache warm |", "|---|---:|---:|---:|"]
        if plain:
            names_plain = f"no cache (plain ninja; median of {len(plain)}, {min(plain):.2f}–{max(plain):.2f})"
        names = {("none", "cold"): names_plain if plain else "no cache", ("vrift", "nocache"): "vrift wrap --no-cache",
                 ("vrift", "cold"): "vrift cold (recording)", ("vrift", "warm"): "vrift warm after clean",
                 ("ccache", "cold"): "ccache cold", ("ccache", "warm"): "ccache warm after clean",
                 ("sccache", "cold"): "sccache cold", ("sccache", "warm"): "sccache warm after clean"}
        for key, label in names.items():
            if key not in t:
                continue
            s = t[key]
            if key in over:  # against the plain build made just before it
                vs_none = f"{over[key]:+.0%} (vs the plain build just before)"
            elif key[0] == "none":
                vs_none = "1"
            else:
                vs_none = f"{none / s:.1f}× faster" if none else ""
            vs_cc = f"{cc_warm / s:.2f}×" if cc_warm and key[1] == "warm" else ""
            lines.append(f"| {label} | {s:.2f} | {vs_none} | {vs_cc} |")
        return "\n".join(lines)


def machine() -> str:
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, shell=True).stdout.strip()
        except OSError:
            return "?"
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    fs = sh("df -T . | tail -1 | awk '{print $2}'")
    return (f"{os.cpu_count()} CPUs (nproc {sh('nproc')}, {cpu}), Linux {platform.release()}, {fs} file system, "
            f"{sh('cc --version | head -1')}, ninja {sh('ninja --version')}, {sh('ccache --version | head -1')}, "
            f"{sh('sccache --version')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", help="UNITS:HEADERS (repeatable; default 200:20 and 1000:5)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="warm runs per tool (median)")
    parser.add_argument("--no-generator", action="store_true", help="leave out the generated source")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="vrbench-"))
    base.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "shapes": []}
    print(results["machine"])
    try:
        for shape in args.shape or ["200:20", "1000:5"]:
            units, headers = (int(x) for x in shape.split(":"))
            print(f"\n{units} units, {headers} headers, -j{args.jobs}:", flush=True)
            b = Bench(base, units, headers, args.jobs, args.runs, not args.no_generator)
            b.plain()
            b.vrift()
            b.ccache()
            b.sccache()
            print(b.table())
            results["shapes"].append({"units": units, "headers": headers, "jobs": args.jobs, "rows": b.rows,
                                      "table": b.table()})
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
