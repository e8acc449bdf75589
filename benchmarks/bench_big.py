"""Big trees: first ingest, re-ingest, peak RSS and VDir size at 10^5 (and 10^6) files, each beside
`cp -r`, a bare `lstat` walk and `git add -A` of the same tree.

    python benchmarks/bench_big.py                     # 100,000 files, ~20% duplicate content
    python benchmarks/bench_big.py --million           # also 1,000,000 files (minutes, ~2 GB of disk)
    python benchmarks/bench_big.py --files 20000 --dir /tmp/big

Everything runs through the real CLI in a private VRIFT_HOME / VRIFT_SHM_DIR: `vrift ingest` without
a daemon (first, then again on the unchanged tree), then a project daemon started on the indexed
tree (its start-up rescan) and `vrift ingest` through it.  Peak RSS is the child's ru_maxrss (CLI)
and VmHWM (daemon).  Before the numbers, the run checks what it measured: every indexed file's
digest is BLAKE3 of its bytes, the re-ingest hashed and applied nothing, and an edited file is
picked up.  Targets (SPEC §12): first >= 20,000 files/s, re-ingest >= 200,000 files/s, RSS <= 200 MB
at 10^5 (<= 1 GB at 10^6), VDir <= 256 B per file.  The tree and the state are removed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_ingest import make_tree, plain_walk  # noqa: E402

VRIFT = [sys.executable, "-m", "vrift"]


def run(cmd: list[str], env: dict, cwd: Path | None = None) -> str:
    """The stdout of one command; exits on failure."""
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


def run_rss(cmd: list[str], env: dict, cwd: Path | None = None) -> tuple[float, int, str]:
    """Like run, with the child's peak RSS from wait4 (stdout to a file: no pipe to drain)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, cmd))} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        return took, usage.ru_maxrss * 1024, out.read().decode()


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def check(home_env: dict, tree: Path) -> None:
    """What the benchmark measured is right: digests, nothing re-applied, an edit seen."""
    os.environ.update({k: home_env[k] for k in ("VRIFT_HOME", "VRIFT_SHM_DIR")})
    import blake3

    from vrift.home import Home
    from vrift.identity import Project
    from vrift.vdir.readonly import open_readonly

    home, project = Home.from_env(), Project.at(tree)
    bad = files = 0
    with open_readonly(home, project) as view:
        for e in view.entries():
            if any(e.digest):
                files += 1
                data = (tree / os.fsdecode(e.path)).read_bytes()
                bad += blake3.blake3(data).digest() != e.digest
    if bad:
        raise SystemExit(f"check: {bad:,} of {files:,} indexed digests differ from BLAKE3 of the file")


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def rate(paths: int, seconds: float) -> str:
    return f"{paths / seconds:,.0f}/s" if seconds > 0 else "-"


def bench(files: int, work: Path, dup: float) -> list[tuple[str, str, str, str]]:
    tree = work / f"tree{files}"
    tree.mkdir()
    t_make, nbytes = time.perf_counter(), make_tree(tree, files, dup)
    t_make = time.perf_counter() - t_make
    subprocess.run(["sync"], check=False)
    env = dict(os.environ, VRIFT_HOME=str(work / "home"), VRIFT_SHM_DIR=str(work / "shm"))
    (work / "shm").mkdir(exist_ok=True)

    t0 = time.perf_counter()
    n_walk = plain_walk(tree)
    t_walk = time.perf_counter() - t0
    t_cp, rss_cp, _ = run_rss(["cp", "-r", str(tree), str(work / "copy")], env)
    shutil.rmtree(work / "copy")
    gitdir = work / "git"
    git = ["git", f"--git-dir={gitdir}", f"--work-tree={tree}"]
    run(git + ["init", "-q"], env)
    t_git, rss_git, _ = run_rss(git + ["add", "-A"], env)
    t_git2, rss_git2, _ = run_rss(git + ["add", "-A"], env)
    shutil.rmtree(gitdir)

    ingest = VRIFT + ["ingest", "--json", "-q", str(tree)]
    t_first, rss_first, out = run_rss(ingest, env)
    first = json.loads(out)
    t_again, rss_again, out = run_rss(ingest, env)
    again = json.loads(out)
    paths = first["files"] + first["dirs"] + first["symlinks"]
    if again["hashed"] or again["updated"]:
        raise SystemExit(f"check: the re-ingest of an unchanged tree hashed {again['hashed']} and applied "
                         f"{again['updated']} changes")
    check(env, tree)
    t_python, t_native = api_reingest(env, tree, native=False), api_reingest(env, tree, native=True)
    from vrift.home import Home
    from vrift.identity import Project
    from vrift.vdir.shm import VDirReader

    vdir_path = Home.from_env(env).vdir_path(Project.at(tree).id)
    vdir = os.path.getsize(vdir_path)

    # the daemon: its start-up rescan of the indexed tree, then an ingest through it
    t0 = time.perf_counter()
    out = run(VRIFT + ["daemon", "start", "--root", str(tree), "--json"], env)
    pid = json.loads(out)["project"]["pid"]
    run(VRIFT + ["sync", str(tree)], env)
    t_start = time.perf_counter() - t0
    out = run(VRIFT + ["ingest", "--json", "-q", str(tree)], env)
    via = json.loads(out)
    edited = tree / "d000" / "s000" / "f0.c"
    edited.write_bytes(b"edited\n")
    run(VRIFT + ["sync", str(tree)], env)  # the daemon's watcher sees it (or the ingest above did)
    reader = VDirReader(vdir_path)
    try:
        import blake3

        seen = reader.lookup(b"d000/s000/f0.c")
        if seen is None or seen.digest != blake3.blake3(b"edited\n").digest():
            raise SystemExit("check: an edited file was not picked up by the daemon")
    finally:
        reader.close()
    rss_daemon = vm_hwm(pid)
    run(VRIFT + ["daemon", "stop"], env)
    shutil.rmtree(work / "home")
    shutil.rmtree(tree)

    print(f"{files:,} files ({paths:,} paths), {nbytes / 2**20:,.0f} MiB, {dup:.0%} duplicate content, "
          f"made in {t_make:.0f}s; CPU count {os.cpu_count()}")
    return [
        ("first ingest (CLI)", rate(paths, first["seconds"]), f"{rate(paths, t_first)} wall, RSS {mb(rss_first)}",
         f"cp -r {rate(n_walk, t_cp)}; git add -A {rate(n_walk, t_git)}, {mb(rss_git)}"),
        ("re-ingest (CLI)", rate(paths, again["seconds"]), f"{rate(paths, t_again)} wall, RSS {mb(rss_again)}",
         f"lstat walk {rate(n_walk, t_walk)}; git add -A {rate(n_walk, t_git2)}"),
        ("re-ingest (API)", rate(paths, t_native), "walk and compare in C",
         f"the Python walk {rate(paths, t_python)}"),
        ("daemon start + sync", f"{t_start:.1f} s", f"RSS {mb(rss_daemon)}", f"ingest via it: {rate(paths, via['seconds'])}"),
        ("VDir", f"{vdir / paths:.0f} B/path", f"{vdir / 2**20:,.1f} MiB", "target <= 256 B"),
    ]


def api_reingest(env: dict, tree: Path, native: bool) -> float:
    """Seconds of a re-ingest in this process, with the C walk or the Python one (the same
    index and tree: the two side by side)."""
    from vrift.cas import CAS
    from vrift.home import Home
    from vrift.identity import Project
    from vrift.ingest import Ingester
    from vrift.vdir.index import ProjectIndex

    home = Home.from_env(env)
    index = ProjectIndex(home, Project.at(tree)).open()
    try:
        ing = Ingester(Project.at(tree), index, CAS(home.cas_dir))
        ing.native = native
        report = ing.ingest()
        if report.hashed or report.updated or report.walk != ("native" if native else "python"):
            raise SystemExit(f"check: an API re-ingest ({report.walk} walk) hashed {report.hashed} and applied "
                             f"{report.updated} changes")
        return report.seconds
    finally:
        index.close()


def table(rows: list[tuple[str, str, str, str]]) -> None:
    widths = (20, 13, 24, 21)
    heads = ("what", "vrift", "vrift: wall, RSS", "beside it")
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        cells = list(row)
        line = "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
        if len(line) > 80:  # the last column wraps under itself
            head = "  ".join(c.ljust(w) for c, w in zip(cells[:3], widths)) + "  "
            parts = [p.strip() for p in cells[3].split(";")]
            print(head + parts[0])
            for p in parts[1:]:
                print(" " * len(head) + p)
        else:
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--million", action="store_true", help="also run 1,000,000 files (not for CI)")
    ap.add_argument("--dup", type=float, default=0.2)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vrift-big-", dir=args.dir))
    try:
        for files in [args.files] + ([1_000_000] if args.million else []):
            table(bench(files, work, args.dup))
            print()
    finally:
        env = dict(os.environ, VRIFT_HOME=str(work / "home"), VRIFT_SHM_DIR=str(work / "shm"))
        if (work / "home").exists():
            subprocess.run(VRIFT + ["daemon", "stop"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
