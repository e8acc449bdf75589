"""Programs whose reads the library cannot see (docs/cache.md, "Uncacheable"): a Go program makes
its system calls itself, so an edit of what it read would be missed by a replay.  Recognised at
exec by its ELF sections, it runs in every build.  The program here reads its input with raw
syscalls, as Go does, and carries a `.go.buildinfo` section as every Go binary does."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.build import let_clock_tick, plain, require_tools, vrift
from support.daemon import daemons  # noqa: F401
from test_cache_wrap import cache_counts, needs_c_side

pytestmark = needs_c_side

RAWCAT = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[4096];
    long fd = syscall(SYS_openat, AT_FDCWD, argv[1], O_RDONLY), n;
    if (fd < 0 || argc != 3) return 2;
    FILE *out = fopen(argv[2], "w");
    while ((n = syscall(SYS_read, fd, buf, sizeof buf)) > 0) fwrite(buf, 1, (size_t)n, out);
    return fclose(out) != 0;
}
"""
MAKEFILE = """\
all: direct.txt shell.txt
direct.txt: in.txt
\t./tools/goish in.txt direct.txt
shell.txt: in.txt
\t./tools/goish in.txt shell.tmp && mv shell.tmp shell.txt
"""


def go_like_program(tools: Path) -> Path:
    tools.mkdir()
    (tools / "rawcat.c").write_text(RAWCAT)
    subprocess.run(["cc", "-O1", "-o", tools / "rawcat", tools / "rawcat.c"], check=True, timeout=60)
    (tools / "buildinfo").write_bytes(b"\xff Go buildinf:\x08\x02")
    subprocess.run(["objcopy", "--add-section", f".go.buildinfo={tools / 'buildinfo'}", tools / "rawcat",
                    tools / "goish"], check=True, timeout=60)
    return tools / "goish"


def project(root: Path) -> Path:
    root.mkdir()
    go_like_program(root / "tools")
    (root / "Makefile").write_text(MAKEFILE)
    (root / "in.txt").write_text("first\n")
    (root / ".vrift.yaml").write_text("")
    return root


def test_a_go_binary_runs_every_time_and_sees_the_edit(tmp_path, daemons):
    require_tools("make", "cc", "objcopy")
    ref, proj = project(tmp_path / "plain"), project(tmp_path / "p")
    plain("make", cwd=ref)
    cold = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    # the root's own image (make runs it directly) and a member's exec (under the shell); the
    # shell, uncacheable from then on, starts `mv` as an action of its own (uncacheable too)
    assert cache_counts(cold.stderr) == (0, 3, 3), cold.stderr
    assert len([line for line in cold.stderr.splitlines() if line.startswith("vrift: cache uncacheable: ")
                and "Go binary (raw system calls)" in line]) == 2, cold.stderr

    let_clock_tick()
    for root in (ref, proj):
        (root / "in.txt").write_text("second\n")
    plain("make", cwd=ref)
    again = vrift("wrap", "--explain", "make", cwd=proj, check=True)
    assert cache_counts(again.stderr) == (0, 3, 3), again.stderr
    for name in ("direct.txt", "shell.txt"):
        assert (proj / name).read_text() == (ref / name).read_text() == "second\n", name


def test_the_same_program_without_the_go_sections_is_cacheable(tmp_path, daemons):
    """The check looks at sections, not at what a program imports: cc1, gcc, Python and
    libstdc++ import syscall() too (for futexes), so that cannot be a sign."""
    require_tools("make", "cc", "objcopy")
    proj = project(tmp_path / "p")
    (proj / "tools/goish").unlink()
    (proj / "tools/rawcat").rename(proj / "tools/goish")
    cold = vrift("wrap", "--explain", "make", "direct.txt", cwd=proj, check=True)
    assert cache_counts(cold.stderr) == (0, 1, 0), cold.stderr
