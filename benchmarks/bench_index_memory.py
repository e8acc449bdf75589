"""Memory of one project index at 10^6 paths without a 10^6-file tree: N synthetic file entries
applied through ProjectIndex (LMDB, VDir) in batches of 4,096, then the index reopened.

    python benchmarks/bench_index_memory.py             # 1,000,000 entries
    python benchmarks/bench_index_memory.py 100000

Each phase runs in a process of its own, so its VmHWM (the peak) is its own:

    apply     the N applies into an empty index (what a first ingest adds to its walk)
    reopen    open the index again, its VDir reused (a daemon's start), then entries()
              (the start-up reconcile's listing)
    rebuild   open it with the VDir file removed: rebuilt from LMDB (a start after a reboot)

Prints the VDir's bytes per entry and VmRSS / VmHWM / RssAnon / RssFile / RssShmem at the end of
each phase.  State goes to a temporary directory, removed at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vrift.home import Home  # noqa: E402
from vrift.identity import Project  # noqa: E402
from vrift.vdir.entry import Entry  # noqa: E402
from vrift.vdir.index import ProjectIndex  # noqa: E402

BATCH = 4096
FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def memory() -> str:
    with open("/proc/self/status") as f:
        rows = [line.split() for line in f if line.startswith(FIELDS)]
    return ", ".join(f"{name.rstrip(':')} {int(kb) / 1024:,.0f} MB" for name, kb, _ in rows)


def phase(name: str, n: int, work: Path) -> None:
    home, project = Home.from_env().ensure(), Project.at(work / "root")
    t0 = time.perf_counter()
    if name == "apply":
        dev = os.stat(work / "root").st_dev
        index = ProjectIndex(home, project, durability="async").open()
        batch = []
        for i in range(n):
            path = b"d%03d/s%03d/f%d.c" % (i // 10000, (i // 100) % 100, i)
            ns = 1_700_000_000_000_000_000 + i
            batch.append(Entry(path, 0o100644, dev, 10**7 + i, 1, 1000, 1000, 2000 + i % 1000, 8, ns, ns,
                               os.urandom(32)))
            if len(batch) == BATCH:
                index.apply(batch)
                batch = []
        index.apply(batch)
        what = f"VDir {os.path.getsize(index.vdir_path) / len(index):.0f} B/entry"
    else:
        if name == "rebuild":
            ProjectIndex(home, project).vdir_path.unlink()
        index = ProjectIndex(home, project, durability="async", unconfirmed=True).open()
        listed = sum(1 for _ in index.entries())
        what = f"{listed:,} entries listed, VDir {'rebuilt' if index.counters['shm_rebuilt'] else 'reused'}"
    print(f"{name:8s} {time.perf_counter() - t0:6.1f}s  {what}\n         {memory()}", flush=True)
    index.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        phase(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="vrift-mem-"))
    env = dict(os.environ, VRIFT_HOME=str(work / "home"), VRIFT_SHM_DIR=str(work / "shm"))
    try:
        (work / "shm").mkdir()
        (work / "root").mkdir()
        print(f"{n:,} synthetic entries; load {os.getloadavg()[0]:.1f}")
        for name in ("apply", "reopen", "rebuild"):
            subprocess.run([sys.executable, __file__, "--phase", name, str(n), str(work)], env=env, check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
