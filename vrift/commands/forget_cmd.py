"""`vrift forget [PATH]`: stop a project's daemon and remove everything vrift keeps for it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import click

from ..errors import VriftError
from ..home import Home
from ..identity import Project, find_root
from ..registry import Registry
from .common import emit_json, json_option


@click.command("forget")
@click.argument("path", required=False)
@json_option
def forget_cmd(path, as_json):
    """Forget the project at PATH (default: the one around the current directory): stop its
    daemon, remove its index, VDir, logs and registry entry under VRIFT_HOME, and its .vrift/
    directory.  Its files and .vrift.yaml stay; the action cache and the CAS are shared and stay
    (`vrift gc` collects what only this project used).  PATH may be a directory that no longer
    exists, as `vrift status` lists it."""
    home = Home.from_env()
    project = _which(home, path)
    removed = _stop_daemon(home, project)
    removed += _remove_state(home, project)
    if (home.registry_path).exists():
        Registry(home).forget(project.id)
    doc = {"root": str(project.root), "id": project.id, "removed": [str(p) for p in removed]}
    if as_json:
        emit_json(doc)
        return
    click.echo(f"forgot {project.root}: removed {len(removed)} files and directories of vrift's")


def _which(home: Home, path: str | None) -> Project:
    if path is not None and not os.path.isdir(path):
        wanted = os.path.abspath(path)
        registry = Registry(home).load() if home.registry_path.exists() else {}
        for pid, info in registry.items():
            if info.get("root") == wanted:
                return Project(root=Path(wanted), id=pid)
        raise VriftError(f"{path}: not a directory and not a known project (see `vrift status`)")
    if path is not None:
        return Project.at(path)
    return Project.at(find_root())


def _stop_daemon(home: Home, project: Project) -> list[Path]:
    from ..daemon import process
    from ..daemon.client import stop_project_daemon

    pid = stop_project_daemon(home, project, 30)
    if pid and process.pid_alive(pid):
        raise VriftError(f"the daemon of {project.root} (pid {pid}) did not stop; try again")
    return []


def _remove_state(home: Home, project: Project) -> list[Path]:
    from ..daemon.paths import project_files

    files = project_files(home, project.id)
    candidates = [home.db_dir(project.id), home.wal_path(project.id), home.vdir_path(project.id),
                  *home.run_dir.glob(f"{files.name}.*"), home.run_dir / f"wrap-{project.id[:16]}.json",
                  project.state_dir]
    removed = []
    for p in candidates:
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            else:
                continue
        except FileNotFoundError:
            continue
        except OSError as e:
            raise VriftError(f"{p}: cannot remove: {e.strerror or e}") from None
        removed.append(p)
    return removed
