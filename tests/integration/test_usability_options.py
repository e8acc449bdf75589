"""Options: an unknown option before the tool is an option error (exit 2), the tool's own
options pass through, `--json` failures answer in JSON."""
from __future__ import annotations

import json

from support.build import tool_env, vrift
from support.daemon import daemons, make_project  # noqa: F401


def test_unknown_wrap_option_is_an_error_not_a_command(tmp_path, daemons):
    proj = make_project(tmp_path)
    typo = vrift("wrap", "--expain", "ninja", cwd=proj.root)
    assert typo.returncode == 2 and "No such option '--expain'" in typo.stderr and "--explain" in typo.stderr
    assert "command not found" not in typo.stderr
    # the tool's options are the tool's: after its name nothing is parsed
    passed = vrift("wrap", "-q", "echo", "-j2", "--expain", "--json", cwd=proj.root, check=True)
    assert passed.stdout == "-j2 --expain --json\n" and passed.stderr == ""
    # after --, even a word that looks like an option is the command
    dashed = vrift("wrap", "-q", "--", "--expain", cwd=proj.root)
    assert dashed.returncode == 127 and "--expain: command not found" in dashed.stderr


def test_json_errors_are_json(tmp_path, home, run_vrift):
    (tmp_path / ".vrift.yaml").write_text("")
    exists = run_vrift("init", "--json", cwd=tmp_path)
    assert exists.returncode == 1
    doc = json.loads(exists.stdout)
    assert doc["kind"] == "error" and "already exists" in doc["error"] and doc["exit_code"] == 1
    usage = run_vrift("cache", "stats", "--json", "--bogus", cwd=tmp_path)
    assert usage.returncode == 2 and json.loads(usage.stdout)["kind"] == "usage"
    bad = run_vrift("cache", "show", "ab", "--json", cwd=tmp_path)
    assert bad.returncode == 1 and "at least 4 hex digits" in json.loads(bad.stdout)["error"]
    plain = run_vrift("init", cwd=tmp_path)  # without --json: the usual line, nothing on stdout
    assert plain.returncode == 1 and plain.stdout == "" and "already exists" in plain.stderr


def test_other_commands_reject_unknown_options(tmp_path, home, run_vrift):
    for args in (("status", "--jsn"), ("gc", "--delet"), ("cache", "clear", "--all")):
        done = run_vrift(*args, cwd=tmp_path, env=tool_env())
        assert done.returncode == 2 and "No such option" in done.stderr, args
