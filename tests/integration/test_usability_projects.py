"""Projects appear only on purpose: read-only commands register nothing, `vrift wrap` outside
any project runs plainly and says how to opt in, `vrift forget` removes a project's state."""
from __future__ import annotations

import json
import os
import sys

from support.build import parse_summary, tool_env, vrift
from support.daemon import daemon_pid, daemons, make_project  # noqa: F401
from vrift.daemon import process
from vrift.registry import Registry


def _registered(home) -> set[str]:
    return {p["root"] for p in Registry(home).load().values()}


def test_read_only_commands_register_nothing(tmp_path, home, run_vrift):
    proj = make_project(tmp_path)
    for args in (("config", "show"), ("config", "path"), ("status",), ("doctor",), ("plugins",),
                 ("cache", "stats"), ("daemon", "status")):
        run_vrift(*args, cwd=proj.root)
    assert _registered(home) == set() and not home.registry_path.exists()
    run_vrift("ingest", cwd=proj.root, check=True)
    assert _registered(home) == {str(proj.root)}


def test_wrap_outside_any_project_runs_plainly_and_says_how_to_opt_in(tmp_path, daemons):
    bare = tmp_path / "bare"
    bare.mkdir()
    done = vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"; echo ran > out.txt', cwd=bare, check=True)
    assert done.stdout.strip() == "[]" and (bare / "out.txt").read_text() == "ran\n"
    notes = parse_summary(done.stderr)["notes"]
    assert notes == f"not accelerated: no project here (run `vrift init` in {bare.resolve()} to make it one)"
    assert not daemons.registry_path.exists() and not list(daemons.run_dir.glob("p-*"))
    assert not (bare / ".vrift").exists()
    # vrift init opts in
    vrift("init", cwd=bare, check=True)
    done = vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=bare, check=True)
    assert done.stdout.strip() != "[]"
    # so does --root, or a project made on purpose (ingest) without a marker
    other = tmp_path / "other"
    other.mkdir()
    assert vrift("wrap", "--root", other, "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=other,
                 check=True).stdout.strip() != "[]"
    third = tmp_path / "third"
    third.mkdir()
    vrift("ingest", cwd=third, check=True)
    assert vrift("wrap", "--", "sh", "-c", 'echo "[$LD_PRELOAD]"', cwd=third, check=True).stdout.strip() != "[]"


def test_forget_stops_the_daemon_and_removes_the_state(tmp_path, daemons, run_vrift):
    proj = make_project(tmp_path)
    vrift("wrap", "--", sys.executable, "-c", "open('src/new.c', 'w').write('x')", cwd=proj.root, check=True)
    pid = daemon_pid(daemons, proj)
    assert pid and process.pid_alive(pid) and str(proj.root) in _registered(daemons)
    assert daemons.db_dir(proj.id).exists() and daemons.vdir_path(proj.id).exists()
    doc = json.loads(run_vrift("forget", "--json", cwd=proj.root / "src", check=True).stdout)
    assert doc["root"] == str(proj.root) and not process.pid_alive(pid)
    assert not daemons.db_dir(proj.id).exists() and not daemons.vdir_path(proj.id).exists()
    assert not daemons.wal_path(proj.id).exists() and not list(daemons.run_dir.glob(f"p-{proj.id[:16]}.*"))
    assert not (proj.root / ".vrift").exists() and (proj.root / ".vrift.yaml").exists()
    assert (proj.root / "src/new.c").read_text() == "x" and str(proj.root) not in _registered(daemons)


def test_forget_a_project_whose_directory_is_gone(tmp_path, home, run_vrift):
    proj = make_project(tmp_path)
    run_vrift("ingest", cwd=proj.root, check=True)
    os.rename(proj.root, tmp_path / "moved")
    assert "forgot" in run_vrift("forget", str(proj.root), check=True).stdout
    assert _registered(home) == set() and not home.db_dir(proj.id).exists()
    unknown = run_vrift("forget", str(tmp_path / "never"))
    assert unknown.returncode == 1 and "not a known project" in unknown.stderr
