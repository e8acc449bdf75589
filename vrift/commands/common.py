"""Small pieces every command shares: finding the project, loading config, printing tables."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import click

from ..home import Home
from ..identity import Project, find_root
from ..registry import Registry

root_option = click.option("--root", type=click.Path(file_okay=False), default=None,
                           help="Project root (default: discovered from the current directory).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def resolve(root: str | None = None, start: str | os.PathLike | None = None, cli: dict | None = None,
            register: bool = False):
    """(home, project, config) for a command.  Only commands that make the project vrift's
    (ingest, starting its daemon) pass register=True: looking registers nothing."""
    from .. import config as config_mod  # YAML only when a config file exists

    home = Home.from_env().ensure()
    project = Project.at(find_root(start=start, explicit=root))
    cfg = config_mod.load(project.root, cli=cli or {}, home=home)
    if register:
        Registry(home).touch(project)
    return home, project, cfg


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def terminal_width() -> int:
    """Columns to fit: COLUMNS when set, else the terminal's; output to a pipe or a file
    is not cut (a very large width) unless COLUMNS asks for it."""
    import shutil

    if not os.environ.get("COLUMNS") and not sys.stdout.isatty():
        return 1 << 30
    return max(40, shutil.get_terminal_size((80, 24)).columns)


def shorten(text: str, width: int) -> str:
    """`text` cut to `width` characters, the cut marked with an ellipsis."""
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def render_table(headers: Sequence[str], rows: Sequence[Sequence], right: Sequence[int] = (),
                 fit: int | Sequence[int] | None = None, width: int | None = None) -> str:
    """A plain text table; columns in `right` are right-aligned (numbers).  The columns in
    `fit` (free text: paths, values, details) are shortened, the widest first, so that each
    line fits the terminal (cut text ends in "…"), as `ccache -s` does."""
    cells = [[str(h) for h in headers]] + [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if fit is not None:
        fits = [fit] if isinstance(fit, int) else list(fit)
        limit = terminal_width() if width is None else width
        floor = {i: max(len(cells[0][i]), 8) for i in fits}
        while sum(widths) + 2 * (len(widths) - 1) > limit:
            widest = max(fits, key=lambda i: widths[i] - floor[i])
            if widths[widest] <= floor[widest]:
                break
            widths[widest] -= 1
        for i in fits:
            for r in cells:
                r[i] = shorten(r[i], widths[i])

    def line(r):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
