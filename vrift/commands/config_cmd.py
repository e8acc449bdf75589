"""`vrift init` (write a commented .vrift.yaml) and `vrift config show|path`."""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import click

from .common import emit_json, json_option, render_table, root_option

SECTION_HELP = {
    "daemon": "Project daemons and the coordinator that supervises them.",
    "cache": "The build cache (action results keyed by tool, inputs and environment).",
}
_PLAIN = re.compile(r"[A-Za-z_./*][A-Za-z0-9_./*-]*\Z")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "none", "y", "n", "~"}


def yaml_value(value) -> str:
    """A value in YAML flow syntax, quoted only where YAML would read it differently."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_value(v) for v in value) + "]"
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and not text.startswith("*"):
        return text
    return json.dumps(text)


def _explain(key) -> str:
    extra = []
    if key.default_text:
        extra.append(f"default: {key.default_text}")
    if key.env:
        extra.append(f"env {key.env}")
    return key.help + (f"  [{'; '.join(extra)}]" if extra else "")


def template() -> str:
    """The text `vrift init` writes: every key, its default commented out, one line about it."""
    from ..config import KEYS

    lines = [
        "# vrift configuration for this project (docs/configuration.md).",
        "# Every setting is optional; the commented-out values are the built-in defaults.",
        "# Uncomment a line to change it.  Precedence: command-line flag > VRIFT_* environment >",
        "# this file > the user configuration ($VRIFT_HOME/config.yaml) > built-in default.",
        "# `vrift config show` prints the effective values and where each one came from.",
    ]
    section = None
    for name, key in KEYS.items():
        head, _, leaf = name.rpartition(".")
        if head and head != section:
            lines += ["", f"# {SECTION_HELP[head]}", f"# {head}:"]
        elif not head:
            lines.append("")
        section = head
        indent = "  " if head else ""
        lines.append(f"# {indent}{'# ' if head else ''}{_explain(key)}")
        lines.append(f"# {indent}{leaf}: {yaml_value(key.default)}")
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str, overwrite: bool) -> None:
    """Temp file + fsync + rename; without `overwrite`, link() so an existing file is never clobbered."""
    fd, tmp = tempfile.mkstemp(prefix=".vrift.yaml.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary, shareable project file, not mkstemp's 0600
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


@click.command("init")
@root_option
@click.option("--force", is_flag=True, help="Overwrite an existing .vrift.yaml.")
@json_option
def init_cmd(root, force, as_json):
    """Write a commented .vrift.yaml in the project root listing every setting with its default."""
    from ..config import PROJECT_FILE
    from ..errors import VriftError
    from ..identity import find_root

    project_root = find_root(explicit=root)
    path = project_root / PROJECT_FILE
    if path.exists() and not force:
        raise VriftError(f"{path}: already exists (use --force to overwrite it)")
    try:
        write_atomically(path, template(), overwrite=force)
    except FileExistsError:
        raise VriftError(f"{path}: already exists (use --force to overwrite it)") from None
    except OSError as e:
        raise VriftError(f"{path}: cannot write: {e.strerror}") from None
    if as_json:
        emit_json({"path": str(path)})
    else:
        click.echo(f"wrote {path}")


@click.group("config", invoke_without_command=True)
@click.pass_context
def config_group(ctx):
    """Show the effective configuration (same as `vrift config show`)."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(show_cmd)


@config_group.command("show")
@root_option
@json_option
def show_cmd(root=None, as_json=False):
    """Every configuration key, its effective value and where the value came from (a file and
    line, an environment variable, a command-line flag or the built-in default)."""
    from .common import resolve

    _home, _project, cfg = resolve(root)
    data = cfg.as_dict()
    if data.get("cache.remote"):  # passwords and tokens never reach a terminal or a log
        from ..storage.spec import mask

        data["cache.remote"] = [mask(url) for url in data["cache.remote"]]
    if as_json:
        emit_json({key: {"value": value, "source": cfg.source(key)} for key, value in data.items()})
        return
    rows = [(key, yaml_value(value), cfg.source(key)) for key, value in data.items()]
    click.echo(render_table(("key", "value", "source"), rows, fit=(1, 2)))


@config_group.command("path")
@root_option
@json_option
def path_cmd(root, as_json):
    """The configuration files vrift reads for this project, and whether they exist."""
    from ..config import PROJECT_FILE
    from ..home import Home
    from ..identity import find_root

    files = [("user", Home.from_env().user_config_path), ("project", find_root(explicit=root) / PROJECT_FILE)]
    if as_json:
        emit_json({what: {"path": str(p), "exists": p.exists()} for what, p in files})
        return
    click.echo(render_table(("file", "path", "exists"), [(w, p, "yes" if p.exists() else "no") for w, p in files],
                            fit=1))
