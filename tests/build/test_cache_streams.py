"""Recording changes nothing the tool sees (docs/cache.md, "stdout and stderr"): real make builds
under `vrift wrap`, in a pseudo-terminal and into pipes and files, compared byte for byte with
the same build run plainly — on the recording run (a miss) and on the replay (a hit).

The terminal bytes are what the test's pty master reads: colour escapes, `\\r\\n` from the
terminal's own output processing, the order of every write across stdout and stderr."""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from support.build import parse_summary, require_tools, tool_env
from support.daemon import daemons  # noqa: F401
from support.preload import compile_c

WARNING_C = "int f(int x) { int unused; return x; }\n"

# writes alternately to fd 1 and fd 2 with write(2): the order is the kernel's, nothing buffers
ALTERNATE_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    (void)argc;
    for (int i = 0; i < 8; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "%s %s %d\n", argv[1], i % 2 ? "err" : "out", i);
        write(1 + i % 2, line, (size_t)n);
    }
    return 0;
}
"""

# what a tool learns about its streams (not their file type: a regular file is a pipe to the tool
# while recording, docs/cache.md)
PROBE_C = r"""
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>
int main(void) {
    for (int fd = 0; fd <= 2; fd++) {
        struct winsize ws = {0};
        int tty = isatty(fd);
        if (tty) ioctl(fd, TIOCGWINSZ, &ws);
        printf("fd%d tty=%d cols=%d rows=%d\n", fd, tty, ws.ws_col, ws.ws_row);
    }
    fflush(stdout);
    /* stdio line-buffers a terminal and fully buffers anything else: the interleaving tells */
    printf("buffered out\n");
    fprintf(stderr, "unbuffered err\n");
    printf("buffered out again\n");
    return 0;
}
"""

MAKEFILE = """\
all: build/w.o build/alt.txt build/shell.txt build/exec.txt build/probe.txt
build/w.o: w.c
\tcc -Wall -fdiagnostics-color=auto -c w.c -o build/w.o
build/alt.txt:
\t./alternate recipe; touch $@
build/shell.txt:
\tfor i in 1 2 3; do echo out$$i; echo err$$i >&2; sh -c "echo child-out$$i; echo child-err$$i >&2"; done; touch $@
build/exec.txt:
\texec sh -c 'echo a; echo b >&2; exec sh -c "echo c; echo d >&2; touch $@"'
build/probe.txt:
\t./probe; touch $@
"""
OUTPUTS = ["build/w.o", "build/alt.txt", "build/shell.txt", "build/exec.txt", "build/probe.txt"]


@pytest.fixture
def project(tmp_path, daemons):
    require_tools("make", "cc")
    root = Path(os.path.realpath(tmp_path)) / "p"
    (root / "build").mkdir(parents=True)
    (root / ".vrift.yaml").write_text("")
    (root / "w.c").write_text(WARNING_C)
    (root / "Makefile").write_text(MAKEFILE)
    compile_c(ALTERNATE_C, root / "alternate")
    compile_c(PROBE_C, root / "probe")
    return root


def clean(root: Path) -> None:
    for rel in OUTPUTS:
        (root / rel).unlink(missing_ok=True)


def env_for(wrapped: bool) -> dict:
    env = tool_env(with_vrift_on_path=wrapped)
    env["TERM"] = "xterm"
    env.pop("GCC_COLORS", None)
    env.pop("COLUMNS", None)
    return env


def command(wrapped: bool, *args: str, explain: bool = False) -> list[str]:
    wrap = [sys.executable, "-m", "vrift", "wrap", *(["--explain"] if explain else []), "make"]
    return [*wrap, *args] if wrapped else ["make", *args]


def in_pty(argv, cwd, env, size=(100, 30), stdout=None) -> tuple[bytes, int]:
    """Run `argv` with a new pty as stdin and stderr (and stdout unless given); everything the
    terminal received, once every holder of the pty has closed it (so no relay is left), and
    the exit status."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave if stdout is None else stdout,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    got = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: no process holds the terminal any longer
                break
            if not chunk:
                break
            got += chunk
    finally:
        os.close(master)
    return bytes(got), proc.wait(timeout=120)


def split_summary(text: bytes, newline: bytes = b"\n") -> tuple[bytes, dict]:
    """The build's own output, and the wrapper's summary (its last line)."""
    lines = text.rstrip(newline).split(newline)
    ours = [line for line in lines if line.startswith(b"vrift: ")]  # the summary, a first-build note
    body = newline.join(line for line in lines if not line.startswith(b"vrift: "))
    summary = parse_summary(ours[-1].decode())
    return (body + newline if body else b""), summary


def counts(summary: dict) -> tuple[int, int]:
    """(hits, misses) of the summary."""
    return summary["cache"][0], summary["cache"][1]


def test_a_terminal_sees_the_same_bytes_plain_on_the_recording_and_on_the_replay(project):
    plain, status = in_pty(command(False), project, env_for(False))
    assert status == 0, plain
    assert b"\x1b[01;35m\x1b[Kwarning: " in plain, "gcc colours its warning on a terminal"
    assert b"fd1 tty=1 cols=100 rows=30" in plain and b"fd2 tty=1 cols=100 rows=30" in plain
    for run, expect in (("miss", (0, len(OUTPUTS))), ("hit", (len(OUTPUTS), 0))):
        clean(project)
        got, status = in_pty(command(True), project, env_for(True))
        assert status == 0, got
        body, summary = split_summary(got, b"\r\n")
        assert counts(summary) == expect, (run, summary)
        assert body == plain, run


def test_stdout_into_a_pipe_and_stderr_on_the_terminal(project):
    """`make | cat > log`: the tool sees a pipe on fd 1 and the terminal on fd 2 — two
    destinations, each gets exactly what it got from the plain build."""
    results = []
    for wrapped in (False, True, True):
        clean(project)
        log = project.parent / "log"
        with open(log, "wb") as f:
            cat = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=f)
            term, status = in_pty(command(wrapped), project, env_for(wrapped), stdout=cat.stdin)
            cat.stdin.close()
            assert cat.wait(timeout=60) == 0 and status == 0
        if wrapped:
            term, summary = split_summary(term, b"\r\n")
            results.append(counts(summary))
        if not wrapped:
            plain = (log.read_bytes(), term)
            assert b"fd1 tty=0 cols=0 rows=0" in plain[0] and b"fd2 tty=1" in plain[0]
            assert b"\x1b[01;35m" in term, "stderr is still a terminal: colours"
        else:
            assert (log.read_bytes(), term) == plain
    assert results == [(0, len(OUTPUTS)), (len(OUTPUTS), 0)]


@pytest.mark.parametrize("redirect", ["2>&1 | cat > log", "> log 2>&1"])
def test_merged_streams_keep_their_order_miss_and_hit(project, redirect):
    logs = []
    for wrapped in (False, True, True):
        clean(project)
        log = project / "log"
        cmd = " ".join(command(wrapped))
        done = subprocess.run(["sh", "-c", f"{cmd} {redirect}"], cwd=project, env=env_for(wrapped), timeout=120)
        assert done.returncode == 0
        data = log.read_bytes()
        if wrapped:
            data, summary = split_summary(data)
            logs.append((data, counts(summary)))
        else:
            plain = data
    assert b"recipe out 0\nrecipe err 1\nrecipe out 2\n" in plain
    assert logs == [(plain, (0, len(OUTPUTS))), (plain, (len(OUTPUTS), 0))]


def test_separate_files_get_what_they_got_plain(project):
    results = []
    for wrapped in (False, True, True):
        clean(project)
        out, err = project.parent / "out", project.parent / "err"
        with open(out, "wb") as o, open(err, "wb") as e:
            done = subprocess.run(command(wrapped), cwd=project, env=env_for(wrapped), stdout=o, stderr=e,
                                  stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == 0
        streams = [out.read_bytes(), err.read_bytes()]
        if wrapped:
            streams[1], summary = split_summary(streams[1])
            results.append((streams, counts(summary)))
        else:
            plain = streams
    assert b"recipe err 1\nrecipe err 3\n" in plain[1]
    assert results == [(plain, (0, len(OUTPUTS))), (plain, (len(OUTPUTS), 0))]


def test_what_the_tool_saw_is_part_of_the_key(project):
    """A recording made on a terminal is not replayed into a pipe (its colours would be wrong),
    nor on a terminal of another width (gcc fits its diagnostics to it); one made into a pipe is
    not replayed onto a terminal."""
    def pty_run(size=(100, 30)):
        got, status = in_pty(command(True, "build/w.o"), project, env_for(True), size=size)
        assert status == 0, got
        return split_summary(got, b"\r\n")

    def pipe_run():
        done = subprocess.run(command(True, "build/w.o"), cwd=project, env=env_for(True), capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode == 0
        return done.stderr

    body, summary = pty_run()
    assert counts(summary) == (0, 1) and b"\x1b[01;35m" in body
    clean(project)
    err = pipe_run()
    assert b"\x1b[" not in err and parse_summary(err.decode())["cache"][:2] == (0, 1), err
    clean(project)
    body, summary = pty_run(size=(60, 30))
    assert counts(summary) == (0, 1), "another terminal width is another key"
    for size in ((100, 30), (60, 30)):
        clean(project)
        body, summary = pty_run(size)
        assert counts(summary) == (1, 0) and b"\x1b[01;35m" in body
    clean(project)
    err = pipe_run()
    assert b"\x1b[" not in err and parse_summary(err.decode())["cache"][:2] == (1, 0), err


def test_a_background_writer_makes_the_action_uncacheable_and_its_output_still_arrives(project):
    (project / "Makefile").write_text("build/bg.txt:\n\t(sleep 0.3; echo late) & echo now; touch $@\n")
    for _ in range(2):
        (project / "build/bg.txt").unlink(missing_ok=True)
        got, status = in_pty(command(True, explain=True), project, env_for(True))
        assert status == 0
        assert b"now\r\n" in got and b"late\r\n" in got, "the relay passes on what comes after the root ended"
        assert b"uncacheable: /bin/sh -c (sleep 0.3; echo late) & echo now; touch build/bg.txt: " \
               b"a process of the action did not finish" in got, got


def test_a_destination_closed_early_is_not_recorded(project):
    """`make | head -1`: what the channel still held cannot be delivered: not cached."""
    (project / "Makefile").write_text("build/many.txt:\n\tseq 1 30000; touch $@\n")
    for _ in range(2):
        (project / "build/many.txt").unlink(missing_ok=True)
        cmd = " ".join(command(True, explain=True))
        done = subprocess.run(["sh", "-c", f"{cmd} | head -1"], cwd=project, env=env_for(True), capture_output=True,
                              timeout=120)
        assert done.stdout == b"seq 1 30000; touch build/many.txt\n", done.stderr
        hits = parse_summary(done.stderr.decode())["cache"][0]
        assert hits == 0 and b"output could not be passed on" in done.stderr, done.stderr


# waits for every child it has, clone children included (__WALL), as strace -f and gdb do
REAP_ALL_C = r"""
#include <errno.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    printf("parent\n");
    fflush(stdout);
    if (fork() == 0) {
        printf("child\n");
        return 0;
    }
    int reaped = 0, st;
    while (waitpid(-1, &st, __WALL) > 0) reaped++;
    printf("reaped %d (%s)\n", reaped, errno == ECHILD ? "no child left" : "error");
    return 0;
}
"""


def test_a_tool_waiting_for_all_its_children_is_not_held_by_the_relay(project):
    """The relay that copies the root's output must be nobody's child in the tree: a root
    that waits for every child with __WALL (strace -f, gdb) would wait for it, while the relay
    waits for the root to close its output — a hang, seen with `strace -f` under vrift wrap."""
    compile_c(REAP_ALL_C, project / "reapall")
    (project / "Makefile").write_text("build/r.txt:\n\t./reapall > $@\n\t./reapall\n")
    outs = []
    for wrapped in (False, True, True):
        (project / "build/r.txt").unlink(missing_ok=True)
        done = subprocess.run(command(wrapped), cwd=project, env=env_for(wrapped), capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        body = b"\n".join(x for x in done.stdout.split(b"\n") if not x.startswith(b"vrift: "))
        outs.append((body, (project / "build/r.txt").read_bytes()))
    assert outs[0][1] == b"parent\nchild\nreaped 1 (no child left)\n"
    assert outs[1] == outs[0] and outs[2] == outs[0]
