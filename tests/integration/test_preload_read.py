"""The preload library's read path, through real processes under LD_PRELOAD.

A generated tree is indexed into a real VDir file; a C program compiled here, Python's
os.stat and coreutils `stat` then run with the library preloaded, and every stat field must
equal the kernel's.  That the answers come from memory is shown by the counters file and by
test-only tampering of a VDir entry (the library reports the tampered value, the kernel
does not).
"""
from __future__ import annotations

import json
import os
import stat as statmod
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.preload import (COUNTERS, build_vdir, compile_c, counters_file, entry_offset, index_tree,
                             preload_env, read_counters, set_flags)
from vrift.vdir import layout

STAT_PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void show(const char *kind, const char *p, int r, const struct stat *st) {
    if (r != 0) { printf("%s %s errno=%d\n", kind, p, errno); return; }
    printf("%s %s dev=%llu ino=%llu mode=%o nlink=%llu uid=%u gid=%u rdev=%llu size=%lld blksize=%ld "
           "blocks=%lld mtime=%lld.%09ld ctime=%lld.%09ld\n", kind, p,
           (unsigned long long)st->st_dev, (unsigned long long)st->st_ino, st->st_mode,
           (unsigned long long)st->st_nlink, st->st_uid, st->st_gid, (unsigned long long)st->st_rdev,
           (long long)st->st_size, (long)st->st_blksize, (long long)st->st_blocks,
           (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
    printf("atime %s %lld.%09ld\n", p, (long long)st->st_atim.tv_sec, st->st_atim.tv_nsec);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *p = argv[i];
        struct stat st;
        struct stat64 st64;
        struct statx sx;
        errno = 0; show("stat", p, stat(p, &st), &st);
        errno = 0; show("lstat", p, lstat(p, &st), &st);
        errno = 0; show("fstatat", p, fstatat(AT_FDCWD, p, &st, 0), &st);
        errno = 0; show("fstatat_nofollow", p, fstatat(AT_FDCWD, p, &st, AT_SYMLINK_NOFOLLOW), &st);
        errno = 0; show("stat64", p, stat64(p, &st64), (struct stat *)&st64);
        errno = 0; show("lstat64", p, lstat64(p, &st64), (struct stat *)&st64);
        errno = 0;
        int r = statx(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS & ~STATX_ATIME, &sx);
        if (r != 0) printf("statx %s errno=%d\n", p, errno);
        else printf("statx %s mask_has_basic=%d ino=%llu mode=%o nlink=%u uid=%u gid=%u size=%llu blocks=%llu "
                    "blksize=%u mtime=%lld.%09u ctime=%lld.%09u dev=%u:%u\n", p,
                    (sx.stx_mask & (STATX_BASIC_STATS & ~STATX_ATIME)) == (STATX_BASIC_STATS & ~STATX_ATIME),
                    (unsigned long long)sx.stx_ino, sx.stx_mode, sx.stx_nlink, sx.stx_uid, sx.stx_gid,
                    (unsigned long long)sx.stx_size, (unsigned long long)sx.stx_blocks, sx.stx_blksize,
                    (long long)sx.stx_mtime.tv_sec, sx.stx_mtime.tv_nsec, (long long)sx.stx_ctime.tv_sec,
                    sx.stx_ctime.tv_nsec, sx.stx_dev_major, sx.stx_dev_minor);
        errno = 0; r = access(p, F_OK); printf("access %s r=%d errno=%d\n", p, r, r ? errno : 0);
        errno = 0; r = faccessat(AT_FDCWD, p, F_OK, AT_SYMLINK_NOFOLLOW);
        printf("faccessat_nofollow %s r=%d errno=%d\n", p, r, r ? errno : 0);
    }
    return 0;
}
"""

PY_PROBE = textwrap.dedent("""
    import json, os, sys
    out = {}
    for p in sys.argv[1:]:
        row = {}
        for name, fn in (("stat", os.stat), ("lstat", os.lstat)):
            try:
                st = fn(p)
                row[name] = [st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size,
                             st.st_blocks, st.st_blksize, st.st_mtime_ns, st.st_ctime_ns]
            except OSError as e:
                row[name] = e.errno
        out[p] = row
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Path:
    return compile_c(STAT_PROBE, tmp_path_factory.mktemp("probe") / "stat_probe")


def make_tree(root: Path) -> None:
    """Files of many sizes and modes, nested dirs, symlinks (file, dir, dangling), a hard
    link, an empty file, a fifo and a name with spaces."""
    (root / "src" / "sub" / "deep").mkdir(parents=True)
    (root / "include").mkdir()
    for i in range(20):
        (root / "src" / f"f{i}.c").write_bytes(b"x" * (i * 301))
    (root / "src" / "sub" / "deep" / "leaf.h").write_text("leaf\n")
    (root / "include" / "a b.h").write_text("spaces\n")
    (root / "empty").write_bytes(b"")
    exe = root / "run.sh"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    ro = root / "readonly.txt"
    ro.write_text("ro\n")
    ro.chmod(0o444)
    (root / "link_file").symlink_to("src/f1.c")
    (root / "link_dir").symlink_to("src")
    (root / "dangling").symlink_to("nowhere")
    os.link(root / "src" / "f2.c", root / "hard.c")
    os.mkfifo(root / "pipe")


def probe_paths() -> list[str]:
    """Paths relative to the root (run with cwd = root) plus lexical variants."""
    return ["src/f0.c", "src/f7.c", "src/sub/deep/leaf.h", "include/a b.h", "empty", "run.sh", "readonly.txt",
            "link_file", "link_dir", "dangling", "hard.c", "pipe", "src", "src/sub", ".", "src/", "src/./f3.c",
            "src//f4.c", "src/sub/../f5.c", "./src/sub/deep/../../f6.c", "link_dir/f8.c", "link_dir/",
            # missing paths: ENOENT, and ENOTDIR through a file
            "missing", "src/missing.c", "src/f0.c/child", "missing_dir/x"]


@pytest.fixture
def project(tmp_path, vrift_env):
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    make_tree(root)
    vdir = Path(vrift_env["VRIFT_SHM_DIR"]) / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    return root, vdir


def run(cmd, env, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, **kw)


def split_atime(out: str) -> tuple[list[str], dict[str, str]]:
    """The probe's lines without the atime lines, and path -> first atime printed."""
    lines, atimes = [], {}
    for line in out.splitlines():
        if line.startswith("atime "):
            path, t = line[len("atime "):].rsplit(" ", 1)
            atimes.setdefault(path, t)
        else:
            lines.append(line)
    return lines, atimes


def test_c_program_sees_kernel_fields(project, probe, tmp_path, vrift_env):
    root, vdir = project
    paths = probe_paths()
    plain = run([str(probe), *paths], dict(vrift_env), root)
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    through = run([str(probe), *paths], env, root)
    assert plain.returncode == 0 and through.returncode == 0, through.stderr
    kernel_lines, _ = split_atime(plain.stdout)
    lib_lines, _ = split_atime(through.stdout)
    assert lib_lines == kernel_lines
    assert through.stderr == ""
    c = read_counters(counters)
    assert c["STAT_SERVED"] > 100, c
    assert c["PROCESSES"] == 1


def test_memory_answer_has_atime_equal_mtime(project, probe, vrift_env):
    root, vdir = project
    env = preload_env(vrift_env, root, vdir)
    out = run([str(probe), "src/f3.c"], env, root).stdout
    stat_line = next(l for l in out.splitlines() if l.startswith("stat "))
    atime = next(l for l in out.splitlines() if l.startswith("atime ")).split(" ")[2]
    assert atime == stat_line.split("mtime=")[1].split(" ")[0]


def test_python_os_stat_matches_kernel(project, vrift_env, tmp_path):
    root, vdir = project
    paths = probe_paths()
    plain = json.loads(run([sys.executable, "-c", PY_PROBE, *paths], dict(vrift_env), root).stdout)
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    through = run([sys.executable, "-c", PY_PROBE, *paths], env, root)
    assert through.returncode == 0, through.stderr
    assert json.loads(through.stdout) == plain
    assert read_counters(counters)["STAT_SERVED"] >= 2 * 15  # ninja/python names: stat64, lstat64


def test_absolute_paths_and_chdir(project, vrift_env, tmp_path):
    """Absolute paths, paths relative to a chdir'ed cwd, fchdir, and ../ out of a subdir."""
    root, vdir = project
    script = textwrap.dedent(f"""
        import os, json
        root = {str(root)!r}
        res = []
        res.append(os.stat(os.path.join(root, "src/f9.c")).st_size)
        os.chdir(os.path.join(root, "src/sub"))
        res.append(os.stat("deep/leaf.h").st_ino)
        res.append(os.stat("../f9.c").st_size)
        fd = os.open(os.path.join(root, "include"), os.O_RDONLY)
        os.fchdir(fd)
        res.append(os.stat("a b.h").st_size)
        res.append(os.stat("../src/f10.c").st_size)
        os.chdir("/")
        res.append(os.stat(os.path.relpath(os.path.join(root, "src/f11.c"), "/")).st_size)
        print(json.dumps(res))
    """)
    plain = run([sys.executable, "-c", script], dict(vrift_env), root)
    counters = counters_file(tmp_path / "counters")
    through = run([sys.executable, "-c", script], preload_env(vrift_env, root, vdir, counters=counters), root)
    assert through.returncode == 0, through.stderr
    assert json.loads(through.stdout) == json.loads(plain.stdout)
    assert read_counters(counters)["STAT_SERVED"] >= 6


def test_coreutils_stat_matches_kernel(project, vrift_env):
    root, vdir = project
    fmt = "%n %s %i %f %h %u %g %b %B %Y %Z %d"
    names = ["src/f5.c", "link_file", "src", "empty", "missing"]
    plain = run(["stat", "-c", fmt, *names], dict(vrift_env), root)
    through = run(["stat", "-c", fmt, *names], preload_env(vrift_env, root, vdir), root)
    assert (through.stdout, through.returncode) == (plain.stdout, plain.returncode)
    plain_l = run(["stat", "-L", "-c", fmt, "link_file", "link_dir"], dict(vrift_env), root)
    through_l = run(["stat", "-L", "-c", fmt, "link_file", "link_dir"], preload_env(vrift_env, root, vdir), root)
    assert through_l.stdout == plain_l.stdout


def tamper_size(vdir: Path, root: Path, rel: bytes, size: int) -> None:
    """TEST-ONLY: overwrite an entry's size in the VDir (and reseal it, as the writer would) to
    prove where answers come from."""
    off = entry_offset(vdir, rel)
    with open(vdir, "r+b") as f:
        f.seek(off)
        raw = bytearray(f.read(layout.ENTRY_SIZE))
        struct.pack_into("<q", raw, 56, size)
        f.seek(off)
        f.write(layout.seal(bytes(raw)))


def test_answers_come_from_memory_tampered_entry(project, vrift_env):
    root, vdir = project
    tamper_size(vdir, root, b"src/f4.c", 777777)
    code = "import os; print(os.stat('src/f4.c').st_size, os.lstat('link_file').st_size)"
    through = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir), root)
    assert through.stdout.split() == ["777777", str(len("src/f1.c"))]
    plain = run([sys.executable, "-c", code], dict(vrift_env), root)
    assert plain.stdout.split()[0] == str(4 * 301)


def test_dirty_entry_passes_through(project, vrift_env, tmp_path):
    root, vdir = project
    tamper_size(vdir, root, b"src/f4.c", 777777)
    (root / "src" / "f4.c").write_bytes(b"new content")
    set_flags(vdir, b"src/f4.c", layout.F_DIRTY)
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    out = run([sys.executable, "-c", "import os; print(os.stat('src/f4.c').st_size)"], env, root)
    assert out.stdout.strip() == str(len(b"new content"))
    c = read_counters(counters)
    assert c["STAT_PASSED"] >= 1


def test_deleted_entry_is_asked_of_the_kernel(project, vrift_env, tmp_path):
    """A tombstone is not an answer: a process without the library may have made the path again
    (tests/integration/test_robust_links.py)."""
    root, vdir = project
    (root / "src" / "f12.c").unlink()
    set_flags(vdir, b"src/f12.c", layout.F_DELETED)
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    code = "import os\ntry: os.stat('src/f12.c')\nexcept FileNotFoundError: print('ENOENT')"
    assert run([sys.executable, "-c", code], env, root).stdout.strip() == "ENOENT"
    assert read_counters(counters)["STAT_PASSED"] >= 1


def test_complete_dir_miss_is_enoent_from_memory_unless_dirty(project, vrift_env, tmp_path):
    root, vdir = project
    set_flags(vdir, b"src/sub/deep", layout.F_COMPLETE_DIR)
    code = ("import os\nfor p in ('src/sub/deep/nope.h', 'src/sub/deep/leaf.h'):\n"
            "    try: print(os.stat(p).st_size)\n    except FileNotFoundError: print('ENOENT')")
    counters = counters_file(tmp_path / "counters")
    out = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir, counters=counters), root)
    assert out.stdout.split() == ["ENOENT", "5"]
    assert read_counters(counters)["STAT_SERVED"] == 2
    # a file created under a DIRTY complete directory must be seen
    (root / "src" / "sub" / "deep" / "nope.h").write_text("now\n")
    set_flags(vdir, b"src/sub/deep", layout.F_DIRTY)
    out = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir), root)
    assert out.stdout.split() == ["4", "5"]


def test_corrupt_vdir_falls_back_with_right_answers(project, vrift_env, tmp_path, probe):
    root, vdir = project
    tamper_size(vdir, root, b"src/f4.c", 777777)
    with open(vdir, "r+b") as f:
        f.write(b"XXXX")  # bad magic
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    plain = run([str(probe), "src/f4.c", "missing"], dict(vrift_env), root)
    through = run([str(probe), "src/f4.c", "missing"], env, root)
    assert split_atime(through.stdout)[0] == split_atime(plain.stdout)[0]
    c = read_counters(counters)
    assert c["FALLBACKS"] == 1 and c["STAT_SERVED"] == 0


@pytest.mark.parametrize("setting", [{"VRIFT_ENABLED": "0"}, {"VRIFT_FALLBACK_MODE": "1"}, "no-vdir"])
def test_disabled_or_missing_vdir_passes_through(project, vrift_env, setting):
    root, vdir = project
    tamper_size(vdir, root, b"src/f4.c", 777777)
    env = preload_env(vrift_env, root, vdir)
    if setting == "no-vdir":
        env["VRIFT_VDIR"] = str(vdir) + ".absent"
    else:
        env.update(setting)
    out = run([sys.executable, "-c", "import os; print(os.stat('src/f4.c').st_size)"], env, root)
    assert out.stdout.strip() == str(4 * 301)


def test_retired_vdir_is_remapped(project, vrift_env):
    """The daemon grows the table by renaming a new file over the old name and marking the
    old one RETIRED: a running process must switch to the new file."""
    root, vdir = project
    env = preload_env(vrift_env, root, vdir)
    code = "import os, sys\nfor line in sys.stdin:\n    print(os.stat('src/f4.c').st_size, flush=True)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=root, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("1\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == str(4 * 301)
        old = vdir.with_name(vdir.name + ".old")
        os.link(vdir, old)  # keeps a name for the file the process maps
        new = vdir.with_name(vdir.name + ".new")
        build_vdir(new, root, index_tree(root))
        tamper_size(new, root, b"src/f4.c", 4242)
        os.rename(new, vdir)  # the old mapping stays valid for the running process
        proc.stdin.write("2\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == str(4 * 301)  # not retired yet: old file
        with open(old, "r+b") as f:  # what the daemon does after the rename
            f.seek(96)
            flags = struct.unpack("<I", f.read(4))[0]
            f.seek(96)
            f.write(struct.pack("<I", flags | layout.H_RETIRED))
        proc.stdin.write("3\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "4242"
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)


def test_library_compiles_warning_free(tmp_path):
    """The package build uses -Wall -Wextra; this keeps it warning-free (-Werror)."""
    src = Path(__file__).resolve().parents[2] / "vrift" / "preload"
    native = src.parent / "native"
    out = tmp_path / "libvrift.so"
    r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden", "-std=gnu11", "-fPIC",
                        "-shared", f"-I{native}", f"-I{src}", *sorted(map(str, src.glob("*.c"))), "-o", str(out),
                        "-ldl"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    exported = subprocess.run(["nm", "-D", "--defined-only", str(out)], capture_output=True, text=True).stdout
    names = {line.split()[-1] for line in exported.splitlines()}
    # what ninja, make, gcc/cc1, as and coreutils import on Debian 12 (docs/preload.md)
    assert {"stat64", "__xstat", "__lxstat", "stat", "lstat", "access", "eaccess", "statx", "fstatat",
            "open", "fopen", "close", "fclose", "rename", "unlink", "mkdir", "chdir", "fchdir"} <= names
    assert not any(n.startswith("vrift_") for n in names)  # internals stay hidden


TOOLS_PROJECT = {
    "a.h": "#define A 1\n",
    "main.c": '#include "a.h"\nint main(void) { return A - 1; }\n',
    "build.ninja": "rule cc\n  command = gcc -c $in -o $out\nbuild main.o: cc main.c | a.h\n",
    "Makefile": "main.o: main.c a.h\n\tgcc -c main.c -o main.o\n",
}


@pytest.mark.parametrize("tool", ["ninja", "make", "gcc"])
def test_real_build_tools_are_served_from_memory(tool, tmp_path, vrift_env):
    """ninja imports stat64, make the legacy __xstat, gcc stat/lstat/access: each must be
    answered from memory, with the same outcome as without the library."""
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    for name, text in TOOLS_PROJECT.items():
        (root / name).write_text(text)
    cmd = {"ninja": ["ninja"], "make": ["make"], "gcc": ["gcc", "-fsyntax-only", "main.c"]}[tool]
    run(cmd, dict(vrift_env), root)  # a first build: what follows is a no-op
    plain = run(cmd, dict(vrift_env), root)
    vdir = Path(vrift_env["VRIFT_SHM_DIR"]) / "vrift_vdir_tools"
    build_vdir(vdir, root, index_tree(root))
    counters = counters_file(tmp_path / "counters")
    through = run(cmd, preload_env(vrift_env, root, vdir, counters=counters), root)
    assert (through.returncode, through.stdout) == (plain.returncode, plain.stdout), through.stderr
    if tool != "gcc":
        assert "no work to do" in through.stdout or "up to date" in through.stdout
    assert read_counters(counters)["STAT_SERVED"] >= (1 if tool == "gcc" else 2)


def test_open_of_certainly_absent_path_is_enoent_from_memory(project, vrift_env, tmp_path):
    """A compiler's failed include probes: open() under a COMPLETE_DIR answers ENOENT
    without the kernel; an existing file still opens."""
    root, vdir = project
    set_flags(vdir, b"include", layout.F_COMPLETE_DIR)
    code = ("import os\nfor p in ('include/none.h', 'include/a b.h'):\n"
            "    try: os.close(os.open(p, os.O_RDONLY)); print('opened')\n"
            "    except FileNotFoundError: print('ENOENT')")
    counters = counters_file(tmp_path / "counters")
    out = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir, counters=counters), root)
    assert out.stdout.split() == ["ENOENT", "opened"]
    assert read_counters(counters)["STAT_SERVED"] == 1
