"""The Python side of stat observations ('S'), PATH lookups ('P') and `..` (docs/cache.md),
with synthetic logs in the preload library's format and real files: what is recorded for a
file only stat'ed, one also read, a directory, a symlink, an error; what --explain says."""
from __future__ import annotations

import os
import time

from support.cache import FakeAction
from vrift.cache import actionlog
from vrift.cache.fingerprint import Context, build, match
from vrift.cas import CAS


def _ctx(tmp_path, root):
    return Context(root, CAS(tmp_path / "cas", fsync=False))


def _root(tmp_path):
    root = tmp_path / "proj"
    (root / "inc").mkdir(parents=True)
    (root / "data").write_bytes(b"12345")
    (root / "hdr.h").write_bytes(b"#define H\n")
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    (root / "tool").chmod(0o644)
    os.symlink("inc", root / "cur")
    return root


def _fp(tmp_path, root, *records, search=None, argv=(b"sh",)):
    a = FakeAction(root)
    start = time.time_ns()
    (root / "out").write_bytes(b"o")
    a.log(*records, ("W", bytes(root / "out")))
    return build(actionlog.take(a.dir), _ctx(tmp_path, root), 0, start, "sh", list(argv), search)


def test_s_records_parse_with_their_flavour_and_a_bad_one_tears_the_log(tmp_path):
    a = FakeAction(tmp_path)
    a.log(("S", b"f/x/a"), ("S", b"l/x/b"), ("S", b"a/x/c"), ("S", b"m/x/d"), pid=1)
    bad = a.log(("S", b"q/x/e"), pid=2)
    logs = actionlog.read_dir(a.dir)
    assert logs.processes[0].events == [("Sf", b"/x/a"), ("Sl", b"/x/b"), ("Sa", b"/x/c"), ("Sm", b"/x/d")]
    assert logs.processes[1].torn and logs.unfinished == [bad.name]


def test_what_an_observation_holds(tmp_path):
    root = _root(tmp_path)
    b = lambda rel: bytes(root / rel)  # noqa: E731
    fp = _fp(tmp_path, root, ("S", b"f" + b("data")), ("S", b"f" + b("hdr.h")), ("R", b("hdr.h")),
             ("S", b"a" + b("tool")), ("S", b"f" + b("inc")), ("S", b"l" + b("cur")))
    got = {item[1]: item[3] if len(item) > 3 else None for item in fp.inputs}
    st = os.stat(root / "data")
    assert got["data"] == {"h": "f", "t": "f", "m": 0o644 & st.st_mode, "z": 5, "n": st.st_mtime_ns}
    assert got["hdr.h"] == {"x": 0}  # folded into the R input: digest and execute bits only
    assert got["tool"] == {"h": "a", "t": "f", "m": 0o644}
    assert got["inc"] == {"h": "f", "t": "d"}
    assert got["cur"] == {"h": "l", "t": "l", "target": "inc"}
    ctx = _ctx(tmp_path, root)
    assert match(fp, ctx) is None
    os.utime(root / "hdr.h", ns=(1, 1))  # a touch of a file read by content: no miss
    os.utime(root / "inc", ns=(1, 1))
    assert match(fp, ctx) is None
    (root / "inc/new.h").write_bytes(b"")  # a directory's own metadata is not compared
    assert match(fp, ctx) is None
    # differences, in plain words, first in path order
    os.unlink(root / "cur")
    os.symlink("elsewhere", root / "cur")
    assert match(fp, ctx) == "symlink cur points elsewhere now"
    os.unlink(root / "cur")
    os.symlink("inc", root / "cur")
    (root / "data").write_bytes(b"1234567")
    assert match(fp, ctx) == "size of data changed"
    (root / "data").write_bytes(b"54321")
    assert match(fp, ctx) == "mtime of data changed"
    os.unlink(root / "data")
    assert match(fp, ctx) == "data is now absent"
    os.mkdir(root / "data")
    assert match(fp, ctx) == "data is now a directory (was a regular file)"


def test_a_stat_of_its_own_output_or_a_removed_file_is_no_input(tmp_path):
    root = _root(tmp_path)
    a = FakeAction(root)
    (root / "out").write_bytes(b"o")
    a.log(("S", b"f" + bytes(root / "out")), ("W", bytes(root / "out")),
          ("S", b"l" + bytes(root / "data")), ("U", bytes(root / "data")), ("W", bytes(root / "data")))
    fp = build(actionlog.take(a.dir), _ctx(tmp_path, root), 0, time.time_ns(), "sh", [b"sh"])
    assert not [i for i in fp.inputs if i[0] == "S"]


def test_dotdot_stays_as_named_and_is_resolved_by_the_kernel_at_match(tmp_path):
    root = _root(tmp_path)
    (root / "real/sub").mkdir(parents=True)
    (root / "real/x.h").write_bytes(b"real\n")
    (root / "x.h").write_bytes(b"decoy\n")
    os.symlink("real/sub", root / "link")
    fp = _fp(tmp_path, root, ("R", bytes(root) + b"/link/../x.h"))
    assert ["R", "link/../x.h"] == fp.inputs[0][:2]
    ctx = _ctx(tmp_path, root)
    (root / "x.h").write_bytes(b"decoy 2\n")
    assert match(fp, ctx) is None
    (root / "real/x.h").write_bytes(b"real 2\n")
    assert match(fp, ctx) == "link/../x.h changed"


def test_names_looked_up_in_path_are_inputs_not_the_path_string(tmp_path):
    root = _root(tmp_path)
    bin1, bin2, empty = tmp_path / "bin1", tmp_path / "bin2", tmp_path / "empty"
    for d in (bin1, bin2, empty):
        d.mkdir()
    for d in (bin1, bin2):
        (d / "cc").write_bytes(b"#!/bin/sh\n")
        (d / "cc").chmod(0o755)
    path1 = os.fsencode(f"{empty}:{bin1}")
    # sh tried empty/cc (absent), then ran bin1/cc
    fp = _fp(tmp_path, root, ("A", bytes(empty / "cc")), ("X", bytes(bin1 / "cc")), search=(path1, bytes(root)))
    assert ["P", "cc", str(bin1 / "cc")] in fp.inputs and ["P", "sh", None] in fp.inputs
    ctx = _ctx(tmp_path, root)
    assert match(fp, ctx, (path1, bytes(root))) is None
    assert match(fp, ctx, (os.fsencode(f"{bin1}:{empty}:{tmp_path}"), bytes(root))) is None  # another order
    assert match(fp, ctx, (os.fsencode(f"{bin2}:{bin1}"), bytes(root))) == \
        f"cc resolves to {bin2 / 'cc'} in PATH now (was {bin1 / 'cc'})"
    assert match(fp, ctx, None) is not None  # no PATH given: a name looked up in it cannot be checked
