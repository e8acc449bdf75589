"""inotify at scale: a tree with more directories than the daemon may watch stays correct.

The user's fs.inotify.max_user_watches is shared by every process of the user (and a sysctl a
test must not change); `daemon.max_watches` caps the watches one daemon takes, so the limit is
really reached here with a real tree.  Directories beyond it are unwatched: their entries stay
DIRTY (answered by the kernel), a real edit behind vrift's back there is seen by a wrapped
process at once, the daemon says so once in its log, and `vrift doctor` names the fix."""
from __future__ import annotations

import json
import subprocess
import sys

from support.build import tool_env, vrift
from support.daemon import daemons, make_project  # noqa: F401
from vrift.daemon.client import connect_project
from vrift.daemon.paths import project_files
from vrift.vdir import layout
from vrift.vdir.shm import VDirReader

DIRS = 30


def _project(tmp_path, max_watches: int):
    files = {f"src/d{d:02}/f.c": b"int f;\n" for d in range(DIRS)}
    files["src/a.c"] = b"int a;\n"
    project = make_project(tmp_path, files=files)
    (project.root / ".vrift.yaml").write_text(f"daemon:\n  max_watches: {max_watches}\n")
    return project


def test_a_tree_over_the_watch_limit_is_answered_right_where_unwatched(daemons, tmp_path):
    home = daemons
    project = _project(tmp_path, max_watches=4)  # the root, src and two of its 30 directories
    with connect_project(home, project) as c:
        c.sync()
        watcher = c.stats()["watcher"]
    assert watcher["watches_exhausted"] and watcher["watches"] == 4
    assert watcher["unwatched_dirs"] == DIRS - 2
    with VDirReader(home.vdir_path(project.id)) as r:
        dirty = {e.path for e in r.entries() if e.flags & layout.F_DIRTY}
    unwatched = {p for p in dirty if p.endswith(b"/f.c")}
    assert len(unwatched) == DIRS - 2 and b"src/a.c" not in dirty  # watched: served from memory

    # a wrapped process stats a file of an unwatched directory while it is edited behind
    # vrift's back (no library, no event, no SYNC): it must see the edit
    target = sorted(unwatched)[0].decode()
    summary = tmp_path / "summary.json"
    probe = ("import os, sys\nos.stat('src/a.c')\nprint(os.stat(sys.argv[1]).st_size, flush=True)\n"
             "sys.stdin.readline()\nprint(os.stat(sys.argv[1]).st_size, flush=True)\n")
    p = subprocess.Popen([sys.executable, "-m", "vrift", "wrap", "-q", "--summary-json", str(summary),
                          sys.executable, "-c", probe, target], cwd=project.root, env=tool_env(), text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline().strip() == "7"
        (project.root / target).write_bytes(b"int f = 12345;\n")
        p.stdin.write("\n")
        p.stdin.flush()
        assert p.stdout.readline().strip() == str(len(b"int f = 12345;\n"))
        p.stdin.close()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert json.loads(summary.read_text())["stats_served"] > 0  # the watched part is answered from memory
    # SYNC re-reads the unwatched subtrees: the index is the tree again, still DIRTY there
    with connect_project(home, project) as c:
        c.sync()
    with VDirReader(home.vdir_path(project.id)) as r:
        e = r.lookup(target.encode())
    assert e.size == len(b"int f = 12345;\n") and e.flags & layout.F_DIRTY

    log = project_files(home, project.id).log_file.read_text()
    assert log.count("directories have no watch") == 1, log
    doctor = vrift("doctor", "--json", cwd=project.root, env=tool_env())
    checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
    w = checks[f"watcher {project.root}"]
    assert w["level"] == 1 and f"{DIRS - 2} directories unwatched" in w["detail"]
    assert "daemon.max_watches" in w["detail"]


def test_the_fix_names_a_sysctl_value_that_is_enough():
    from vrift.daemon.watcher import suggested_watches

    assert suggested_watches(8192, 100_000) >= 8192 + 100_000
    assert suggested_watches(8192, 100_000) % 65536 == 0
    assert suggested_watches(None, 10) >= 524288


def test_a_restart_over_the_watch_limit_confirms_only_what_is_watched(daemons, tmp_path):
    home = daemons
    project = _project(tmp_path, max_watches=4)
    vrift("sync", cwd=project.root, check=True)
    vrift("daemon", "restart", str(project.root), cwd=project.root, check=True)
    vrift("sync", cwd=project.root, check=True)  # waits for the start-up reconcile
    with VDirReader(home.vdir_path(project.id)) as r:
        dirty = {e.path for e in r.entries() if e.flags & layout.F_DIRTY}
    assert b"src/a.c" not in dirty and len({p for p in dirty if p.endswith(b"/f.c")}) == DIRS - 2
