"""The wrap summary a newcomer can read: one line with what the cache did, the first build's
set-up line, and --summary-json for scripts."""
from __future__ import annotations

import json
import shutil

from support.build import parse_summary, require_tools, summary, tool_env, vrift
from support.daemon import daemons  # noqa: F401


def _project(base):
    root = base / "p"
    (root / "src").mkdir(parents=True)
    for i in range(3):
        (root / "src" / f"f{i}.txt").write_text(f"text {i}\n")
    (root / "Makefile").write_text(
        "all: " + " ".join(f"out/f{i}.txt" for i in range(3)) + "\n"
        + "".join(f"out/f{i}.txt: src/f{i}.txt\n\tmkdir -p out && tr a-z A-Z < $< > $@\n" for i in range(3)))
    return root


def test_first_build_line_then_cached_summary_and_json(tmp_path, daemons):
    require_tools("make", "tr")
    root = _project(tmp_path)
    env = tool_env()
    first = vrift("wrap", "make", cwd=root, env=env, check=True)
    setup = [line for line in first.stderr.splitlines() if line.startswith("vrift: first build")]
    assert setup == ["vrift: first build of this project: indexed it and started its daemon "
                     "(`vrift status` shows it, `vrift forget` undoes it)"], first.stderr
    s = parse_summary(first.stderr)
    assert s["committed"] == 3 and s["cache"] == (0, 3, 0) and s["lookups"] == 3 and s["index_files"] >= 4
    assert "cache: 3 missed, 0 uncacheable" in s["notes"]

    shutil.rmtree(root / "out")
    out = tmp_path / "summary.json"
    warm = vrift("wrap", "--summary-json", out, "make", cwd=root, env=env, check=True)
    assert "first build" not in warm.stderr
    line = summary(warm.stderr)
    assert line.startswith("vrift: 3/3 cached (") and " s saved), 0 files written, " in line, line
    assert "missed" not in line and "uncacheable" not in line  # nothing to report: no parenthesis
    doc = json.loads(out.read_text())
    assert doc["cache"]["hits"] == 3 and doc["cache"]["lookups"] == 3 and doc["exit_code"] == 0
    assert doc["cache"]["time_saved_s"] >= 0 and doc["index_files"] == s["index_files"]
    to_stderr = vrift("wrap", "-q", "--summary-json", "-", "make", cwd=root, env=env, check=True)
    lines = to_stderr.stderr.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["exit_code"] == 0
    # click's path (an option the fast parser leaves to it) writes the same
    clicked = vrift("wrap", "--summary-json=" + str(out), "--quiet", "make", cwd=root, env=env, check=True)
    assert clicked.stderr == "" and json.loads(out.read_text())["exit_code"] == 0
