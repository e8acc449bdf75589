"""Memory of one project index at 10^6 paths without a 10^6-file tree: N synthetic file entries
applied through ProjectIndex (LMDB, VDir) in batches of 4,096, then the index reopened.

    python benchmarks/bench_index_memory.py             # 1,000,000 entries
    python benchmarks/bench_index_memory.py 100000

Prints the VDir's bytes per entry and the process's VmRSS / VmHWM / RssAnon / RssFile after the
applies and after the reopen (VmHWM is the peak so far: the second includes the first phase).
State goes to a temporary directory, removed at the end.
"""
from __future__ import annotations

import os
import shutil
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


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    work = Path(tempfile.mkdtemp(prefix="vrift-mem-"))
    os.environ["VRIFT_HOME"], os.environ["VRIFT_SHM_DIR"] = str(work / "home"), str(work / "shm")
    try:
        (work / "shm").mkdir()
        (work / "root").mkdir()
        home, project = Home.from_env().ensure(), Project.at(work / "root")
        dev = os.stat(work / "root").st_dev
        index = ProjectIndex(home, project, durability="async").open()
        t0 = time.perf_counter()
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
        print(f"applied {n:,} entries in {time.perf_counter() - t0:.1f}s; "
              f"VDir {os.path.getsize(index.vdir_path) / len(index):.0f} B/entry")
        print(f"  after the applies: {memory()}")
        index.close()
        t0 = time.perf_counter()
        index = ProjectIndex(home, project, durability="async").open()
        print(f"reopened in {time.perf_counter() - t0:.2f}s, {len(index):,} entries")
        print(f"  after the reopen: {memory()}")
        index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
