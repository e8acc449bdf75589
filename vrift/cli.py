"""The `vrift` command line (click).  Subcommands live in vrift/commands/ and are imported
only when invoked, so `vrift --help` and every command stay quick to start."""
from __future__ import annotations

import importlib
import os
import sys

import click

from . import __version__
from .errors import VriftError

# name -> "module:attribute" of a click command or group
COMMANDS = {
    "init": "vrift.commands.config_cmd:init_cmd",
    "config": "vrift.commands.config_cmd:config_group",
    "ingest": "vrift.commands.ingest_cmd:ingest_cmd",
    "status": "vrift.commands.status_cmd:status_cmd",
    "stat": "vrift.commands.stat_cmd:stat_cmd",
    "doctor": "vrift.commands.doctor_cmd:doctor_cmd",
    "cas": "vrift.commands.cas_cmd:cas_group",
    "gc": "vrift.commands.cas_cmd:gc_cmd",
    "cache": "vrift.commands.cache_cmd:cache_group",
    "daemon": "vrift.commands.daemon_cmd:daemon_group",
    "sync": "vrift.commands.daemon_cmd:sync_cmd",
    "wrap": "vrift.commands.wrap_cmd:wrap_cmd",
    "hook": "vrift.commands.wrap_cmd:hook_cmd",
    "plugins": "vrift.commands.wrap_cmd:plugins_cmd",
    "forget": "vrift.commands.forget_cmd:forget_cmd",
}

HELP = {
    "init": "Write a commented .vrift.yaml in the project root.",
    "config": "Show the effective configuration.",
    "ingest": "Index a project into the VDir (sources hashed, not copied, by default).",
    "status": "CAS size, projects, dedup and daemons.",
    "stat": "Show the VDir entry of a path.",
    "doctor": "Check the installation and the environment.",
    "cas": "Inspect and verify the content-addressed store.",
    "gc": "Remove unreferenced blobs (dry run by default).",
    "cache": "Action cache: stats, show an entry, clear.",
    "daemon": "Start, stop and inspect the vrift daemons.",
    "sync": "Wait until the index reflects every change made on disk.",
    "wrap": "Run a build (ninja, make, any command) under vrift.",
    "hook": "Print the one-line Makefile opt-in.",
    "plugins": "List loaded plugins.",
    "forget": "Stop a project's daemon and remove vrift's state for it.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, HELP.get(name, "")) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vrift")
def cli():
    """vrift: build accelerator and content-addressed build cache for make and ninja."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # non-standalone click returns what ctx.exit(n) asked for instead of exiting
        code = cli.main(args=argv, prog_name="vrift", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        if _wants_json(argv):
            _json_error(e.format_message(), "usage" if isinstance(e, click.UsageError) else "error", e.exit_code)
        else:
            e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("vrift: aborted", err=True)
        return 130
    except VriftError as e:
        if _wants_json(argv):
            _json_error(str(e), "error", 1)
        else:
            click.echo(f"vrift: error: {e}", err=True)
        return 1
    except BrokenPipeError:  # `vrift status | head`
        return 141
    except Exception as e:  # a bug or an unforeseen fault: one line, the trace on demand
        if os.environ.get("VRIFT_DEBUG"):
            raise
        click.echo(f"vrift: error: {_one_line(e)} (set VRIFT_DEBUG=1 for the traceback)", err=True)
        return 1
    return code if isinstance(code, int) else 0


def _one_line(e: BaseException) -> str:
    """What went wrong and where, in one line."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        text = f"{os.fsdecode(where)}: {e.strerror}" if where else e.strerror
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    return " ".join(text.split())


def _wants_json(argv: list[str]) -> bool:
    """--json among vrift's own words (not after `--` or the tool of `vrift wrap`)."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in words and words[:1] != ["wrap"]


def _json_error(message: str, kind: str, code: int) -> None:
    """A --json command's failure, as JSON on stdout (where its answer would have been), and
    the usual line on stderr for a person watching."""
    import json

    click.echo(json.dumps({"error": message, "kind": kind, "exit_code": code}))
    click.echo(f"vrift: error: {message}", err=True)
