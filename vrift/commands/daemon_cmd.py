"""`vrift daemon start|stop|status` and `vrift sync`."""
from __future__ import annotations

import os
import time

import click

from ..errors import VriftError
from ..home import Home
from .common import emit_json, json_option, render_table, resolve, root_option


@click.group("daemon")
def daemon_group():
    """Start, stop and inspect the coordinator and the project daemons."""


@daemon_group.command("start")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Also start the daemon of this project.")
@json_option
def start_cmd(root, as_json):
    """Start the coordinator (a no-op when it runs) and, with --root, a project daemon."""
    from ..daemon.client import ensure_coordinator, ensure_daemon

    home = Home.from_env().ensure()
    with ensure_coordinator(home) as coord:
        pid = coord.hello()["pid"]
    result = {"coordinator": {"pid": pid}}
    if root:
        home, project, _cfg = resolve(root, register=True)
        result["project"] = ensure_daemon(home, project)
    if as_json:
        emit_json(result)
        return
    click.echo(f"coordinator running (pid {pid})")
    if root:
        click.echo(f"project daemon for {project.root} running (pid {result['project']['pid']})")


@daemon_group.command("stop")
def stop_cmd():
    """Stop the coordinator and every project daemon (each flushes its index first)."""
    from ..daemon import process
    from ..daemon.client import CoordinatorClient, DaemonUnavailable, ProjectClient
    from ..daemon.paths import coordinator_files

    home = Home.from_env()
    files = coordinator_files(home)
    pids = [process.read_pid(files.pid_file)] + [process.read_pid(p) for p in home.run_dir.glob("p-*.pid")]
    for old in home.run_dir.glob("p-*.uploads.json"):  # reports of earlier stops
        old.unlink(missing_ok=True)
    try:
        with CoordinatorClient(files.socket, 60_000) as c:
            c.shutdown(flags=1)
    except DaemonUnavailable:
        pass
    for pid_file in home.run_dir.glob("p-*.pid"):  # daemons the coordinator did not know
        try:
            with ProjectClient(pid_file.with_suffix(".sock"), 60_000) as c:
                c.shutdown()
        except VriftError:
            pass
    deadline = time.monotonic() + 60
    waiting = [p for p in pids if process.pid_alive(p)]
    while waiting and time.monotonic() < deadline:
        time.sleep(0.05)
        waiting = [p for p in waiting if process.pid_alive(p)]
    _report_uploads(home)
    if waiting:
        raise VriftError(f"daemons still running after 60s: pids {', '.join(map(str, waiting))}")
    removed = remove_leftovers(home)
    click.echo("vrift daemons stopped" + (f"; removed {removed} VDir and counter files" if removed else ""))


def remove_leftovers(home: Home) -> int:
    """With every daemon stopped: the shared-memory files they and the wrappers owned (the
    VDirs of this home's projects, counter files of wrappers that died) and the idle and
    configuration notes in run/."""
    import re

    from ..daemon import process

    ids = {p.name[2:18] for p in home.run_dir.glob("p-*.*")}
    try:
        from ..registry import Registry

        ids |= {pid[:16] for pid in Registry(home).load()}
    except VriftError:
        pass
    removed = 0
    for path in home.shm_dir.glob("vrift_*"):
        m = re.fullmatch(r"vrift_vdir_([0-9a-f]{16})(\..*)?|vrift_counters_(\d+)", path.name)
        if m is None or (m[1] and m[1] not in ids) or (m[3] and process.pid_alive(int(m[3]))):
            continue
        try:
            path.unlink()
            removed += 1
        except OSError:
            pass
    for path in (*home.run_dir.glob("p-*.idle"), *home.run_dir.glob("p-*.config")):
        try:
            path.unlink()
        except OSError:
            pass
    return removed


@daemon_group.command("restart")
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
@json_option
def restart_cmd(path, as_json):
    """Restart the daemon of the project at PATH (default: around the current directory), so
    that it reads its configuration again; the coordinator and other projects are left alone."""
    from ..daemon.client import ensure_daemon, stop_project_daemon

    home, project, _cfg = resolve(path, register=True)
    old = stop_project_daemon(home, project, 60)
    started = ensure_daemon(home, project)
    if as_json:
        emit_json({"root": str(project.root), "old_pid": old, "pid": started["pid"]})
    else:
        click.echo(f"restarted the daemon of {project.root} (pid {started['pid']})")


def _report_uploads(home: Home) -> None:
    """What each stopping daemon did with its pending remote uploads (written at its shutdown)."""
    import json

    for path in sorted(home.run_dir.glob("p-*.uploads.json")):
        try:
            r = json.loads(path.read_text())
            path.unlink()
        except (OSError, ValueError):
            continue
        if r.get("uploaded") or r.get("failed") or r.get("pending"):
            failed = f", {r['failed']} failed" if r.get("failed") else ""
            dropped = f", {r['pending']} not uploaded (dropped)" if r.get("pending") else ""
            click.echo(f"{r.get('project')}: {r.get('uploaded', 0)} pending remote uploads done in "
                       f"{r.get('waited_s', 0):.1f}s{failed}{dropped}")


@daemon_group.command("status")
@json_option
def status_cmd(as_json):
    """The coordinator and each project daemon: pid, generation, entries, clients."""
    from ..daemon.client import coordinator_status

    from ..daemon import configrecord

    home = Home.from_env()
    status = coordinator_status(home) or {"coordinator": None, "projects": []}
    from ..identity import project_id

    for p in status["projects"]:
        pid = p.get("project_id") or project_id(p["root"])
        recorded = configrecord.daemon_config(configrecord.daemon_config_path(str(home.run_dir), pid))
        p["settings"] = (recorded or {}).get("settings")
        p["config_changed"] = configrecord.daemon_config_stale(str(home.run_dir), pid, p["root"], str(home.root))
    if as_json:
        emit_json(status)
        return
    coord = status["coordinator"]
    click.echo(f"coordinator: {'pid ' + str(coord['pid']) if coord else 'not running'}")
    rows = [(p["root"], p.get("pid"), p.get("generation"), p.get("entries"), p.get("clients"), p.get("durability"))
            for p in status["projects"]]
    if rows:
        click.echo(render_table(("root", "pid", "generation", "entries", "clients", "durability"), rows,
                                right=(1, 2, 3, 4), fit=0))
        for p in status["projects"]:
            settings = p.get("settings") or {}
            if settings:
                import textwrap

                from .common import terminal_width

                click.echo(f"\n{p['root']}: running with")
                click.echo(textwrap.fill(", ".join(f"{k}={_show(v)}" for k, v in settings.items()),
                                         width=min(terminal_width(), 100), initial_indent="  ",
                                         subsequent_indent="  ", break_long_words=False))
            if p.get("config_changed"):
                click.echo("  its configuration changed since it started: the next `vrift wrap` restarts it")
    else:
        click.echo("no project daemon running")


@click.command("sync")
@click.argument("path", required=False, type=click.Path(exists=True))
@root_option
@json_option
def sync_cmd(path, root, as_json):
    """Wait until the index reflects every change made on disk before this command
    (starts the project's daemon when needed)."""
    from ..daemon.client import connect_project

    start = path if path is None or os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    home, project, _cfg = resolve(root, start=start, register=True)
    t0 = time.perf_counter()
    with connect_project(home, project) as client:
        generation = client.sync(os.path.abspath(path) if path else None)
    took = time.perf_counter() - t0
    if as_json:
        emit_json({"root": str(project.root), "generation": generation, "seconds": round(took, 6)})
    else:
        click.echo(f"synced {project.root} at generation {generation} ({took * 1000:.1f} ms)")


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)
