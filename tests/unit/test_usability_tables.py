"""Every table fits 80 columns when COLUMNS=80 (long paths and values are cut with "…"),
headers are lower case like the rest, and a pipe without COLUMNS gets whole lines."""
from __future__ import annotations

import pytest

from vrift.commands.common import render_table


def test_render_table_fits_and_cuts_the_widest_free_column_first():
    rows = [("a" * 70, "b" * 30, "12")]
    text = render_table(("path", "value", "n"), rows, right=(2,), fit=(0, 1), width=80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[2].endswith("…  12") or "…" in lines[2]
    assert lines[0].split() == ["path", "value", "n"]
    whole = render_table(("path", "value", "n"), rows, fit=(0, 1), width=1 << 30)
    assert "a" * 70 in whole and "b" * 30 in whole


@pytest.mark.parametrize("args", [("config", "show"), ("config", "path"), ("status",), ("doctor",),
                                  ("cache", "stats"), ("cache", "show"), ("daemon", "status"), ("plugins",),
                                  ("gc",), ("cas", "stats")])
def test_commands_fit_80_columns(tmp_path, home, run_vrift, args):
    deep = tmp_path / ("a-rather-long-directory-name-" * 4) / "project"
    deep.mkdir(parents=True)
    (deep / ".vrift.yaml").write_text("ignore: ['" + "x" * 90 + "']\n")
    run_vrift("ingest", cwd=deep, check=True)
    done = run_vrift(*args, cwd=deep, env={"COLUMNS": "80"})
    assert done.returncode in (0, 1), done.stderr
    lines = done.stdout.splitlines()
    assert lines and max(map(len, lines)) <= 80, done.stdout
    headers = [line for line, under in zip(lines, lines[1:]) if set(under.replace(" ", "")) == {"-"}]
    for header in headers:
        assert header == header.lower(), header
    piped = run_vrift(*args, cwd=deep)  # no COLUMNS, not a terminal: nothing is cut
    if args == ("config", "show"):
        assert "x" * 90 in piped.stdout
