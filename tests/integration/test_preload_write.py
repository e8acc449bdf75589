"""The preload library's write path and mutating calls, through real processes.

Without a daemon the library must still leave exactly the bytes a plain run leaves, no
staging file behind, and the touched entries DIRTY (so readers ask the kernel).  Shared
fds across fork/exec (shell redirection, tee, make, a forked child) are the hard cases.
"""
from __future__ import annotations

import os
import signal
import stat as statmod
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from support.preload import (build_vdir, compile_c, counters_file, entry_flags, index_tree, preload_env,
                             read_counters)
from vrift.vdir import layout

WRITER = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void put(int fd, const char *s) { if (write(fd, s, strlen(s)) != (ssize_t)strlen(s)) _exit(3); }

int main(void) {
    int fd = open("out/new.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 1;
    put(fd, "fresh\n");
    if (close(fd) != 0) return 2;
    fd = open("keep_rdwr.txt", O_RDWR);              /* no O_TRUNC: old bytes stay */
    put(fd, "AB");
    close(fd);
    fd = open("keep_append.txt", O_WRONLY | O_APPEND);
    put(fd, "tail\n");
    close(fd);
    fd = openat(AT_FDCWD, "trunc.txt", O_WRONLY | O_TRUNC);
    put(fd, "short\n");
    close(fd);
    fd = creat("out/creat.txt", 0600);
    put(fd, "creat\n");
    close(fd);
    FILE *f = fopen("out/fopen_w.txt", "w");
    fputs("fopen w\n", f);
    fclose(f);
    f = fopen("keep_fopen_a.txt", "a");
    fputs("more\n", f);
    fclose(f);
    f = fopen("keep_fopen_rplus.txt", "r+");
    fputs("XY", f);
    fclose(f);
    f = fopen("out/freopen.txt", "w");
    f = freopen("out/freopen2.txt", "w", f);
    fputs("reopened\n", f);
    fclose(f);
    fd = open("run.sh", O_WRONLY | O_TRUNC);         /* existing 0755 file keeps its mode */
    put(fd, "#!/bin/sh\necho rewritten\n");
    close(fd);
    if (open("out/exists.txt", O_WRONLY | O_CREAT | O_EXCL, 0644) >= 0) return 4;
    if (open("out/none.txt", O_WRONLY) >= 0) return 5;
    printf("ok\n");
    return 0;
}
"""


def make_project(root: Path) -> None:
    (root / "out").mkdir(parents=True)
    for name in ("keep_rdwr.txt", "keep_append.txt", "keep_fopen_a.txt", "keep_fopen_rplus.txt"):
        (root / name).write_text("0123456789\n")
    (root / "trunc.txt").write_text("long long long content\n")
    (root / "out" / "exists.txt").write_text("x\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "f.h").write_text("f\n")
    (root / "linked_a").write_text("shared inode\n")
    os.link(root / "linked_a", root / "linked_b")


@pytest.fixture
def project(tmp_path, vrift_env):
    root = Path(os.path.realpath(tmp_path / "proj"))
    root.mkdir()
    make_project(root)
    vdir = Path(vrift_env["VRIFT_SHM_DIR"]) / "vrift_vdir_test"
    build_vdir(vdir, root, index_tree(root))
    return root, vdir


@pytest.fixture
def twin(tmp_path):
    """The same project, for the plain (no library) run to compare with."""
    root = Path(os.path.realpath(tmp_path / "plain"))
    root.mkdir()
    make_project(root)
    return root


def tree_bytes(root: Path) -> dict[str, tuple[bytes | str, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".vrift"]
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if statmod.S_ISLNK(st.st_mode):
                out[rel] = (os.readlink(p), statmod.S_IMODE(st.st_mode))
            elif statmod.S_ISDIR(st.st_mode):
                out[rel] = ("<dir>", statmod.S_IMODE(st.st_mode))
            else:
                out[rel] = (p.read_bytes(), statmod.S_IMODE(st.st_mode))
    return out


def staging_leftovers(root: Path) -> list[str]:
    staging = root / ".vrift" / "staging"
    return sorted(str(p.relative_to(staging)) for p in staging.rglob("*")) if staging.exists() else []


def run(cmd, env, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60, **kw)


def test_c_program_writes_without_daemon(project, twin, vrift_env, tmp_path):
    root, vdir = project
    prog = compile_c(WRITER, tmp_path / "writer")
    plain = run([str(prog)], dict(vrift_env), twin)
    counters = counters_file(tmp_path / "counters")
    through = run([str(prog)], preload_env(vrift_env, root, vdir, counters=counters), root)
    assert (plain.returncode, plain.stdout) == (0, "ok\n")
    assert (through.returncode, through.stdout) == (0, "ok\n"), through.stderr
    assert tree_bytes(root) == tree_bytes(twin)
    assert staging_leftovers(root) == []
    c = read_counters(counters)
    assert c["COMMIT_LOCAL"] >= 9 and c["COMMITTED"] == 0
    # entries written without a daemon stay DIRTY: readers go to the kernel
    for rel in (b"keep_rdwr.txt", b"trunc.txt", b"run.sh", b"out"):
        assert entry_flags(vdir, rel) & layout.F_DIRTY, rel


def test_stat_after_write_sees_new_file(project, vrift_env):
    root, vdir = project
    code = textwrap.dedent("""
        import os
        with open('trunc.txt', 'w') as f:
            f.write('abc')
        print(os.stat('trunc.txt').st_size)
        with open('trunc.txt', 'a') as f:
            f.write('de')
            f.flush()
            print(os.stat('trunc.txt').st_size)   # own unclosed write: published first
        print(os.stat('trunc.txt').st_size)
    """)
    out = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir), root)
    assert out.stdout.split() == ["3", "5", "5"], out.stderr


def test_output_appears_atomically_at_close(project, vrift_env):
    """Another process sees the old file until the writer closes."""
    root, vdir = project
    code = textwrap.dedent("""
        import sys
        f = open('trunc.txt', 'w')
        f.write('new bytes')
        f.flush()
        print('written', flush=True)
        sys.stdin.readline()
        f.close()
        print('closed', flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=preload_env(vrift_env, root, vdir), cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "written\n"
        assert (root / "trunc.txt").read_text() == "long long long content\n"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "closed\n"
        assert (root / "trunc.txt").read_text() == "new bytes"
    finally:
        proc.kill()
        proc.wait()


def test_killed_writer_leaves_real_file_untouched(project, vrift_env):
    root, vdir = project
    code = "f = open('trunc.txt', 'w'); f.write('partial'); f.flush(); print('w', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=preload_env(vrift_env, root, vdir), cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "w\n"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (root / "trunc.txt").read_text() == "long long long content\n"
    # the daemon rolls staging back when the client's connection drops; none here
    assert len(staging_leftovers(root)) == 1  # <pid>.<n>


SHELL_CASES = {
    "redirect": "printf 'abc\\n' > out/r.txt",
    "redirect_child_writes": "sh -c 'echo from child' > out/c.txt",
    "group_with_children": "{ echo one; sh -c 'echo two'; echo three; } > out/g.txt",
    "append_redirect": "echo added >> keep_append.txt",
    "tee": "echo teed | tee out/t1.txt out/t2.txt > /dev/null",
    "tee_append": "echo teed | tee -a keep_rdwr.txt > /dev/null",
    "subshell_background": "( sleep 0.1; echo late ) > out/bg.txt & echo early > out/fg.txt; wait",
    "fd_kept_by_shell": "exec 3> out/fd3.txt; echo a >&3; sh -c 'echo b >&3'; echo c >&3; exec 3>&-",
    "cp_and_mv": "cp run.sh out/copy.sh && mv out/copy.sh out/moved.sh && cp -r dir out/dircopy",
    "rewrite_in_place": "sed -i s/shared/SHARED/ linked_a",
}


@pytest.mark.parametrize("case", sorted(SHELL_CASES))
def test_shell_writes_match_plain(case, project, twin, vrift_env):
    root, vdir = project
    script = SHELL_CASES[case]
    plain = run(["bash", "-c", script], dict(vrift_env), twin)
    through = run(["bash", "-c", script], preload_env(vrift_env, root, vdir), root)
    assert plain.returncode == 0, plain.stderr
    assert (through.returncode, through.stdout) == (0, plain.stdout), through.stderr
    assert tree_bytes(root) == tree_bytes(twin)
    assert staging_leftovers(root) == []
    # whatever changed is either DIRTY or reads the same through the library
    check = run(["bash", "-c", "find . -path ./.vrift -prune -o -print0 | xargs -0 stat -c '%n %s %i %Y %f'"],
                preload_env(vrift_env, root, vdir), root)
    plain_check = run(["bash", "-c", "find . -path ./.vrift -prune -o -print0 | xargs -0 stat -c '%n %s %i %Y %f'"],
                      dict(vrift_env), root)
    assert check.stdout == plain_check.stdout


def test_make_writes_through_inherited_fds(project, twin, vrift_env):
    makefile = textwrap.dedent("""\
        all: out/a.txt out/b.txt
        \t@echo built all
        out/a.txt:
        \t@echo alpha > $@
        out/b.txt: out/a.txt
        \t@cat out/a.txt > $@; echo beta >> $@
        """)
    root, vdir = project
    for r in (root, twin):
        (r / "Makefile").write_text(makefile)
    build_vdir(vdir, root, index_tree(root))
    cmd = "make -j2 > out/make.log 2>&1"
    plain = run(["bash", "-c", cmd], dict(vrift_env), twin)
    through = run(["bash", "-c", cmd], preload_env(vrift_env, root, vdir), root)
    assert plain.returncode == through.returncode == 0
    assert tree_bytes(root) == tree_bytes(twin)
    assert staging_leftovers(root) == []


FORK_CASES = {
    # parent writes, forks; the child appends and exits with _exit; the parent closes last
    "child_first": """
        import os
        f = open('out/fork.txt', 'w'); f.write('parent1\\n'); f.flush()
        pid = os.fork()
        if pid == 0:
            f.write('child\\n'); f.flush(); os._exit(0)
        os.waitpid(pid, 0)
        f.write('parent2\\n'); f.close()
    """,
    # the parent closes first while the child still writes
    "parent_first": """
        import os, time
        r, w = os.pipe()
        f = open('out/fork.txt', 'w'); f.write('parent\\n'); f.flush()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1); f.write('child after parent closed\\n'); f.close(); os._exit(0)
        f.close(); os.write(w, b'x'); os.waitpid(pid, 0)
    """,
    # written, not closed, then exec: the new image has no table, the data must be there
    "exec_without_close": """
        import os
        fd = os.open('out/exec.txt', os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.write(fd, b'before exec\\n')
        os.execvp('true', ['true'])
    """,
    # _exit without close
    "quick_exit": """
        import os
        fd = os.open('out/quick.txt', os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b'quick\\n')
        os._exit(0)
    """,
    # subprocess (vfork/posix_spawn) reading a file its parent has not closed yet
    "child_reads_unclosed": """
        import subprocess
        f = open('out/script.sh', 'w'); f.write('echo from script > out/script.out\\n'); f.flush()
        subprocess.run(['sh', 'out/script.sh'], check=True)
        f.close()
    """,
    # a child inherits the fd through subprocess and writes into it
    "subprocess_stdout": """
        import subprocess
        with open('out/sub.txt', 'w') as f:
            f.write('head\\n'); f.flush()
            subprocess.run(['sh', '-c', 'echo body'], stdout=f, check=True)
            f.write('foot\\n')
    """,
}


@pytest.mark.parametrize("case", sorted(FORK_CASES))
def test_fork_exec_cases_match_plain(case, project, twin, vrift_env):
    root, vdir = project
    code = textwrap.dedent(FORK_CASES[case])
    plain = run([sys.executable, "-c", code], dict(vrift_env), twin)
    through = run([sys.executable, "-c", code], preload_env(vrift_env, root, vdir), root)
    assert plain.returncode == 0, plain.stderr
    assert through.returncode == 0, through.stderr
    assert tree_bytes(root) == tree_bytes(twin)
    assert staging_leftovers(root) == []


MUTATIONS = textwrap.dedent("""
    import os, json, time
    os.rename('trunc.txt', 'out/renamed.txt')
    os.unlink('keep_rdwr.txt')
    os.mkdir('out/newdir')
    os.rmdir('out/newdir')
    os.mkdir('out/kept')
    os.symlink('run.sh', 'out/sym')
    os.link('run.sh', 'out/hard')
    os.chmod('keep_append.txt', 0o600)
    os.truncate('keep_fopen_a.txt', 3)
    os.utime('keep_fopen_rplus.txt', ns=(1_000_000_000, 2_000_000_123))
    os.rename('dir', 'dir2')
    res = {}
    for p in ['trunc.txt', 'out/renamed.txt', 'keep_rdwr.txt', 'out/newdir', 'out/kept', 'out/sym',
              'run.sh', 'out/hard', 'keep_append.txt', 'keep_fopen_a.txt', 'keep_fopen_rplus.txt',
              'dir', 'dir/sub/f.h', 'dir2/sub/f.h', 'out', '.']:
        try:
            st = os.lstat(p)
            res[p] = [st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns, st.st_ino]
        except OSError as e:
            res[p] = e.errno
    print(json.dumps(res))
""")


def test_mutating_calls_then_stat_tells_the_truth(project, vrift_env, tmp_path):
    """Every mutation is visible to the same and to later processes at once, daemon or not."""
    root, vdir = project
    counters = counters_file(tmp_path / "counters")
    env = preload_env(vrift_env, root, vdir, counters=counters)
    through = run([sys.executable, "-c", MUTATIONS], env, root)
    assert through.returncode == 0, through.stderr
    # the same stats from a fresh process under the library and from the kernel
    probe = MUTATIONS[MUTATIONS.index("res = {}"):]
    again = run([sys.executable, "-c", "import os, json\n" + probe], env, root)
    kernel = run([sys.executable, "-c", "import os, json\n" + probe], dict(vrift_env), root)
    assert through.stdout == again.stdout == kernel.stdout
    for rel in (b"trunc.txt", b"keep_rdwr.txt", b"run.sh", b"keep_append.txt", b"dir", b"dir/sub/f.h", b"out"):
        assert entry_flags(vdir, rel) & layout.F_DIRTY, rel


def test_hard_linked_name_is_dirtied_by_a_write_through_the_other(project, vrift_env):
    root, vdir = project
    out = run([sys.executable, "-c", "open('linked_a', 'a').write('more\\n')\n"
               "import os; print(os.stat('linked_b').st_size)"], preload_env(vrift_env, root, vdir), root)
    assert out.stdout.strip() == str(len("shared inode\nmore\n"))
    assert entry_flags(vdir, b"linked_b") & layout.F_DIRTY


def test_writes_outside_the_project_are_untouched(project, vrift_env, tmp_path):
    root, vdir = project
    outside = tmp_path / "elsewhere.txt"
    counters = counters_file(tmp_path / "counters")
    out = run(["bash", "-c", f"echo hi > {outside}; cat {outside}"],
              preload_env(vrift_env, root, vdir, counters=counters), root)
    assert out.stdout == "hi\n"
    c = read_counters(counters)
    assert c["COMMIT_LOCAL"] == c["DIRECT"] == c["PUBLISHED"] == 0


def test_a_staging_directory_removed_mid_build_is_made_again(project, vrift_env):
    """`rm -rf .vrift/staging` while a process that already wrote is still running (and a child
    it forks, which inherits what the library knew): their next new files are written, staged,
    not refused."""
    root, vdir = project
    code = textwrap.dedent("""
        import os
        open('first.txt', 'w').write('one')
        print('w', flush=True); input()
        open('second.txt', 'w').write('two')
        pid = os.fork()
        if pid == 0:
            open('third.txt', 'w').write('three')
            os._exit(0)
        os.waitpid(pid, 0)
        print('done', flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=preload_env(vrift_env, root, vdir), cwd=root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "w\n"
        staging = root / ".vrift" / "staging"
        assert staging.is_dir()
        for f in staging.iterdir():
            f.unlink()
        staging.rmdir()
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n", proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert [(root / n).read_text() for n in ("first.txt", "second.txt", "third.txt")] == ["one", "two", "three"]
    assert staging_leftovers(root) == []
