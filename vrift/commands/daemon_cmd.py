"""`vrift daemon start|stop|status` and `vrift sync`."""
from __future__ import annotations

import os
import time

import click

from ..project import Home, VriftError
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
        home, project, _cfg = resolve(root)
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
    click.echo("vrift daemons stopped")


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

    status = coordinator_status(Home.from_env()) or {"coordinator": None, "projects": []}
    if as_json:
        emit_json(status)
        return
    coord = status["coordinator"]
    click.echo(f"coordinator: {'pid ' + str(coord['pid']) if coord else 'not running'}")
    rows = [(p["root"], p.get("pid"), p.get("generation"), p.get("entries"), p.get("clients"), p.get("durability"))
            for p in status["projects"]]
    if rows:
        click.echo(render_table(("root", "pid", "generation", "entries", "clients", "durability"), rows,
                                right=(1, 2, 3, 4)))
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
    home, project, _cfg = resolve(root, start=start)
    t0 = time.perf_counter()
    with connect_project(home, project) as client:
        generation = client.sync(os.path.abspath(path) if path else None)
    took = time.perf_counter() - t0
    if as_json:
        emit_json({"root": str(project.root), "generation": generation, "seconds": round(took, 6)})
    else:
        click.echo(f"synced {project.root} at generation {generation} ({took * 1000:.1f} ms)")
