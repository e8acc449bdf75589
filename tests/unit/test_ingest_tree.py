"""The checks of benchmarks/bench_big.py at a small size: a generated tree with duplicate content,
ingested through the real index (LMDB, WAL, VDir) in each durability mode."""
from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest

from vrift.cas import CAS
from vrift.ingest import Ingester
from vrift.identity import Project
from vrift.vdir.index import ProjectIndex
from vrift.vdir.shm import VDirReader

FILES = 1500


def make_tree(root: Path, files: int, dup_ratio: float = 0.2, seed: int = 7) -> dict[bytes, bytes]:
    """`files` files, 50 per directory, two levels; about `dup_ratio` of them share content.
    Some are larger than the CAS's small-file limit, so both hashing paths run."""
    rng = random.Random(seed)
    shared = [rng.randbytes(rng.randint(0, 3000)) for _ in range(max(1, files // 40))]
    out = {}
    for i in range(files):
        rel = f"d{i // 500:02d}/s{(i // 50) % 10:02d}/f{i}.c"
        if rng.random() < dup_ratio:
            data = rng.choice(shared)
        elif i % 100 == 0:
            data = rng.randbytes(200_000)
        else:
            data = rng.randbytes(rng.randint(1, 4000))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel.encode()] = data
    return out


@pytest.mark.parametrize("durability", ["sync", "wal", "async"])
def test_generated_tree_digests_reingest_and_an_edit(home, tmp_path, durability):
    root = tmp_path / "tree"
    root.mkdir()
    content = make_tree(root, FILES)
    assert len(set(content.values())) < len(content)  # duplicates there are
    project = Project.at(root)
    cas = CAS(home.cas_dir)
    index = ProjectIndex(home, project, durability=durability).open()
    try:
        ing = Ingester(project, index, cas, workers=2)
        first = ing.ingest()
        assert first.files == first.hashed == FILES and first.skipped == []
        for rel, data in content.items():
            e = index.get(rel)
            assert e is not None and e.digest == blake3.blake3(data).digest(), rel
            assert e.size == len(data) and e.ino == os.lstat(root / os.fsdecode(rel)).st_ino
        gen = index.generation

        again = ing.ingest()
        assert again.hashed == 0 and again.updated == 0 and again.reused == FILES
        assert index.generation == gen  # nothing applied

        edited = b"d01/s03/f650.c"
        (root / os.fsdecode(edited)).write_bytes(b"int edited;\n")
        (root / "d00" / "s00" / "f1.c").unlink()
        third = ing.ingest()
        assert third.hashed == 1 and third.deleted == 1
        assert index.get(edited).digest == blake3.blake3(b"int edited;\n").digest()
        assert index.get(b"d00/s00/f1.c") is None
        reader = VDirReader(index.vdir_path)
        try:
            assert reader.lookup(edited).digest == index.get(edited).digest
            assert reader.lookup(b"d01/s02/f600.c").digest == blake3.blake3(content[b"d01/s02/f600.c"]).digest()
        finally:
            reader.close()
    finally:
        index.close()
    # and what was acknowledged is what a reopened index holds
    index = ProjectIndex(home, project, durability=durability).open()
    try:
        assert index.get(edited).digest == blake3.blake3(b"int edited;\n").digest()
        assert len([e for e in index.entries() if any(e.digest)]) == FILES - 1
    finally:
        index.close()
