"""`vrift ingest`: index a project, through its daemon when one runs, else in this process."""
from __future__ import annotations

import sys

import click

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from .common import emit_json, human_bytes, json_option, resolve, root_option


def _running_daemon(home: Home, project: Project):
    """A client of the project's daemon when one is running (never starts one), else None."""
    from ..daemon.client import connect_project

    try:
        return connect_project(home, project, autostart=False)
    except (OSError, VriftError):
        return None


def run_local_ingest(home: Home, project: Project, cfg, progress: bool):
    from ..cas import CAS
    from ..hooks.manager import project_hooks
    from ..ingest import Ingester
    from ..vdir.index import ProjectIndex

    index = ProjectIndex(home, project, durability=cfg["durability"], sync_interval_ms=cfg["sync_interval_ms"],
                         sync_batch_size=cfg["sync_batch_size"], mapsize_gb=cfg["lmdb_mapsize_gb"]).open()
    try:
        cas = CAS(home.cas_dir, link_strategy=cfg["link_strategy"])
        report = Ingester(project, index, cas, ignore=cfg["ignore"], workers=cfg["hash_workers"],
                          index_filter=project_hooks(project, cfg["plugins"] or [])[0],
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
        from ..wrap.ingestmeter import IngestMeter

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
