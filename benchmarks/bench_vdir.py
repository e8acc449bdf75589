"""The VDir hot tier on its own: build cost, memory per file, lookup time next to stat().

    python benchmarks/bench_vdir.py                  # 100,000 files
    python benchmarks/bench_vdir.py --files 20000

Creates FILES real files in a source-like tree, builds a VDir of their lstat entries
(VDirWriter.create + one put_many, the way a daemon publishes an ingest), and reports:
bytes per indexed file (file size and pages really allocated), build time, and the time of one
lookup measured three ways — in C (vrift_lookup_loop: the cost the preload library pays), through
a raw ctypes call, and through VDirReader.lookup — next to the kernel's stat() of the same paths
(in C via benchmarks/stat_bench.c when gcc is present, and os.stat from Python).  Targets
(SPEC §12): ≤ 256 bytes per file; the lookup is what makes a ≤ 200 ns, ≥ 8× stat possible.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from vrift.vdir import native  # noqa: E402
from vrift.vdir.entry import Entry  # noqa: E402
from vrift.vdir.shm import VDirReader, VDirWriter  # noqa: E402

PID = "00112233445566778899aabbccddeeff"


def make_tree(root: Path, files: int) -> list[bytes]:
    """100 files per directory, three levels, names like a C project's."""
    rels = []
    for i in range(files):
        rel = f"src/mod{i // 1000:03d}/part{(i // 100) % 10}/file_{i:06d}.{'ch'[i % 2]}"
        p = root / rel
        if i % 100 == 0:
            p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i % 300))
        rels.append(rel.encode())
    return rels


def best_of(repeats: int, fn) -> float:
    """Median seconds of `repeats` runs of fn()."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def c_loop_ns(reader_map: native.Mapping, paths: list[bytes], rounds: int, expect_hits: bool) -> float:
    blob = b"".join(paths)
    lens = (ctypes.c_uint32 * len(paths))(*map(len, paths))
    lib = native.lib()
    hits = lib.vrift_lookup_loop(reader_map.base, reader_map.size, blob, lens, len(paths), 1)
    assert hits == (len(paths) if expect_hits else 0), hits
    secs = best_of(5, lambda: lib.vrift_lookup_loop(reader_map.base, reader_map.size, blob, lens, len(paths), rounds))
    return secs * 1e9 / (len(paths) * rounds)


def kernel_stat_c_ns(root: Path, paths: list[bytes], rounds: int, work: Path) -> float | None:
    if shutil.which("gcc") is None:
        return None
    binary = work / "stat_bench"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(HERE / "stat_bench.c")], check=True)
    listing = work / "paths.txt"
    listing.write_bytes(b"".join(os.fsencode(root) + b"/" + p + b"\n" for p in paths))
    out = subprocess.run([str(binary), str(listing), str(rounds)], capture_output=True, text=True, check=True).stdout
    return float(dict(item.split("=") for item in out.split())["median_ns"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20, help="passes over all paths in the C loops")
    ap.add_argument("--sample", type=int, default=20_000, help="paths timed from Python")
    args = ap.parse_args()
    n = args.files

    work = Path(tempfile.mkdtemp(prefix="vrift-bench-vdir-"))
    try:
        root = work / "tree"
        print(f"creating {n:,} files ...", flush=True)
        rels = make_tree(root, n)
        entries = [Entry.from_stat(r, os.lstat(root / os.fsdecode(r))) for r in rels]
        vdir = work / "shm" / f"vrift_vdir_{PID[:16]}"

        t = time.perf_counter()
        writer = VDirWriter.create(vdir, root, PID)
        writer.put_many(entries, index_generation=1)
        build = time.perf_counter() - t
        t = time.perf_counter()
        writer.put_many(entries, index_generation=2)
        republish = time.perf_counter() - t
        t = time.perf_counter()
        for e in entries[:2000]:
            writer.put(e)
        single = (time.perf_counter() - t) / 2000

        reader = VDirReader(vdir)
        rng = random.Random(1)
        shuffled = rels[:]
        rng.shuffle(shuffled)
        absent = [p + b".absent" for p in shuffled]
        m = reader._m()
        c_hit = c_loop_ns(m, shuffled, args.rounds, True)
        c_miss = c_loop_ns(m, absent, args.rounds, False)
        k_stat = kernel_stat_c_ns(root, shuffled, max(1, args.rounds // 4), work)

        sample = shuffled[:args.sample]
        abs_sample = [os.fsencode(root) + b"/" + p for p in sample]
        lib = native.lib()
        out = ctypes.create_string_buffer(128)
        per = len(sample)
        py_stat = best_of(3, lambda: [os.stat(p) for p in abs_sample]) / per
        py_lookup = best_of(3, lambda: [reader.lookup(p) for p in sample]) / per
        raw_find = best_of(3, lambda: [lib.vrift_find(m.base, m.size, p, len(p), out) for p in sample]) / per
        absent_sample = absent[:per]
        raw_miss = best_of(3, lambda: [lib.vrift_find(m.base, m.size, p, len(p), out) for p in absent_sample]) / per
        overhead = raw_miss - c_miss / 1e9  # same call, same arguments; the C work is the bloom miss
        assert all(reader.lookup(p).ino == os.lstat(a).st_ino for p, a in zip(sample[:1000], abs_sample))

        size, resident = writer.size_bytes, writer.resident_bytes
        print()
        print(f"VDir of {n:,} files: {size / n:.1f} bytes/file (file size {size / 2**20:.1f} MiB), "
              f"{resident / n:.1f} bytes/file resident on tmpfs  [target <= 256]")
        print(f"build (create + one put_many): {build:.3f} s = {n / build:,.0f} entries/s; "
              f"republish of all in place: {republish:.3f} s; single put: {single * 1e6:.1f} us")
        print()
        rows = [("C  vrift_lookup, hit (random order)", c_hit),
                ("C  vrift_lookup, miss (bloom)", c_miss),
                ("C  stat() of the real file", k_stat),
                ("Py os.stat()", py_stat * 1e9),
                ("Py ctypes vrift_find, miss", raw_miss * 1e9),
                ("Py ctypes vrift_find, hit", raw_find * 1e9),
                ("Py VDirReader.lookup -> Entry", py_lookup * 1e9)]
        base_c, base_py = k_stat, py_stat * 1e9
        print(f"{'operation':46} {'ns/op':>9} {'vs stat()':>10}")
        for name, ns in rows:
            if ns is None:
                print(f"{name:46} {'n/a (no gcc)':>9}")
                continue
            ref = base_c if name.startswith("C ") else base_py
            ratio = f"{ref / ns:.1f}x" if ref else "-"
            print(f"{name:46} {ns:9.0f} {ratio:>10}")
        print("\n(ratio = stat() time / this time: C rows against C stat(), Python rows against os.stat."
              f"\n ctypes call overhead = ctypes miss - C miss = {overhead * 1e9:.0f} ns;"
              f" ctypes hit minus that overhead = {(raw_find - overhead) * 1e9:.0f} ns."
              "\n VDirReader.lookup also checks by name whether the file was replaced: one stat() per call.)")
        reader.close()
        writer.close(unlink=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
