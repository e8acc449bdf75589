"""The daemon never hashes what is not a regular file: a device reads forever, a fifo blocks.

Found: one ACTION_LOOKUP naming /dev/zero as the executable had the daemon hash it forever at
100% CPU.  Now every such request is refused with a reason, at once."""
from __future__ import annotations

import os

import pytest

from support.cache import FakeAction
from support.daemon import Writer, connect_project, daemons, make_project  # noqa: F401
from vrift.cas.store import CAS, CASError, hash_file
from vrift.daemon.client import DaemonError


@pytest.fixture
def proj(tmp_path):
    return make_project(tmp_path, files={"src/a.c": b"int a;\n"})


@pytest.mark.parametrize("kind", ["/dev/zero", "fifo", "directory"])
def test_action_lookup_of_a_non_regular_executable_is_refused(daemons, proj, kind, tmp_path):
    if kind == "fifo":
        exe = tmp_path / "fifo-exe"
        os.mkfifo(exe)
    elif kind == "directory":
        exe = tmp_path
    else:
        exe = kind
    with connect_project(daemons, proj) as c:
        a = FakeAction(proj.root)
        with pytest.raises(DaemonError, match="not a regular file"):
            c.action_lookup(os.fsencode(exe), proj.root, [b"tool"], a.id)
        c.ping()  # still serving, promptly


def test_a_commit_of_a_fifo_is_refused_not_waited_on(daemons, proj):
    with connect_project(daemons, proj) as c:
        w = Writer(c, proj)
        staging = w.dir / "fifo"
        os.mkfifo(staging)
        with pytest.raises(DaemonError, match="not a regular file"):
            c.commit(proj.root / "src/new.c", staging)
        c.ping()


def test_hash_and_store_refuse_devices_and_fifos(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        with pytest.raises(OSError, match="not a regular file"):
            hash_file(path)
        with pytest.raises(CASError, match="not a regular file"):
            CAS(tmp_path / "cas").store_file(path)
