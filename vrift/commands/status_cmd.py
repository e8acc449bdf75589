"""`vrift status`: the CAS, the action cache, every known project and the running daemons."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from ..registry import Registry
from .common import emit_json, human_bytes, json_option, render_table


def _project_usage(home: Home, registry: dict) -> tuple[list[dict], dict]:
    """Per-project file/blob counts and cross-project sharing, from each index (read-only)."""
    from ..vdir.readonly import open_readonly

    per_project: dict[str, dict[bytes, int]] = {}
    rows = []
    for pid, info in sorted(registry.items(), key=lambda kv: kv[1].get("root", "")):
        project = Project(root=Path(info["root"]), id=pid)
        blobs: dict[bytes, int] = {}
        files = logical = 0
        try:
            view = open_readonly(home, project)
        except (VriftError, OSError):
            view = None
        if view is not None:
            with view:
                for e in view.entries():
                    if any(e.digest):
                        files += 1
                        logical += e.size
                        blobs[e.digest] = e.size
        per_project[pid] = blobs
        rows.append({"root": info["root"], "id": pid, "indexed": view is not None, "files": files,
                     "logical_bytes": logical, "unique_blobs": len(blobs)})
    owners: dict[bytes, int] = {}
    for blobs in per_project.values():
        for d in blobs:
            owners[d] = owners.get(d, 0) + 1
    for row in rows:
        blobs = per_project[row["id"]]
        row["shared_blobs"] = sum(1 for d in blobs if owners[d] > 1)
        row["shared_bytes"] = sum(size for d, size in blobs.items() if owners[d] > 1)
        # within the project: identical files stored once
        row["bytes_saved"] = row["logical_bytes"] - sum(blobs.values())
    all_blobs = {d: s for blobs in per_project.values() for d, s in blobs.items()}
    totals = {
        "logical_bytes": sum(r["logical_bytes"] for r in rows),
        "referenced_bytes": sum(all_blobs.values()),
        "referenced_blobs": len(all_blobs),
    }
    totals["bytes_saved"] = totals["logical_bytes"] - totals["referenced_bytes"]
    return rows, totals


def _daemon_status(home: Home):
    from ..daemon.client import coordinator_status

    try:
        return coordinator_status(home)
    except (OSError, VriftError):
        return None


@click.command("status")
@json_option
def status_cmd(as_json):
    """CAS size, the action cache, every known project with its files and dedup, and running daemons."""
    from ..cas import CAS
    from .cache_cmd import _store, cache_stats, hits_line, size_line

    home = Home.from_env().ensure()
    blob_count, blob_logical, blob_bytes = CAS(home.cas_dir).usage()
    projects, totals = _project_usage(home, Registry(home).load())
    _, store = _store()
    if store is None:
        cache = cache_stats(home, None)
    else:
        with store:
            cache = cache_stats(home, store)
    daemons = _daemon_status(home)
    data = {"home": str(home.root), "cas": {"blobs": blob_count, "bytes": blob_bytes, "logical_bytes": blob_logical},
            "cache": cache, "dedup": totals, "projects": projects, "daemons": daemons}
    if as_json:
        emit_json(data)
        return
    click.echo(f"vrift home {home.root}")
    click.echo(f"CAS: {blob_count:,} blobs, {human_bytes(blob_bytes)} on disk")
    click.echo(f"  projects hold {human_bytes(totals['logical_bytes'])} of files stored as "
               f"{human_bytes(totals['referenced_bytes'])} (dedup saves {human_bytes(totals['bytes_saved'])})")
    click.echo(f"action cache: {cache['fingerprints']:,} entries, {size_line(cache)}")
    click.echo(f"  {hits_line(cache)}")
    if projects:
        click.echo()
        click.echo(render_table(
            ["project", "files", "content", "blobs", "shared", "saved"],
            [[p["root"], f"{p['files']:,}", human_bytes(p["logical_bytes"]), f"{p['unique_blobs']:,}",
              human_bytes(p["shared_bytes"]), human_bytes(p["bytes_saved"])]
             for p in projects],
            right=(1, 2, 3, 4, 5), fit=0))
    if daemons:
        click.echo()
        coord = daemons.get("coordinator") or {}
        click.echo(f"coordinator pid {coord.get('pid', '-')}")
        rows = [[d.get("root"), d.get("pid"), d.get("generation"), d.get("entries"), d.get("clients"),
                 d.get("durability")] for d in daemons.get("projects", [])]
        if rows:
            click.echo(render_table(["daemon root", "pid", "generation", "entries", "clients", "durability"], rows,
                                    right=(1, 2, 3, 4), fit=0))
