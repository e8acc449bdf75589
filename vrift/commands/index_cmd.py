"""`vrift ingest`, `vrift status`, `vrift stat`, `vrift doctor`."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from ..project import Home, Project, Registry, VriftError
from .common import emit_json, human_bytes, json_option, render_table, resolve, root_option


def _running_daemon(home: Home, project: Project):
    """A client of the project's daemon when one is running (never starts one), else None."""
    try:
        from ..daemon.client import connect_project
    except ImportError:
        return None
    try:
        return connect_project(home, project, autostart=False)
    except (OSError, VriftError):
        return None


def run_local_ingest(home: Home, project: Project, cfg, progress: bool):
    from ..cas import CAS
    from ..ingest import Ingester
    from ..vdir.index import ProjectIndex

    index = ProjectIndex(home, project, durability=cfg["durability"], sync_interval_ms=cfg["sync_interval_ms"],
                         sync_batch_size=cfg["sync_batch_size"], mapsize_gb=cfg["lmdb_mapsize_gb"]).open()
    try:
        cas = CAS(home.cas_dir, link_strategy=cfg["link_strategy"])
        from ..daemon.server import plugin_index_filter

        report = Ingester(project, index, cas, ignore=cfg["ignore"], workers=cfg["hash_workers"],
                          index_filter=plugin_index_filter(project, cfg),
                          store_blobs=cfg["ingest_blobs"] == "copy").ingest(progress=progress)
    finally:
        index.close()
    return report.to_json()


@click.command("ingest")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@root_option
@click.option("--all", "all_projects", is_flag=True,
              help="Ingest every project of the user config's `projects:` list.")
@click.option("--durability", type=click.Choice(["sync", "wal", "async"]), default=None,
              help="Override the durability mode for this run.")
@click.option("-q", "--quiet", is_flag=True, help="No progress meter (it is drawn only on a terminal).")
@json_option
def ingest_cmd(path, root, all_projects, durability, quiet, as_json):
    """Index the project at PATH (default: the current project) into the VDir.

    Unchanged files (same size, mtime, ctime, inode) keep their digest; the rest is hashed in
    parallel (and stored in the CAS with `ingest_blobs: copy`).  Goes through the project's daemon when one runs.  On a terminal a
    progress meter shows the paths done on stderr."""
    cli = {"durability": durability} if durability else {}
    meter = not (quiet or as_json)
    if not all_projects:
        result = _ingest_one(root, path, cli, meter)
        emit_json(result) if as_json else _show_ingest(result)
        return
    _home, _project, cfg = resolve(root, start=path, cli=cli, register=False)
    if not cfg.projects:
        raise VriftError("--all: the user config lists no `projects:` (see docs/configuration.md)")
    results = []
    for proj_root in cfg.projects:
        if not proj_root.is_dir():
            raise VriftError(f"projects: {proj_root} is not a directory (user config)")
        results.append(_ingest_one(str(proj_root), None, cli, meter))
        if not as_json:
            _show_ingest(results[-1])
    if as_json:
        emit_json(results)


def _ingest_one(root, path, cli: dict, meter: bool) -> dict:
    home, project, cfg = resolve(root, start=path, cli=cli, register=True)
    client = _running_daemon(home, project)
    progress = meter and sys.stderr.isatty()
    if client is not None:
        from ..adapters.ingestmeter import IngestMeter

        with client, IngestMeter(str(client.path), enabled=progress):
            result = client.ingest()
        result["via"] = "daemon"
    else:
        result = run_local_ingest(home, project, cfg, progress)
        result["via"] = "local"
    result["root"] = str(project.root)
    return result


def _show_ingest(result: dict) -> None:
    root = result["root"]
    paths = result["files"] + result["dirs"] + result["symlinks"]
    rate = f"{result['files_per_s']:,} paths/s" if result.get("files_per_s") else ""
    click.echo(f"ingested {root}: {paths:,} paths ({result['files']:,} files, {result['dirs']:,} dirs, "
               f"{result['symlinks']:,} symlinks) in {result['seconds']:.2f}s {rate}")
    click.echo(f"  hashed {result['hashed']:,} ({human_bytes(result['bytes_hashed'])}), reused {result['reused']:,}, "
               f"new blobs {result['new_blobs']:,}, updated {result['updated']:,}, removed {result['deleted']:,}")
    for item in result["skipped"][:20]:
        click.echo(f"  skipped {item['path']}: {item['reason']}", err=True)
    if len(result["skipped"]) > 20:
        click.echo(f"  … and {len(result['skipped']) - 20} more skipped", err=True)


def _project_usage(home: Home, registry: dict) -> tuple[list[dict], dict]:
    """Per-project file/blob counts and cross-project sharing, from each index (read-only)."""
    from ..vdir.live import open_readonly

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
    try:
        from ..daemon.client import coordinator_status
    except ImportError:
        return None
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


def lookup_entry(home: Home, project: Project, rel: bytes):
    """The entry of `rel`: from the published hot tier when its file is valid, else LMDB."""
    from ..vdir.shm import VDirCorrupt, VDirReader

    vdir = home.vdir_path(project.id)
    if vdir.exists():
        try:
            reader = VDirReader(vdir)
        except VDirCorrupt:
            reader = None
        if reader is not None:
            try:
                return reader.lookup(rel), "shm"
            except VDirCorrupt:  # a damaged entry: LMDB has the true one
                pass
            finally:
                reader.close()
    from ..vdir.live import open_readonly

    try:
        view = open_readonly(home, project)
    except VriftError:
        return None, "none"
    with view:
        return view.get(rel), "lmdb"


@click.command("stat")
@click.argument("path", type=click.Path())
@json_option
def stat_cmd(path, as_json):
    """Show the VDir entry of PATH: digest, size, mtime, flags."""
    home = Home.from_env()
    absolute = os.path.abspath(path)
    project_root = os.path.dirname(absolute) if not os.path.isdir(absolute) else absolute
    from ..project import find_root

    project = Project.at(find_root(start=project_root))
    rel = project.relpath(absolute)
    entry, source = lookup_entry(home, project, rel)
    if entry is None or entry.is_deleted:
        raise VriftError(f"{path}: not in the index of {project.root} (run `vrift ingest`)")
    data = entry.to_json()
    data["source"] = source
    if as_json:
        emit_json(data)
        return
    mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.mtime_ns // 1_000_000_000))
    rows = [["path", data["path"] or "."], ["digest", data["digest"] or "-"], ["size", f"{entry.size:,}"],
            ["mtime", f"{mtime}.{entry.mtime_ns % 1_000_000_000:09d}"], ["mode", oct(entry.mode)],
            ["inode", f"{entry.dev}:{entry.ino}"], ["flags", ",".join(data["flags"]) or "-"], ["source", source]]
    click.echo("\n".join(f"{k:<8} {v}" for k, v in rows))


@click.command("doctor")
@json_option
def doctor_cmd(as_json):
    """Check home and shared-memory permissions, LMDB health, native code, free space."""
    from .doctor import run_checks

    checks = run_checks(Home.from_env())
    worst = max((c["level"] for c in checks), default=0)
    if as_json:
        emit_json({"ok": worst < 2, "checks": checks})
    else:
        names = {0: "ok", 1: "warn", 2: "FAIL"}
        click.echo(render_table(["check", "status", "detail"],
                                [[c["name"], names[c["level"]], c["detail"]] for c in checks], fit=(0, 2)))
    if worst >= 2:
        sys.exit(1)
