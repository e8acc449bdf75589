"""Restart to served: the project daemon killed -9, then the next wrapped command.

    python benchmarks/bench_restart.py                      # 100,000 files
    python benchmarks/bench_restart.py --files 5000         # the size CI can afford
    python benchmarks/bench_restart.py --baseline main      # also the same run with the code of a git revision

A tree is generated (benchmarks/bench_ingest.py's generator) and indexed by a daemon; the daemon
is killed with SIGKILL, and at once `vrift wrap` runs a command that stats a sample of the tree
in rounds (a child process per round; the wrapper's counters file says after each round how many
stats memory answered).  Reported, from the kill:

- wrap start: when the wrapped command started (the wrapper connected and its SYNC returned);
- first served: the end of the first round in which memory answered any stat;
- all served: the end of the first round in which memory answered every stat of the sample;
- the daemon's own reconcile time (STATS "reconcile").

Target (issue: big repositories): kill -9 -> next wrapped command served from memory <= 1 s at
100,000 files.  `--baseline REV` runs the same measurement with the Python code of REV (exported
with git archive, the C libraries of this checkout copied in: their ABI only grew).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_ingest import make_tree  # noqa: E402

ROUNDS = textwrap.dedent(r"""
    import json, os, struct, subprocess, sys, time
    def served():
        with open(os.environ["VRIFT_COUNTERS"], "rb") as f:
            data = f.read(256)
        return struct.unpack_from("<Q", data, 16)[0]  # stat_served, the first counter
    t_start = time.time()
    paths = sys.argv[1]
    child = "import os,sys\nfor p in open(sys.argv[1]).read().split():\n    os.stat(p)\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    want = int(sys.argv[2])
    rounds = []
    before = served()
    for _ in range(int(sys.argv[3])):
        subprocess.run([sys.executable, "-S", "-c", child, paths], env=env, check=True)
        now = served()
        rounds.append([time.time(), now - before])
        before = now
        if rounds[-1][1] >= want:
            break
    print(json.dumps({"start": t_start, "rounds": rounds}))
""")


def run(cmd, env, cwd, check=True, **kw):
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def measure(tree: Path, env: dict, sample: int, max_rounds: int, label: str) -> dict:
    vr = [sys.executable, "-m", "vrift"]
    run(vr + ["sync"], env, tree, timeout=3600)  # a daemon has indexed the tree
    files = sorted(str(p.relative_to(tree)) for p in tree.rglob("*.c"))
    pick = random.Random(2).sample(files, min(sample, len(files)))
    listing = tree.parent / f"sample-{label}.txt"
    listing.write_text("\n".join(pick))
    home = Path(env["VRIFT_HOME"])
    pid_files = list((home / "run").glob("p-*.pid"))
    pid = int(pid_files[0].read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    r = run(vr + ["wrap", sys.executable, "-c", ROUNDS, str(listing), str(len(pick)), str(max_rounds)], env, tree,
            timeout=600)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    first = next((t for t, n in out["rounds"] if n > 0), None)
    full = next((t for t, n in out["rounds"] if n >= len(pick)), None)
    from vrift.daemon.client import ProjectClient

    reconcile = None
    for _ in range(600):  # the daemon's own account of its reconcile, once it is over
        with ProjectClient(next((home / "run").glob("p-*.sock")), 30_000) as c:
            rec = c.stats().get("reconcile")
        if not rec or not rec.get("running"):
            reconcile = rec and rec.get("seconds")
            break
        time.sleep(0.1)
    run(vr + ["daemon", "stop"], env, tree, check=False)
    return {"label": label, "wrap_start_s": round(out["start"] - t0, 3),
            "first_served_s": None if first is None else round(first - t0, 3),
            "all_served_s": None if full is None else round(full - t0, 3),
            "rounds": len(out["rounds"]), "reconcile_s": reconcile}


def baseline_tree(rev: str, where: Path) -> Path:
    """The Python code of `rev` with this checkout's compiled libraries."""
    dst = where / "baseline"
    dst.mkdir()
    # an exported copy, not a worktree: the repository itself is left as it is
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "vrift"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive.stdout, check=True)
    for so in (REPO / "vrift").glob("_*.so"):
        shutil.copy2(so, dst / "vrift" / so.name)
    return dst


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--sample", type=int, default=1000, help="files the wrapped command stats per round")
    ap.add_argument("--rounds", type=int, default=400)
    ap.add_argument("--baseline", help="a git revision to measure the same way")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="vrb", dir="/tmp"))
    results = []
    envs = []
    try:
        tree = base / "tree"
        tree.mkdir()
        make_tree(tree, args.files, 0.2)
        (tree / ".vrift.yaml").write_text("")
        runs = [("this checkout", REPO)]
        if args.baseline:
            runs.append((f"baseline {args.baseline}", baseline_tree(args.baseline, base)))
        for label, code in runs:
            home, shm = base / f"h{len(results)}", base / f"s{len(results)}"
            home.mkdir(mode=0o700)
            shm.mkdir(mode=0o700)
            env = dict(os.environ, VRIFT_HOME=str(home), VRIFT_SHM_DIR=str(shm), PYTHONPATH=str(code))
            env.pop("LD_PRELOAD", None)
            envs.append(env)
            results.append(measure(tree, env, args.sample, args.rounds, label))
            print(json.dumps(results[-1]), flush=True)
    finally:
        for env in envs:  # whatever happened, no daemon of ours stays
            run([sys.executable, "-m", "vrift", "daemon", "stop"], env, str(base), check=False)
        shutil.rmtree(base, ignore_errors=True)
    print(f"\n{args.files:,} files, {args.sample:,} stats a round; seconds from the kill -9:")
    print(f"{'code':<22} {'wrap start':>10} {'first served':>13} {'all served':>11} {'reconcile':>10}")
    for r in results:
        print(f"{r['label']:<22} {r['wrap_start_s']!s:>10} {r['first_served_s']!s:>13} {r['all_served_s']!s:>11} "
              f"{r['reconcile_s']!s:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
