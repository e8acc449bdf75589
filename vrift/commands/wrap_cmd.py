"""`vrift wrap`, `vrift hook make`, `vrift plugins`.

`vrift wrap` normally never gets here: vrift/__main__.py hands it to
vrift.wrap.fastwrap before click is imported.  This click command serves `--help` and
command lines the fast parser leaves to click, and runs the same code.
"""
from __future__ import annotations

import os

import click

from .common import emit_json, json_option, render_table, root_option


# vrift's options come before the tool's name; everything from the tool on is the tool's
# (allow_interspersed_args=False), and an unknown option before it is an error, not a tool
@click.command("wrap", context_settings={"allow_interspersed_args": False})
@click.option("-q", "--quiet", is_flag=True, help="No summary line on stderr.")
@root_option
@click.option("--adapter", default=None, help="Adapter to use (default: chosen by the tool's name).")
@click.option("--no-cache", is_flag=True, help="Neither replay nor record actions (the action cache is off).")
@click.option("--explain", is_flag=True, help="Say for each cache miss which input changed (also VRIFT_DEBUG=cache).")
@click.option("--summary-json", "summary_json", metavar="FILE", default=None,
              help="Also write the summary as one JSON object to FILE (-: stderr), for scripts.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def wrap_cmd(quiet, root, adapter, no_cache, explain, summary_json, command):
    """Run COMMAND (ninja, make, any command tree) under vrift.

    \b
      vrift wrap ninja -C build
      vrift wrap make -j8
      vrift wrap -- ./build.sh --all

    The index is synced first, then COMMAND runs with the preload library; its exit status,
    stdout and stderr are passed through unchanged.  A one-line summary follows on stderr
    (with the action cache's hits, misses and uncacheable actions).
    If vrift is disabled, missing or broken, COMMAND still runs on the real filesystem."""
    from ..wrap.fastwrap import WrapOptions, wrap

    try:
        code = wrap(WrapOptions(list(command), quiet=quiet, root=root, adapter=adapter, no_cache=no_cache,
                                explain=explain, summary_json=summary_json))
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)  # the tool's status, whatever click does with return values


@click.command("hook")
@click.argument("tool", type=click.Choice(["make"]))
@click.option("--emit", is_flag=True,
              help="Sync the index, write the makefile fragment and print its path (what the line runs).")
@root_option
def hook_cmd(tool, emit, root):
    """Print the one-line opt-in for a Makefile (TOOL: make).

    Put the printed line near the top of the Makefile: every recipe then runs under the
    preload library, without wrapping make itself."""
    from ..wrap.adapters.make.hook import HOOK_LINE
    from ..wrap.adapters.make.hook import emit as emit_fragment

    if not emit:
        click.echo(HOOK_LINE)
        return
    path, reason = emit_fragment(os.getcwd(), os.environ, root)
    if path is None:
        click.echo(f"vrift: recipes run without vrift ({reason})", err=True)
        return
    click.echo(path)


@click.command("plugins")
@root_option
@json_option
def plugins_cmd(root, as_json):
    """List the loaded plugins (entry points of group "vrift" and the configured modules),
    the hooks each implements, and the plugins that failed to load (exit status 1 then)."""
    from ..hooks.manager import PluginFailure, load
    from ..errors import VriftError

    manager = load(report=None)
    try:
        from .common import resolve

        _home, _project, cfg = resolve(root)
        configured = list(cfg["plugins"] or [])
    except Exception as e:  # noqa: BLE001 - list what loaded even when the configuration cannot be read
        configured = []
        reason = str(e) if isinstance(e, VriftError) else f"{type(e).__name__}: {e}"
        manager.failures.append(PluginFailure("(configuration)", "config", "load", reason))
    manager.load_modules(configured)
    described = manager.describe()
    if as_json:
        emit_json(described)
        raise SystemExit(1 if manager.failures else 0)
    rows = [(p["name"], p["source"], p["target"], ", ".join(h.removeprefix("vrift_") for h in p["hooks"]))
            for p in described["plugins"]]
    click.echo(render_table(("plugin", "source", "module", "hooks"), rows, fit=(2, 3)) if rows else "no plugins loaded")
    for failure in manager.failures:
        click.echo(f"failed: {failure.line()}")
    raise SystemExit(1 if manager.failures else 0)
