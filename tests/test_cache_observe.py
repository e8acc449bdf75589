"""What an action observed, and what a replay installs, in real make builds compared with plain
make on a twin tree (tests/observe_support.py): damaged blobs, stat answers, symlinks and `..`,
directories created, keys that travel between checkouts."""
from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from build_support import require_tools
from daemon_support import daemons  # noqa: F401
from observe_support import Twin
from test_cache_wrap import needs_c_side

pytestmark = needs_c_side

LIB_MAKEFILE = """\
all: app
a.o: a.c
\tcc -c a.c -o a.o
lib.a: a.o
\trm -f lib.a && ar crs lib.a a.o
app: lib.a main.c
\tcc main.c lib.a -o app
"""
LIB_FILES = {"Makefile": LIB_MAKEFILE, "a.c": "int a(void) { return 41; }\n",
             "main.c": "int a(void);\nint main(void) { return a() == 41 ? 0 : 1; }\n"}


@pytest.fixture
def tools(daemons):
    require_tools("make", "cc", "ar")
    return daemons


def blob_path(home, data: bytes) -> Path:
    h = blake3.blake3(data).hexdigest()
    return home.root / "cas" / "blake3" / h[:2] / h[2:4] / h


def test_a_damaged_blob_is_quarantined_and_the_command_runs(tmp_path, tools, run_vrift):
    t = Twin(tmp_path, LIB_FILES)
    assert t.build()[0] == (0, 3, 0)
    blob = blob_path(tools, (t.proj / "a.o").read_bytes())
    assert blob.exists()
    # bit rot in the object's blob: same size, one byte flipped
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.chmod(0o644)
    blob.write_bytes(bytes(data))
    for name in ("a.o", "lib.a", "app"):
        t.remove(name)
    # the compile runs instead of installing the damaged bytes; the archive and the link,
    # recorded against the good object, then hit on the object the compile really made
    counts, err = t.build()
    assert counts == (2, 1, 0), err
    assert "a blob of the entry was damaged" in err
    assert not blob.exists() or blob.read_bytes() != bytes(data)
    quarantined = list((tools.root / "cas" / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)
    run_vrift("daemon", "stop", check=True)
    stats = json.loads(run_vrift("cache", "stats", "--json", check=True).stdout)
    assert stats["counters"]["corrupt_blobs"] == 1
    # and the entry re-recorded by the run hits next time
    for name in ("a.o", "lib.a", "app"):
        t.remove(name)
    assert t.build()[0] == (3, 0, 0)
