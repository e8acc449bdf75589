"""The action cache on real open-source C projects, side by side with ccache and a plain build.

    python benchmarks/bench_real.py zstd=/path/to/zstd lua=/path/to/lua libuv=/path/to/libuv
    python benchmarks/bench_real.py --runs 3 --jobs 2 --json out.json zstd=…

Each NAME=PATH names a checkout of one of the recipes below (fetched by hand; nothing is
vendored). Every contender builds a fresh copy of the checkout at the *same* path, so that
outputs can be compared byte for byte even where a build embeds its directory:

1. plain: build from clean (timed twice, median), save the outputs; edit a header; build
   again (incremental), save the outputs.
2. vrift: `vrift wrap --no-cache` build; clean; `vrift wrap` cold (recording); `--runs` warm
   rebuilds after a clean (each output compared with the plain build's); the same header edit,
   an incremental `vrift wrap` build, outputs compared with the plain incremental build's.
3. ccache: cold, warm after clean (`--runs`), the header edit.

Hits, misses and uncacheable actions come from `vrift cache stats --json` (daemon stopped
between phases, so its counters are folded in).  The table gives seconds and ratios.
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
from dataclasses import dataclass, field
from pathlib import Path

VRIFT = [sys.executable, "-m", "vrift"]


@dataclass
class Recipe:
    kind: str
    build: list[str]                       # run in the tree; {cc} and {j} substituted
    clean: list[str]
    outputs: list[str]                     # compared byte for byte
    edit: tuple[str, str, str]             # file, old text, new text
    configure: list[str] = field(default_factory=list)   # run plainly, once per copy; {cc} substituted
    cc_in_build: bool = True               # ccache enters through the build command's {cc}


RECIPES = {
    "zstd": Recipe(
        kind="recursive make",
        build=["make", "-j{j}", "CC={cc}", "lib-release", "zstd-release"],
        clean=["make", "clean"],
        outputs=["lib/libzstd.a", "programs/zstd"],
        edit=("lib/zstd.h", "#define ZSTD_VERSION_RELEASE  ", "#define ZSTD_VERSION_RELEASE  9 + "),
    ),
    "lua": Recipe(
        kind="plain make",
        build=["make", "-j{j}", "CC={cc}"],
        clean=["make", "clean"],
        outputs=["lua"],
        edit=("llimits.h", "#define llimits_h", "#define llimits_h\n/* edited */\n#define VRIFT_BENCH_EDIT 1"),
    ),
    "zlib": Recipe(
        kind="plain make (configure)",
        configure=["sh", "-c", "CC='{cc}' ./configure --static >/dev/null"],
        build=["make", "-j{j}", "libz.a", "example", "minigzip"],
        clean=["make", "clean"],
        outputs=["libz.a", "example", "minigzip"],
        edit=("zutil.h", "#define ZUTIL_H", "#define ZUTIL_H\n#define VRIFT_BENCH_EDIT 1"),
        cc_in_build=False,
    ),
    "libuv": Recipe(
        kind="CMake + Ninja",
        configure=["cmake", "-G", "Ninja", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DLIBUV_BUILD_TESTS=OFF",
                   "-DCMAKE_C_COMPILER_LAUNCHER={launcher}"],
        build=["ninja", "-C", "build", "-j{j}"],
        clean=["ninja", "-C", "build", "-t", "clean"],
        outputs=["build/libuv.a", "build/libuv.so"],
        edit=("include/uv/version.h", "#define UV_VERSION_PATCH ", "#define UV_VERSION_PATCH 90 + "),
        cc_in_build=False,
    ),
}


def run(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n"
                         f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return proc


def timed(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    run(cmd, cwd, env)
    return time.perf_counter() - t0


class Project:
    def __init__(self, name: str, src: Path, base: Path, jobs: int, runs: int):
        self.name, self.src, self.recipe = name, src, RECIPES[name]
        self.tree = base / name          # every contender builds here, one after another
        self.jobs, self.runs = jobs, runs
        self.rows: list[dict] = []
        self.plain_out: dict[str, bytes] = {}
        self.plain_edit_out: dict[str, bytes] = {}

    # -- helpers ----------------------------------------------------------------------
    def fresh(self, env: dict, cc: str = "cc", launcher: str = "") -> None:
        shutil.rmtree(self.tree, ignore_errors=True)
        shutil.copytree(self.src, self.tree, symlinks=True, ignore=shutil.ignore_patterns(".git"))
        if self.recipe.configure:
            cmd = [a.format(cc=cc, launcher=launcher) for a in self.recipe.configure]
            cmd = [a for a in cmd if a != "-DCMAKE_C_COMPILER_LAUNCHER="]
            run(cmd, self.tree, env)

    def build_cmd(self, cc: str = "cc") -> list[str]:
        return [a.format(cc=cc, j=self.jobs) for a in self.recipe.build]

    def outputs(self) -> dict[str, bytes]:
        return {o: (self.tree / o).read_bytes() for o in self.recipe.outputs}

    def same(self, want: dict[str, bytes], what: str) -> str:
        got = self.outputs()
        bad = [o for o in want if got.get(o) != want[o]]
        if bad:
            raise SystemExit(f"{self.name}: {what}: {', '.join(bad)} differ from the plain build's")
        return "identical"

    def edit(self) -> None:
        path, old, new = self.recipe.edit
        text = (self.tree / path).read_text()
        if old not in text:
            raise SystemExit(f"{self.name}: {path} has no {old!r} to edit")
        (self.tree / path).write_text(text.replace(old, new, 1))

    def add(self, tool: str, phase: str, seconds: float, note: str = "") -> None:
        self.rows.append({"tool": tool, "phase": phase, "seconds": round(seconds, 3), "note": note})
        print(f"  {self.name:<6} {tool:<7} {phase:<8} {seconds:7.2f} s  {note}", flush=True)

    # -- contenders -------------------------------------------------------------------
    def plain(self) -> None:
        env = dict(os.environ)
        self.fresh(env)
        times = [timed(self.build_cmd(), self.tree, env)]
        self.plain_out = self.outputs()
        run(self.recipe.clean, self.tree, env)
        times.append(timed(self.build_cmd(), self.tree, env))
        self.same(self.plain_out, "plain rebuild")
        self.add("plain", "cold", statistics.median(times), f"{min(times):.2f}-{max(times):.2f}")
        self.edit()
        self.add("plain", "edit", timed(self.build_cmd(), self.tree, env))
        self.plain_edit_out = self.outputs()

    def vrift(self, home: Path) -> None:
        shm = Path(tempfile.mkdtemp(prefix="vrbench-shm-"))
        env = dict(os.environ, VRIFT_HOME=str(home), VRIFT_SHM_DIR=str(shm))
        for var in ("VRIFT_PROJECT_ROOT", "VRIFT_LMDB_DURABILITY", "VRIFT_ENABLED", "VRIFT_FALLBACK_MODE"):
            env.pop(var, None)
        self.fresh(env)
        (self.tree / ".vrift.yaml").write_text("")
        wrap = [*VRIFT, "wrap", "--"]

        def stats() -> dict:
            """Counters with the daemon's folded in; the daemon is started again so that its
            start-up (and the index load) stays out of the next timed build."""
            run([*VRIFT, "daemon", "stop"], self.tree, env, check=False)
            out = json.loads(run([*VRIFT, "cache", "stats", "--json"], self.tree, env).stdout).get("counters", {})
            run([*VRIFT, "wrap", "-q", "--", "true"], self.tree, env)
            return out

        def delta(before: dict, after: dict) -> str:
            d = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "misses", "recorded")}
            unc = sum((after.get("uncacheable") or {}).values()) - sum((before.get("uncacheable") or {}).values())
            return f"{d['hits']} hits, {d['misses']} misses, {d['recorded']} recorded, {unc} uncacheable"

        try:
            run([*VRIFT, "wrap", "-q", "--", "true"], self.tree, env)  # daemon up, tree ingested
            self.add("vrift", "nocache", timed([*VRIFT, "wrap", "--no-cache", "--", *self.build_cmd()], self.tree, env),
                     self.same(self.plain_out, "--no-cache build"))
            run(self.recipe.clean, self.tree, env)
            s0 = stats()
            took = timed([*wrap, *self.build_cmd()], self.tree, env)
            s1 = stats()
            self.add("vrift", "cold", took, f"{self.same(self.plain_out, 'cold build')}; {delta(s0, s1)}")
            times = []
            for _ in range(self.runs):
                run(self.recipe.clean, self.tree, env)
                times.append(timed([*wrap, *self.build_cmd()], self.tree, env))
                self.same(self.plain_out, "warm build")
            s2 = stats()
            self.add("vrift", "warm", statistics.median(times), f"identical; {delta(s1, s2)} over {self.runs} runs")
            self.edit()
            took = timed([*wrap, *self.build_cmd()], self.tree, env)
            s3 = stats()
            self.add("vrift", "edit", took, f"{self.same(self.plain_edit_out, 'after the edit')}; {delta(s2, s3)}")
            reasons = {k: v - (s0.get("uncacheable") or {}).get(k, 0) for k, v in (s3.get("uncacheable") or {}).items()}
            self.rows[-1]["uncacheable"] = {k: v for k, v in reasons.items() if v}
        finally:
            run([*VRIFT, "daemon", "stop"], self.tree, env, check=False)
            run([*VRIFT, "coordinator", "stop"], self.tree, env, check=False)
            shutil.rmtree(shm, ignore_errors=True)

    def ccache(self, cache: Path) -> None:
        if not shutil.which("ccache"):
            print("  ccache: not installed, skipped")
            return
        env = dict(os.environ, CCACHE_DIR=str(cache))
        cc = "ccache cc" if self.recipe.cc_in_build else "cc"
        self.fresh(env, cc="ccache cc", launcher="ccache")
        self.add("ccache", "cold", timed(self.build_cmd(cc), self.tree, env), self.same(self.plain_out, "cold"))
        times = []
        for _ in range(self.runs):
            run(self.recipe.clean, self.tree, env)
            times.append(timed(self.build_cmd(cc), self.tree, env))
            self.same(self.plain_out, "warm")
        self.add("ccache", "warm", statistics.median(times), "identical")
        self.edit()
        self.add("ccache", "edit", timed(self.build_cmd(cc), self.tree, env))

    def table(self) -> str:
        t = {(r["tool"], r["phase"]): r["seconds"] for r in self.rows}
        plain, cc_warm = t.get(("plain", "cold")), t.get(("ccache", "warm"))
        lines = [f"{self.name} ({self.recipe.kind})",
                 f"{'build':<26}{'wall s':>8}{'vs plain':>10}{'vs ccache warm':>16}"]
        for (tool, phase), s in t.items():
            vs_plain = f"{plain / s:.2f}x" if plain else ""
            vs_cc = f"{cc_warm / s:.2f}x" if cc_warm and phase == "warm" else ""
            lines.append(f"{tool + ' ' + phase:<26}{s:>8.2f}{vs_plain:>10}{vs_cc:>16}")
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("projects", nargs="+", metavar="NAME=PATH", help=f"NAME one of {', '.join(RECIPES)}")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="warm runs per tool (median)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    base = args.dir or Path(tempfile.mkdtemp(prefix="vrbench-real-"))
    base.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for spec in args.projects:
            name, _, path = spec.partition("=")
            if name not in RECIPES or not Path(path).is_dir():
                parser.error(f"{spec}: expected NAME=PATH with NAME one of {', '.join(RECIPES)} and PATH a directory")
            p = Project(name, Path(path).resolve(), base / "trees", args.jobs, args.runs)
            p.plain()
            p.vrift(base / f"vrift-home-{name}")
            p.ccache(base / f"ccache-{name}")
            print(p.table(), flush=True)
            results.append({"project": name, "kind": p.recipe.kind, "rows": p.rows, "table": p.table()})
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
