"""`vrift doctor`: the checks of commands/doctor.py as a table or JSON."""
from __future__ import annotations

import sys

import click

from ..home import Home
from .common import emit_json, json_option, render_table


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
