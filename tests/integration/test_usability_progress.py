"""Progress on the long first steps: the first `vrift ingest` of a tree and the first `vrift wrap`
(its daemon indexes the tree before the build starts) draw a meter on a terminal, never in a pipe,
and `-q` silences it."""
from __future__ import annotations

import re
import sys

from support.build import require_tools, run_in_a_terminal, tool_env, vrift
from support.daemon import daemons  # noqa: F401

# big enough that the first ingest outlasts the meter's first redraw (0.1 s) on a fast machine:
# a walk that ends sooner is never drawn
FILES = 20000
METER = re.compile(r"\r(ingest|indexing): [\d,]+  [\d,]+/s")


def _tree(base):
    root = base / "p"
    for d in range(100):
        sub = root / "src" / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(FILES // 100):
            (sub / f"f{f}.c").write_text(f"int f_{d}_{f};\n")
    (root / "Makefile").write_text("all:\n\t@echo built\n")
    (root / ".vrift.yaml").write_text("")
    return root


def _in_a_terminal(root, args, env) -> str:
    """`vrift ARGS` with stdout and stderr on a pseudo-terminal; all it wrote, raw (with \\r)."""
    text, status = run_in_a_terminal([sys.executable, "-m", "vrift", *args], root, env)
    assert status == 0, text
    return text


def test_first_ingest_shows_a_meter_on_a_terminal_only(tmp_path, daemons):
    root = _tree(tmp_path)
    env = tool_env()
    shown = _in_a_terminal(root, ["ingest"], env)
    meters = [m.group(0) for m in METER.finditer(shown)]
    assert meters and all(m.startswith("\ringest: ") for m in meters), shown
    # the meter counts up and clears its line before the report
    counts = [int(m.split(": ")[1].split()[0].replace(",", "")) for m in meters]
    assert counts == sorted(counts) and counts[-1] <= FILES + 40, counts
    assert re.search(r"\r +\r" + "ingested ", shown), shown[-400:]
    assert f"({FILES + 2:,} files, " in shown  # and the Makefile and .vrift.yaml

    # the second ingest of another tree, in a pipe: the report only
    other = _tree(tmp_path / "b")
    piped = vrift("ingest", cwd=other, env=env, check=True)
    assert "\r" not in piped.stderr + piped.stdout and "ingest:" not in piped.stderr, piped.stderr
    assert f"({FILES + 2:,} files, " in piped.stdout

    quiet = _in_a_terminal(_tree(tmp_path / "c"), ["ingest", "-q"], env)
    assert "\r" not in quiet.replace("\r\n", "\n") and f"({FILES + 2:,} files, " in quiet, quiet


def test_first_wrap_shows_the_daemons_indexing_on_a_terminal_only(tmp_path, daemons):
    require_tools("make")
    env = tool_env()
    shown = _in_a_terminal(_tree(tmp_path / "a"), ["wrap", "make"], env)
    meters = [m.group(0) for m in METER.finditer(shown)]
    assert meters and all(m.startswith("\rindexing: ") for m in meters), shown
    lines = re.split(r"\r\n|\n|\r", shown)
    assert "built" in lines and any(line.startswith("vrift: first build") for line in lines), shown
    # cleared before the build's own output
    assert shown.index("built") > shown.rindex("\rindexing: ")

    # the daemon runs and the index exists: no meter (and nothing polls)
    again = _in_a_terminal(tmp_path / "a" / "p", ["wrap", "make"], env)
    assert "\r" not in again.replace("\r\n", "\n"), again

    piped = vrift("wrap", "make", cwd=_tree(tmp_path / "b"), env=env, check=True)
    assert "\r" not in piped.stderr and "indexing" not in piped.stderr, piped.stderr
    assert "vrift: first build" in piped.stderr

    quiet = _in_a_terminal(_tree(tmp_path / "c"), ["wrap", "-q", "make"], env)
    assert "\r" not in quiet.replace("\r\n", "\n") and "vrift:" not in quiet, quiet
