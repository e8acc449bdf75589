"""`vrift stat`: the index entry of one path, from the hot tier or LMDB."""
from __future__ import annotations

import os
import time

import click

from ..errors import VriftError
from ..home import Home
from ..identity import Project
from .common import emit_json, json_option


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
    from ..vdir.readonly import open_readonly

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
    from ..identity import find_root

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
