"""Real processes against one VDir: a writer publishing in a loop, readers that must never see
a torn entry, and readers that must keep finding every published path while the table grows."""
from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import textwrap

PID = "fedcba9876543210fedcba9876543210"
ROOT = "/srv/torn"
TORN_PATHS = 24
CHECKED_PER_READER = 600_000  # two readers: 1.2 million entries read and checked

# Rewrites every path in a loop, each entry built by the C helper from one counter, until told
# to stop; prints how many publishes it made.
TORN_WRITER = textwrap.dedent(r"""
    import ctypes, signal, sys
    from pathlib import Path
    from vrift.vdir import native
    from vrift.vdir.shm import VDirWriter
    from vrift.vdir.shm_format import unpack_entry

    path, n = Path(sys.argv[1]), int(sys.argv[2])
    paths = [b"src/dir%d/file_%d.c" % (i % 5, i) for i in range(n)]
    buf = ctypes.create_string_buffer(128)

    def entry(p, c):
        native.lib().vrift_test_fill(c, buf)
        return unpack_entry(buf.raw, p)

    stop = False
    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    w = VDirWriter.create(path, sys.argv[3], sys.argv[4], capacity_hint=n)
    w.put_many([entry(p, i) for i, p in enumerate(paths)])
    print("ready", flush=True)
    c, publishes = n, 0
    while not stop:
        batch = []
        for k in range(4):   # a publish rewrites four entries in place
            batch.append(entry(paths[c % n], c))
            c += 1
        w.put_many(batch, index_generation=c)
        publishes += 1
    print(publishes, flush=True)
    w.close(unlink=True)
""")

# Maps the file read-only and runs the C check loop until `hits` entries were read and checked
# (lookups that found the writer busy for too long return -1 and are counted apart).
TORN_READER = textwrap.dedent(r"""
    import ctypes, json, os, sys, time
    from vrift.vdir import native
    from vrift.vdir.shm import VDirReader

    path, n, want = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    VDirReader(path).close()   # validates the file
    paths = [b"src/dir%d/file_%d.c" % (i % 5, i) for i in range(n)]
    fd = os.open(path, os.O_RDONLY)
    m = native.Mapping(fd, os.fstat(fd).st_size, writable=False)
    blob = b"".join(paths)
    lens = (ctypes.c_uint32 * n)(*map(len, paths))
    stats = (ctypes.c_uint64 * 5)()
    last = (ctypes.c_uint64 * n)()
    deadline = time.monotonic() + 60
    # read until enough entries were checked *and* the writer visibly changed them meanwhile
    # (on a loaded machine the writer may get little CPU at first)
    while (stats[1] < want or stats[3] <= 100) and time.monotonic() < deadline:
        native.lib().vrift_torture_read(m.base, m.size, blob, lens, n, 2000, stats, last)
    print(json.dumps(dict(zip(["reads", "hits", "torn", "changes", "busy"], stats))), flush=True)
""")

# Publishes paths in batches from a tiny table, index_generation = how many are published.
GROW_WRITER = textwrap.dedent(r"""
    import sys, time
    from pathlib import Path
    from vrift.vdir.entry import Entry
    from vrift.vdir.shm import VDirWriter

    path, total, batch = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    w = VDirWriter.create(path, sys.argv[4], sys.argv[5])
    w.put(Entry(b"p/0", 0o100644, 1, 0, 1, 0, 0, 0, 0, 0, 0), index_generation=1)
    print("ready", flush=True)
    sys.stdin.readline()   # "go": every reader has the file mapped (a loaded machine starts them late)
    sizes = {w.size_bytes}
    n = 1
    while n < total:
        w.put_many([Entry(b"p/%d" % i, 0o100644, 1, i, 1, 0, 0, i, 0, i, i) for i in range(n, n + batch)],
                   index_generation=n + batch)
        n += batch
        sizes.add(w.size_bytes)
        time.sleep(0.004)
    print(len(sizes), flush=True)
    sys.stdin.read()   # keep the file until the readers are done
    w.close(unlink=True)
""")

# Until the writer is done (stop file), check every published path; one last full pass after.
GROW_READER = textwrap.dedent(r"""
    import json, os, sys
    from pathlib import Path
    from vrift.vdir.shm import VDirReader

    path, stop = sys.argv[1], Path(sys.argv[2])
    r = VDirReader(path)
    sizes = {r.size_bytes}   # the mapping before any growth: the writer waits for "attached"
    print("attached", flush=True)
    lookups = misses = passes = 0
    while True:
        final = stop.exists()
        published = r.index_generation
        sizes.add(r.size_bytes)   # the mapping the reader uses now
        for i in range(published):
            e = r.lookup(b"p/%d" % i)
            lookups += 1
            if e is None or e.ino != i:
                misses += 1
        passes += 1
        if final:
            break
    print(json.dumps({"lookups": lookups, "misses": misses, "passes": passes, "files": len(sizes),
                      "last": published}), flush=True)
""")


def spawn(script: str, *args, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=stdin, text=True)


def stop_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
        for stream in (p.stdout, p.stderr, p.stdin):
            if stream:
                stream.close()


def test_readers_never_see_a_torn_entry(home):
    vdir = home.vdir_path(PID)
    writer = spawn(TORN_WRITER, vdir, TORN_PATHS, ROOT, PID)
    procs = [writer]
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        readers = [spawn(TORN_READER, vdir, TORN_PATHS, CHECKED_PER_READER) for _ in range(2)]
        procs += readers
        results = []
        for r in readers:
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            results.append(json.loads(out))
        print("torn-read counters:", results)
        writer.send_signal(signal.SIGTERM)
        out, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
        publishes = int(out.split()[-1])
    finally:
        stop_all(procs)
    assert sum(r["hits"] for r in results) >= 1_000_000, results
    assert sum(r["torn"] for r in results) == 0, results
    for r in results:
        assert r["hits"] + r["busy"] == r["reads"], r    # no path ever went missing
        assert r["changes"] > 100, f"the writer barely ran during the reads: {r}"
    assert publishes > 100
    assert os.listdir(vdir.parent) == []


@pytest.mark.flaky(reruns=2)  # timing-dependent under load (seen failing once in a loaded full run,
# passing alone); the assertions are unchanged: see docs/testing.md
def test_readers_keep_every_path_while_the_table_grows(home, tmp_path):
    vdir = home.vdir_path(PID)
    stop = tmp_path / "writer-done"
    writer = spawn(GROW_WRITER, vdir, 6000, 60, ROOT, PID, stdin=subprocess.PIPE)
    procs = [writer]
    try:
        assert writer.stdout.readline().strip() == "ready", writer.stderr.read()
        readers = [spawn(GROW_READER, vdir, stop) for _ in range(2)]
        procs += readers
        for r in readers:
            assert r.stdout.readline().strip() == "attached", r.stderr.read()
        writer.stdin.write("go\n")
        writer.stdin.flush()
        distinct_sizes = int(writer.stdout.readline())
        stop.touch()
        results = []
        for r in readers:
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
            results.append(json.loads(out))
        writer.stdin.close()
        writer.wait(timeout=30)
        assert writer.returncode == 0, writer.stderr.read()
    finally:
        stop_all(procs)
    assert distinct_sizes >= 5, f"the table should have grown several times ({distinct_sizes})"
    for r in results:
        assert r["misses"] == 0, r
        assert r["last"] == 6001 and r["passes"] >= 2, r
        assert r["files"] >= 2, f"reader never followed a growth: {r}"
    assert not vdir.exists()
    assert os.listdir(vdir.parent) == []
