"""Every CLI error is one line naming what and where, with a non-zero exit; never a traceback.

Found: `VRIFT_HOME` a file, or not creatable, gave 30-line Python tracebacks from `status`,
`ingest` and `cache stats`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

COMMANDS = [("status",), ("ingest", "{proj}"), ("cache", "stats"), ("gc",), ("cas", "verify")]


def _setups(tmp: Path) -> dict:
    (tmp / "a-file").write_text("x")
    return {
        "VRIFT_HOME is a file": ({"VRIFT_HOME": str(tmp / "a-file")}, str(tmp / "a-file")),
        "VRIFT_HOME under a file": ({"VRIFT_HOME": str(tmp / "a-file" / "h")}, str(tmp / "a-file")),
        "VRIFT_HOME not creatable": ({"VRIFT_HOME": "/proc/vrift-no/h"}, "/proc/vrift-no/h"),
        "VRIFT_SHM_DIR is a file": ({"VRIFT_SHM_DIR": str(tmp / "a-file")}, str(tmp / "a-file")),
        "VRIFT_SHM_DIR not creatable": ({"VRIFT_SHM_DIR": "/proc/vrift-no/shm"}, "/proc/vrift-no/shm"),
        "db is a file": ({"_db_file": "1"}, "db"),
    }


@pytest.mark.parametrize("setup", ["VRIFT_HOME is a file", "VRIFT_HOME under a file", "VRIFT_HOME not creatable",
                                   "VRIFT_SHM_DIR is a file", "VRIFT_SHM_DIR not creatable", "db is a file"])
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_one_line_naming_the_place(run_vrift, vrift_env, tmp_path, setup, command):
    env, where = _setups(tmp_path)[setup]
    env = dict(env)
    if env.pop("_db_file", None):
        home = Path(vrift_env["VRIFT_HOME"])
        (home / "db").write_text("not a directory")
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "a.c").write_text("int a;\n")
    args = [a.format(proj=proj) for a in command]
    r = run_vrift(*args, env=env)
    assert r.returncode != 0, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vrift: error:"), r.stderr
    assert where in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout


def test_doctor_fails_on_a_shm_dir_that_is_a_file(run_vrift, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    r = run_vrift("doctor", env={"VRIFT_SHM_DIR": str(f)})
    assert r.returncode != 0 and "is not a directory" in r.stdout + r.stderr
    assert "Traceback" not in r.stderr


def test_an_unforeseen_error_is_one_line_and_the_trace_only_with_vrift_debug(run_vrift, vrift_env, tmp_path):
    """A registry that is not JSON (or any bug): one line; VRIFT_DEBUG=1 shows the trace."""
    home = Path(vrift_env["VRIFT_HOME"])
    reg = home / "registry"
    reg.mkdir(parents=True)  # a directory where a file belongs: whatever fails, fails in one line
    os.chmod(reg, 0o000)
    r = run_vrift("status")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
