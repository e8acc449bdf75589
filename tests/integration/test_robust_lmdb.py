"""A damaged data.mdb is found at open, moved aside and the index rebuilt from the tree.

Found: with data.mdb truncated the daemon died with SIGBUS at every restart and `vrift doctor`
itself died with a bus error."""
from __future__ import annotations

import os
import subprocess
import sys

from support.daemon import daemons, make_project  # noqa: F401
from vrift.daemon.client import connect_project
from vrift.home import Home
from vrift.identity import Project
from vrift.lmdb_env import damage


def _ingest(vrift_env, root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vrift", "ingest", str(root)], env=vrift_env,
                          capture_output=True, text=True, timeout=120)


def _project_with_index(vrift_env, tmp_path, n=400) -> tuple[Project, Home]:
    files = {f"src/d{i % 7}/f{i:04d}.c": b"int v%d;\n" % i for i in range(n)}
    proj = make_project(tmp_path, files=files)
    r = _ingest(vrift_env, proj.root)
    assert r.returncode == 0, r.stderr
    return proj, Home.from_env(vrift_env)


def _truncate_half(home: Home, proj: Project) -> None:
    data = home.db_dir(proj.id) / "data.mdb"
    assert damage(data.parent) is None
    os.truncate(data, os.path.getsize(data) // 2)
    assert "truncated" in damage(data.parent)


def test_doctor_reports_a_truncated_lmdb_without_crashing(vrift_env, tmp_path, run_vrift):
    proj, home = _project_with_index(vrift_env, tmp_path)
    _truncate_half(home, proj)
    r = run_vrift("doctor")
    assert r.returncode == 1, (r.returncode, r.stderr)  # -7 was SIGBUS
    assert "data.mdb is damaged: truncated" in r.stdout, r.stdout
    assert "Traceback" not in r.stderr


def test_ingest_moves_it_aside_and_rebuilds(vrift_env, tmp_path, run_vrift):
    proj, home = _project_with_index(vrift_env, tmp_path)
    _truncate_half(home, proj)
    r = _ingest(vrift_env, proj.root)
    assert r.returncode == 0, (r.returncode, r.stderr)
    db = home.db_dir(proj.id)
    assert [p.name for p in db.iterdir() if p.name.startswith("data.mdb.damaged-")]
    assert damage(db) is None
    st = run_vrift("stat", str(proj.root / "src/d3/f0003.c"), "--json")
    assert st.returncode == 0 and '"size": 8' in st.stdout, (st.stdout, st.stderr)


def test_the_daemon_starts_over_a_damaged_lmdb_and_rebuilds_from_the_tree(daemons, tmp_path, vrift_env):
    home = daemons
    proj, _ = _project_with_index(vrift_env, tmp_path)
    with open(home.db_dir(proj.id) / "data.mdb", "r+b") as f:  # both meta pages overwritten
        for page in (0, 1):
            f.seek(4096 * page)
            f.write(os.urandom(64))
    assert damage(home.db_dir(proj.id)) is not None
    with connect_project(home, proj) as c:
        c.sync()
        assert c.stats()["entries"] >= 400
    from support.daemon import vdir_entry

    assert vdir_entry(home, proj, "src/d0/f0399.c").size == len(b"int v399;\n")


def test_a_healthy_lmdb_under_churn_is_never_called_damaged(tmp_path):
    """Freed pages keep stale bytes (a reused page leaves the rest of an old overflow run with no
    header): a check of page headers called such a file damaged and a writer threw it away —
    the whole action cache of a zstd build, between two builds."""
    import random

    import lmdb

    env = lmdb.open(str(tmp_path), map_size=1 << 30, metasync=False, max_dbs=2)
    db = env.open_db(b"x")
    rng = random.Random(1)
    try:
        for _ in range(100):
            with env.begin(write=True) as txn:
                for _ in range(20):
                    key = b"k%d" % rng.randrange(200)
                    if rng.random() < 0.3:
                        txn.delete(key, db=db)
                    else:
                        txn.put(key, rng.randbytes(rng.choice([100, 5000, 20000, 70000])), db=db)
            assert damage(tmp_path) is None
    finally:
        env.close()
