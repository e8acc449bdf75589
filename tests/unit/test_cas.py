"""The CAS against real files, real processes and (as root) a real full filesystem."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import blake3
import pytest

from vrift.cas import CAS, CASError, hash_bytes, hash_file
from vrift.maintenance.gc import collect
from vrift.progress import Progress
from vrift.cas.store import SMALL
from vrift.cas.verify import verify
from vrift.errors import VriftError
from vrift.home import Home

ROOT = os.geteuid() == 0


@pytest.fixture
def cas(home) -> CAS:
    return CAS(home.cas_dir)


def _blob_state(cas: CAS, digest: bytes):
    p = cas.blob_path(digest)
    st = os.stat(p)
    return p.read_bytes(), stat.S_IMODE(st.st_mode), st.st_ino


def _no_temps(cas: CAS):
    assert list(cas.iter_temps()) == []


# -- storing -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 5, SMALL - 1, SMALL, SMALL + 1, 3 * 2**20 + 7])
def test_store_dedup_readonly(cas, tmp_path, size):
    data = os.urandom(size)
    src = tmp_path / "f"
    src.write_bytes(data)
    r = cas.store_file(str(src))
    assert r.digest == blake3.blake3(data).digest() == hash_bytes(data)
    assert (r.size, r.new) == (size, True)
    h = r.digest.hex()
    p = cas.blob_path(r.digest)
    assert p == cas.root / "blake3" / h[:2] / h[2:4] / h
    assert p.read_bytes() == data and cas.read_bytes(r.digest) == data and cas.has(r.digest)
    assert stat.S_IMODE(p.stat().st_mode) == 0o444
    for d in (p.parent, p.parent.parent, p.parent.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    again = cas.store_file(str(src))
    assert (again.digest, again.new) == (r.digest, False)
    assert cas.store_bytes(data).new is False
    assert hash_file(src) == (r.digest, size)
    assert cas.stats() == (1, size)
    assert [(d, s) for d, _, s, _ in cas.iter_blobs()] == [(r.digest, size)]
    _no_temps(cas)


def test_store_errors(cas, tmp_path):
    with pytest.raises(FileNotFoundError):
        cas.store_file(str(tmp_path / "missing"))
    with pytest.raises(CASError, match="not a regular file") as e:
        cas.store_file(str(tmp_path))
    assert not e.value.fatal
    with pytest.raises(VriftError, match="not a BLAKE3 digest"):
        cas.blob_path("xyz")
    with pytest.raises(CASError, match="no blob"):
        cas.read_bytes(b"\0" * 32)
    with pytest.raises(VriftError, match="link_strategy"):
        CAS(cas.root, link_strategy="symlink")


@pytest.mark.skipif(ROOT, reason="root reads files whatever their mode")
def test_unreadable_source_is_not_fatal(cas, tmp_path):
    src = tmp_path / "secret"
    src.write_bytes(b"x")
    src.chmod(0)
    with pytest.raises(CASError, match="secret: cannot read") as e:
        cas.store_file(str(src))
    assert not e.value.fatal


def _store_in_child(args):
    root, path = args
    r = CAS(root).store_file(path)
    return r.digest, r.new


@pytest.mark.parametrize("size", [1000, 2 * 2**20])
def test_concurrent_processes_store_one_blob(cas, tmp_path, size):
    data = os.urandom(size)
    paths = []
    for i in range(8):  # separate copies: the race is on the blob, not the source
        p = tmp_path / f"src{i}"
        p.write_bytes(data)
        paths.append(str(p))
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = pool.map(_store_in_child, [(str(cas.root), p) for p in paths * 3])
    assert {d for d, _ in results} == {blake3.blake3(data).digest()}
    assert sum(new for _, new in results) == 1
    assert cas.stats() == (1, size)
    assert verify(cas).ok
    _no_temps(cas)


def test_threads_store_many(cas, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(300):
        p = tmp_path / f"f{i}"
        p.write_bytes(b"%d" % (i % 100) * (i % 7 + 1))
        paths.append(str(p))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: cas.store_file(p, fsync=False), paths))
    cas.sync()
    assert sum(r.new for r in results) == len({r.digest for r in results}) == cas.stats()[0]
    _no_temps(cas)


# -- the iron law: nothing done to a project file changes a stored blob ------------------------
def _tamper(path: Path, other: Path):
    """Every way a build or an editor changes a file, each followed by a check."""
    def append():
        with open(path, "ab") as f:
            f.write(b"appended")

    def truncate():
        os.truncate(path, 1)

    def rewrite_in_place():
        with open(path, "r+b") as f:
            f.write(b"XXXX")

    def chmod():
        os.chmod(path, 0o777)
        with open(path, "r+b") as f:
            f.write(b"YY")

    def rename_over():
        other.write_bytes(b"replacement")
        os.rename(other, path)

    def delete():
        os.unlink(path)
        path.write_bytes(b"recreated")

    return [append, truncate, rewrite_in_place, chmod, rename_over, delete]


@pytest.mark.parametrize("strategy", ["auto", "copy", "reflink"])
@pytest.mark.parametrize("size", [100, SMALL * 3])
def test_iron_law(home, tmp_path, strategy, size):
    cas = CAS(home.cas_dir, link_strategy=strategy)
    data = os.urandom(size)
    src = tmp_path / "proj" / "f.o"
    src.parent.mkdir()
    src.write_bytes(data)
    digest = cas.store_file(str(src)).digest
    before = _blob_state(cas, digest)
    for step in _tamper(src, tmp_path / "proj" / "g.o"):
        step()
        assert _blob_state(cas, digest) == before, step.__name__
    # a materialized copy is an independent file too
    out = tmp_path / "proj" / "out.o"
    cas.materialize(digest, out)
    with open(out, "r+b") as f:
        f.write(b"edited")
    assert _blob_state(cas, digest) == before
    assert verify(cas).ok


def test_hardlink_strategy_is_copy_for_root(home, tmp_path):
    if not ROOT:
        pytest.skip("root-only behaviour")
    cas = CAS(home.cas_dir, link_strategy="hardlink")
    src = tmp_path / "f"
    src.write_bytes(b"data")
    r = cas.store_file(str(src))
    # root writes through 0444, so a hardlinked blob could be changed: root gets copies
    assert r.strategy == "copy" and os.stat(src).st_ino != os.stat(cas.blob_path(r.digest)).st_ino
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o644 & ~_umask()


def _hardlink_child(root: str, src: str) -> None:
    if ROOT:  # become an ordinary user, for whom 0444 means read-only
        os.setgid(65534)
        os.setuid(65534)
    cas = CAS(root, link_strategy="hardlink")
    data = b"linked content" * 100
    with open(src, "wb") as f:
        f.write(data)
    r = cas.store_file(src)
    blob = cas.blob_path(r.digest)
    assert r.strategy == "hardlink" and r.new, r
    assert os.stat(src).st_ino == os.stat(blob).st_ino
    assert stat.S_IMODE(os.stat(src).st_mode) == 0o444 == stat.S_IMODE(os.stat(blob).st_mode)
    for mode in ("ab", "r+b", "wb"):
        try:
            open(src, mode).close()
        except PermissionError:
            pass
        else:
            raise AssertionError(f"a 0444 file opened for writing ({mode})")
    with open(src + ".new", "wb") as f:
        f.write(b"other")
    os.rename(src + ".new", src)  # a build replaces its output: the blob keeps its bytes
    assert blob.read_bytes() == data
    assert cas.store_file(src).strategy == "hardlink"
    assert verify(cas).ok and cas.stats()[0] == 2
    assert list(cas.iter_temps()) == []


def test_hardlink_strategy_read_only_names():
    base = Path(tempfile.mkdtemp(prefix="vrhl", dir="/tmp"))
    try:
        (base / "cas").mkdir()
        (base / "proj").mkdir()
        if ROOT:
            os.chmod(base, 0o755)
            for d in (base / "cas", base / "proj"):
                os.chown(d, 65534, 65534)
        # fork without exec: the child needs no access to the Python installation
        proc = multiprocessing.get_context("fork").Process(
            target=_hardlink_child, args=(str(base / "cas"), str(base / "proj" / "f")))
        proc.start()
        proc.join(60)
        assert proc.exitcode == 0
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


def _umask() -> int:
    # only read in a test process; setting it briefly is harmless here
    m = os.umask(0)
    os.umask(m)
    return m


# -- materialize -----------------------------------------------------------------------------
def test_materialize(cas, tmp_path):
    data = os.urandom(SMALL * 2)
    digest = cas.store_bytes(data).digest
    old = time.time() - 86400
    os.utime(cas.blob_path(digest), (old, old))
    dest = tmp_path / "out" / "x.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"previous")
    cas.materialize(digest, dest, mode=0o755)
    assert dest.read_bytes() == data
    st = os.stat(dest)
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_mtime > old + 3600 and st.st_nlink == 1
    assert st.st_ino != os.stat(cas.blob_path(digest)).st_ino
    assert sorted(os.listdir(dest.parent)) == ["x.bin"]  # no temp left
    with pytest.raises(CASError, match="no blob"):
        cas.materialize(b"\1" * 32, tmp_path / "y")


# -- mtime refresh, damage on dedup -----------------------------------------------------------
def test_dedup_refreshes_old_mtime_only(cas):
    digest = cas.store_bytes(b"reused").digest
    p = cas.blob_path(digest)
    recent = time.time() - 600
    os.utime(p, (recent, recent))
    cas.store_bytes(b"reused")
    assert abs(p.stat().st_mtime - recent) < 1  # at most one refresh an hour
    old = time.time() - 7200
    os.utime(p, (old, old))
    cas.store_bytes(b"reused")
    assert p.stat().st_mtime > time.time() - 60


def test_short_blob_is_set_aside_and_rewritten(cas):
    digest = cas.store_bytes(b"complete content").digest
    p = cas.blob_path(digest)
    p.chmod(0o644)
    p.write_bytes(b"")  # what a crash before sync can leave
    r = cas.store_bytes(b"complete content")
    assert r.new and p.read_bytes() == b"complete content"
    assert len(os.listdir(cas.root / "quarantine")) == 1


# -- verify ------------------------------------------------------------------------------------
def test_verify_detects_and_quarantines(cas):
    digests = [cas.store_bytes(b"blob %d" % i * 1000).digest for i in range(20)]
    assert verify(cas).checked == 20
    bad = cas.blob_path(digests[3])
    bad.chmod(0o644)
    raw = bytearray(bad.read_bytes())
    raw[10] ^= 1
    bad.write_bytes(bytes(raw))
    report = verify(cas, workers=3)
    assert report.checked == 20 and [d for d, _ in report.bad] == [digests[3].hex()]
    assert "hashes to" in report.bad[0][1]
    report = verify(cas, quarantine=True)
    assert len(report.quarantined) == 1 and not bad.exists()
    assert verify(cas).ok and verify(cas).checked == 19
    assert cas.store_bytes(b"blob 3" * 1000).new  # a sound copy comes back


# -- gc ----------------------------------------------------------------------------------------
def test_gc_dry_run_delete_and_grace(home, cas):
    keep = [cas.store_bytes(b"keep %d" % i).digest for i in range(3)]
    old_garbage = [cas.store_bytes(b"old %d" % i).digest for i in range(4)]
    young_garbage = cas.store_bytes(b"young").digest
    week_ago = time.time() - 7 * 86400
    for d in keep + old_garbage:
        os.utime(cas.blob_path(d), (week_ago, week_ago))
    missing = b"\7" * 32

    dry = collect(home, cas, 86400, referenced=set(keep) | {missing})
    assert (dry.blobs, dry.referenced, dry.unreferenced, dry.removable, dry.kept_young, dry.removed,
            dry.missing) == (8, 3, 5, 4, 1, 0, 1)
    assert dry.bytes_removable == sum(len(b"old %d" % i) for i in range(4))
    assert cas.stats()[0] == 8  # dry run by default

    # extra roots count as references
    rooted = collect(home, cas, 86400, referenced=set(keep), extra_roots=[old_garbage[0]])
    assert rooted.removable == 3

    done = collect(home, cas, 86400, delete=True, referenced=set(keep))
    assert done.removed == 4 and cas.stats()[0] == 4
    assert all(cas.has(d) for d in keep) and cas.has(young_garbage)
    assert not any(cas.has(d) for d in old_garbage)

    # grace 0 takes the young one too
    assert collect(home, cas, 0, delete=True, referenced=set(keep)).removed == 1
    assert cas.stats()[0] == 3


def test_gc_sweeps_stale_temporaries(home, cas):
    digest = cas.store_bytes(b"x").digest
    leaf = cas.blob_path(digest).parent
    stale, fresh = leaf / ".tmp.1.2.3", leaf / ".tmp.4.5.6"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    report = collect(home, cas, 0, delete=True, referenced={digest})
    assert report.temps_removed == 1 and not stale.exists() and fresh.exists()
    assert cas.stats() == (1, 1)  # temporaries are never counted as blobs


# -- disk full ---------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs():
    if not ROOT:
        pytest.skip("mounting a 1 MiB tmpfs needs root")
    d = tempfile.mkdtemp(prefix="vrfull", dir="/tmp")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True, text=True)
    if r.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield Path(d)
    finally:
        subprocess.run(["umount", d], check=False)
        os.rmdir(d)


@pytest.mark.parametrize("size", [SMALL - 10, 2 * 2**20])
def test_disk_full(tiny_fs, tmp_path, size):
    cas = CAS(tiny_fs / "cas")
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:  # leave less room than one blob
        try:
            f.write(b"\0" * (1024 * 1024 - SMALL // 2))
        except OSError:
            pass
    src = tmp_path / "big"
    data = os.urandom(size)
    src.write_bytes(data)
    with pytest.raises(VriftError, match=r"CAS .*: disk full while storing .*big") as e:
        cas.store_file(str(src))
    assert e.value.fatal is True
    assert not cas.has(blake3.blake3(data).digest())
    assert list(cas.iter_blobs()) == []
    _no_temps(cas)
    filler.unlink()
    if size < 2**20:
        assert cas.store_file(str(src)).new  # space back: it works


# -- progress ----------------------------------------------------------------------------------
class _Tty(io.StringIO):
    """A terminal stand-in: stderr under pytest is not a tty."""

    def isatty(self):
        return True


def test_progress_draws_only_on_a_tty_and_clears():
    plain = io.StringIO()
    with Progress(10, "x", stream=plain) as bar:
        bar.advance(10)
    assert plain.getvalue() == ""
    tty = _Tty()
    with Progress(100, "ingest", stream=tty) as bar:
        bar._next = 0  # draw on the next advance
        bar.advance(50)
        assert "ingest: 50/100 (50%)" in tty.getvalue() and "ETA" in tty.getvalue()
        bar.set_total(200)
    assert tty.getvalue().endswith("\r")
    disabled = _Tty()
    with Progress(None, "x", enabled=False, stream=disabled) as bar:
        bar.advance()
    assert disabled.getvalue() == ""


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_verify_stats_path_gc(run_vrift, vrift_env):
    home = Home.from_env(vrift_env).ensure()
    cas = CAS(home.cas_dir)
    digest = cas.store_bytes(b"cli blob").digest
    out = run_vrift("cas", "verify", "--json", check=True)
    assert json.loads(out.stdout)["checked"] == 1
    stats = json.loads(run_vrift("cas", "stats", "--json", check=True).stdout)
    assert (stats["blobs"], stats["logical_bytes"]) == (1, 8)
    assert stats["bytes"] == os.stat(cas.blob_path(digest)).st_blocks * 512  # on disk, as du counts
    assert run_vrift("cas", "path", digest.hex(), check=True).stdout.strip() == str(cas.blob_path(digest))
    assert run_vrift("cas", "path", "00" * 32).returncode == 1

    gc = json.loads(run_vrift("gc", "--json", check=True).stdout)
    assert (gc["blobs"], gc["removable"], gc["kept_young"], gc["deleted"]) == (1, 0, 1, False)
    gc = json.loads(run_vrift("gc", "--older-than", "0", "--json", check=True).stdout)
    assert gc["removable"] == 1 and cas.has(digest)
    gc = json.loads(run_vrift("gc", "--older-than", "0", "--delete", "--json", check=True).stdout)
    assert gc["removed"] == 1 and not cas.has(digest)
    bad = run_vrift("gc", "--older-than", "soon")
    assert bad.returncode != 0 and "not a duration" in bad.stderr

    digest = cas.store_bytes(b"to corrupt").digest
    p = cas.blob_path(digest)
    p.chmod(0o644)
    p.write_bytes(b"to corrupT")
    proc = run_vrift("cas", "verify", "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["bad"][0]["digest"] == digest.hex()
    assert run_vrift("cas", "verify", "--quarantine").returncode == 1
    assert run_vrift("cas", "verify").returncode == 0


def test_link_unlink_naming_where_renameat2_is_missing(cas, tmp_path):
    cas._noreplace = False  # what a filesystem without RENAME_NOREPLACE gets
    src = tmp_path / "f"
    for data in (b"a" * 10, os.urandom(SMALL * 2)):
        src.write_bytes(data)
        assert cas.store_file(str(src)).new and not cas.store_file(str(src)).new
    assert cas.stats()[0] == 2 and verify(cas).ok
    _no_temps(cas)
