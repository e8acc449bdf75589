"""Read-only views of project indexes for commands that must not take a project's ownership
(status, stat, doctor, gc): LMDB read transactions plus the WAL records LMDB has not absorbed,
so a view is as new as what the owner acknowledged, whatever its durability mode."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from . import wal
from .entry import ZERO_DIGEST, Entry
from .lmdb_store import LmdbStore


class ReadOnlyView:
    def __init__(self, home: Home, project: Project):
        self.project = project
        self._store = LmdbStore(home.db_dir(project.id), readonly=True)
        meta = self._store.meta()
        self.generation = meta["generation"]
        self._overlay: dict[bytes, Entry] = {}
        records, _, _ = wal.read(home.wal_path(project.id))
        for generation, entry in records:
            if generation > meta["generation"]:
                self._overlay[entry.path] = entry
                self.generation = max(self.generation, generation)
        self._count = None

    def get(self, rel: bytes) -> Entry | None:
        e = self._overlay.get(rel)
        if e is None:
            e = self._store.get(rel)
        return None if e is None or e.is_deleted else e

    def entries(self) -> Iterator[Entry]:
        for e in self._store.entries():
            if e.path not in self._overlay:
                yield e
        for e in self._overlay.values():
            if not e.is_deleted:
                yield e

    def __len__(self) -> int:
        if self._count is None:
            self._count = sum(1 for _ in self.entries())
        return self._count

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> "ReadOnlyView":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_readonly(home: Home, project: Project) -> ReadOnlyView:
    if not (home.db_dir(project.id) / "data.mdb").exists():
        raise VriftError(f"{project.root}: not indexed yet (run `vrift ingest`)")
    return ReadOnlyView(home, project)


def indexed_projects(home: Home) -> list[Project]:
    """Every project with an index under this home (from db/*/metadata.json)."""
    out = []
    db = home.root / "db"
    try:
        names = sorted(p.name for p in db.iterdir())
    except FileNotFoundError:
        return out
    for name in names:
        try:
            desc = json.loads((db / name / "metadata.json").read_text())
            out.append(Project(root=Path(desc["project_root"]), id=desc["project_id"]))
        except (OSError, ValueError, KeyError):
            continue
    return out


def live_digests(home: Home) -> set[bytes]:
    """Digests referenced by any project index (what gc must keep)."""
    keep: set[bytes] = set()
    for project in indexed_projects(home):
        try:
            with open_readonly(home, project) as view:
                keep.update(e.digest for e in view.entries() if e.digest != ZERO_DIGEST)
        except VriftError as e:
            # a project index that cannot be read must stop gc, not lose its blobs
            raise VriftError(f"cannot read the index of {project.root} ({e}); gc refuses to guess") from e
    return keep
