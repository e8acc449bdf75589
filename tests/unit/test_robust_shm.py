"""No takeover of the shared memory: another local user cannot plant, replace or read a VDir.

Every file lives in <shm>/vrift-<euid>/ (0700); files are created O_EXCL, opened O_NOFOLLOW,
and used only when regular, owned by the user, 0600 and with one name — by the daemon's
writer, Python's reader and the preload library alike."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from support.preload import build_vdir, counters_file, index_tree, preload_env, read_counters
from vrift.errors import VriftError
from vrift.home import Home
from vrift.identity import Project
from vrift.vdir import layout, native
from vrift.vdir.shm import VDirReader, VDirWriter
from vrift.vdir.shm_files import dir_problem, ensure_private_dir, file_problem
from vrift.vdir.shm_format import VDirForeign

OTHER_UID = 65534  # nobody
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a second uid needs root (setuid in a child)")


def as_other_user(fn, *args) -> None:
    """Run fn(*args) in a forked child that has become another user (a real second uid)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            fn(*args)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def fake_stat(mode: int, uid: int, nlink: int = 1) -> os.stat_result:
    return os.stat_result((mode, 0, 0, nlink, uid, 0, 0, 0, 0, 0))


@pytest.mark.parametrize("directory", [0, 1])
def test_python_rules_are_the_c_rules(directory):
    me = os.geteuid()
    kinds = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO)
    for kind in kinds:
        for perm in (0o600, 0o700, 0o640, 0o604, 0o666, 0o400):
            for uid in (me, me + 1):
                for nlink in (1, 2):
                    st = fake_stat(kind | perm, uid, nlink)
                    c_ok = native.lib().vrift_shm_stat_ok(directory, kind | perm, uid, nlink, me) == 1
                    py_ok = (dir_problem(st) if directory else file_problem(st)) is None
                    assert c_ok == py_ok, (directory, oct(kind | perm), uid, nlink)


def test_names_come_from_the_c_header(vrift_env):
    for name in ("VRIFT_SHM_USER_DIR_PREFIX", "VRIFT_VDIR_NAME_PREFIX", "VRIFT_COUNTERS_NAME_PREFIX"):
        assert native.lib().vrift_layout_string(name.encode()).decode() == getattr(layout, name[len("VRIFT_"):])
    assert native.lib().vrift_layout_constant(b"VRIFT_VDIR_ID_CHARS") == layout.VDIR_ID_CHARS
    home = Home.from_env()
    pid = "0123456789abcdef" * 2
    assert home.vdir_path(pid) == home.shm_dir / f"vrift-{os.geteuid()}" / "vrift_vdir_0123456789abcdef"


def test_the_private_directory_is_made_0700_and_a_loose_mode_tightened(vrift_env):
    home = Home.from_env().ensure()
    st = os.lstat(home.user_shm_dir)
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    os.chmod(home.user_shm_dir, 0o777)
    ensure_private_dir(home.user_shm_dir)
    assert stat.S_IMODE(os.lstat(home.user_shm_dir).st_mode) == 0o700


def test_a_link_in_place_of_the_directory_is_replaced(vrift_env, tmp_path):
    home = Home.from_env()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    home.shm_dir.mkdir(parents=True, exist_ok=True)
    os.symlink(elsewhere, home.user_shm_dir)
    home.ensure()
    st = os.lstat(home.user_shm_dir)
    assert stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode)
    assert list(elsewhere.iterdir()) == []


@needs_root
def test_another_users_directory_is_refused_in_one_line(vrift_env, tmp_path):
    home = Home.from_env()
    os.chmod(home.shm_dir.parent, 0o711)  # the other user can reach the shm dir...
    os.chmod(home.shm_dir, 0o1777)  # ...which, like /dev/shm, anyone may write to
    as_other_user(os.mkdir, str(home.user_shm_dir), 0o777)
    with pytest.raises(VriftError, match="owned by uid 65534"):
        home.ensure()
    root = tmp_path / "proj"
    root.mkdir()
    (root / "a.c").write_text("int a;\n")
    proc = subprocess.run([sys.executable, "-m", "vrift", "ingest", str(root)], env=vrift_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1 and "shared-memory directory" in proc.stderr, proc.stderr
    assert list(home.user_shm_dir.iterdir()) == []  # nothing of ours went into it


def _valid_vdir(vrift_env, tmp_path) -> tuple[Path, Path]:
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    for i in range(20):
        (root / f"f{i}.c").write_text("x" * i)
    home = Home.from_env().ensure()
    vdir = home.user_shm_dir / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    return root, vdir


def _stat_through_library(vrift_env, tmp_path, root: Path, vdir: Path) -> dict:
    counters = counters_file(tmp_path / f"counters{os.urandom(4).hex()}")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    proc = subprocess.run(["stat", "-c", "%s", *[f"f{i}.c" for i in range(20)]], env=env, cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(i) for i in range(20)]  # right either way
    return read_counters(counters)


def test_the_library_uses_its_own_file(vrift_env, tmp_path):
    root, vdir = _valid_vdir(vrift_env, tmp_path)
    c = _stat_through_library(vrift_env, tmp_path, root, vdir)
    assert c["STAT_SERVED"] >= 20 and c["FALLBACKS"] == 0, c


@pytest.mark.parametrize("damage", ["mode 0644", "other owner", "symlink", "hard link"])
def test_the_library_refuses_a_file_that_is_not_its_own(vrift_env, tmp_path, damage):
    root, vdir = _valid_vdir(vrift_env, tmp_path)
    if damage == "mode 0644":
        os.chmod(vdir, 0o644)
    elif damage == "other owner":
        if os.geteuid() != 0:
            pytest.skip("chown to another uid needs root")
        os.chown(vdir, OTHER_UID, OTHER_UID)
    elif damage == "symlink":
        real = vdir.with_name("real")
        os.rename(vdir, real)
        os.symlink(real, vdir)
    else:
        os.link(vdir, vdir.with_name("second_name"))
    c = _stat_through_library(vrift_env, tmp_path, root, vdir)
    assert c["STAT_SERVED"] == 0 and c["FALLBACKS"] == 1, c
    with pytest.raises(VDirForeign):
        VDirReader(vdir)


@needs_root
def test_the_writer_replaces_a_planted_file_and_says_so(vrift_env, tmp_path, caplog):
    """A valid VDir of another owner, 0666, at the very name: the writer neither retires nor
    trusts it; its own new file takes the name."""
    root, vdir = _valid_vdir(vrift_env, tmp_path)
    os.chown(vdir, OTHER_UID, OTHER_UID)
    os.chmod(vdir, 0o666)
    planted = os.stat(vdir)
    pid = "ab" * 16
    with pytest.raises(VDirForeign):
        VDirWriter.open_existing(vdir, root, pid)
    with caplog.at_level("WARNING"):
        w = VDirWriter.create(vdir, root, pid)
    try:
        st = os.lstat(vdir)
        assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o600 and st.st_ino != planted.st_ino
        assert "owned by uid 65534" in caplog.text and "replacing it" in caplog.text
    finally:
        w.close(unlink=True)


def test_a_daemon_index_lives_in_the_private_directory(vrift_env, tmp_path):
    root, _ = _valid_vdir(vrift_env, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "vrift", "ingest", str(root)], env=vrift_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    home = Home.from_env()
    vdir = home.vdir_path(Project.at(root).id)
    st = os.lstat(vdir)
    assert vdir.parent == home.user_shm_dir and file_problem(st) is None
    assert not [p for p in home.shm_dir.iterdir() if p != home.user_shm_dir]
