"""The preload library's side of the action cache (docs/cache.md, "Recording in the preload
library", "Replay at exec"): real commands run under the library with VRIFT_CACHE=1 below a
small build tool (VRIFT_ACTION_ROLE=tool), and the logs they leave are read back.

Without a daemon (VRIFT_SOCKET names nothing) LOOKUP gets no answer; VRIFT_CACHE_KEEP_LOGS=1
makes the library record anyway and keep the logs, so they can be checked here.  The replay
tests put a small Unix-socket server in the daemon's place: it is the boundary this file
does not own (the real handlers are tested with the daemon), and it speaks the framing of
docs/protocol.md byte for byte.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from support.preload import build_vdir, compile_c, index_tree, preload_env
from vrift.cache import actionlog
from vrift.daemon import protocol

TOOL_C = r"""
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>
extern char **environ;
/* A build tool in miniature: each argument is a command, run like ninja runs one. */
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        char *args[] = {"/bin/sh", "-c", argv[i], NULL};
        pid_t pid;
        if (posix_spawn(&pid, "/bin/sh", NULL, NULL, args, environ) != 0) return 100;
        int st;
        if (waitpid(pid, &st, 0) != pid) return 101;
        fprintf(stderr, "[status %d]\n", WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    return 0;
}
"""


@pytest.fixture
def project(tmp_path, vrift_env):
    root = Path(os.path.realpath(tmp_path)) / "proj"
    root.mkdir()
    (root / "x.h").write_text("#define X 1\n")
    (root / "x.c").write_text('#include "x.h"\nint f(void) { return X; }\n')
    (root / "y.c").write_text('#include "x.h"\nint g(void) { return X + 1; }\n')
    vdir = tmp_path / "vdir"
    build_vdir(vdir, root, index_tree(root))
    tool = compile_c(TOOL_C, tmp_path / "tool")
    return root, vdir, tool, vrift_env


def cache_env(project, **extra):
    root, vdir, _, base = project
    env = preload_env(base, root, vdir, VRIFT_SOCKET=str(root.parent / "no-daemon.sock"), VRIFT_CACHE="1",
                      VRIFT_CACHE_KEEP_LOGS="1", VRIFT_ACTION_ROLE="tool")
    for name in ("VRIFT_ACTION_ID", "VRIFT_ACTION_STARTED", "VRIFT_ACTION_ROOT_PID", "VRIFT_CACHE_ENV"):
        env.pop(name, None)
    env.update(extra)
    return env


def run_tool(project, *commands, env=None, stdin=subprocess.DEVNULL, input=None):
    root, _, tool, _ = project
    return subprocess.run([str(tool), *commands], cwd=root, env=env or cache_env(project), capture_output=True,
                          stdin=None if input is not None else stdin, input=input, timeout=60)


def actions(root: Path) -> dict[str, actionlog.ActionLogs]:
    base = root / ".vrift" / "actions"
    if not base.is_dir():
        return {}
    return {d.name: actionlog.read_dir(d) for d in base.iterdir()}


def events(logs: actionlog.ActionLogs, kind: str) -> list[str]:
    return [os.fsdecode(p) for proc in logs.processes for k, p in proc.events if k == kind]


def test_each_child_of_the_tool_is_an_action_with_its_reads_probes_writes_and_execs(project):
    root = project[0]
    r = run_tool(project, "cc -c x.c -o x.o", "cc -c y.c -o y.o")
    assert r.returncode == 0, r.stderr
    assert (root / "x.o").is_file() and (root / "y.o").is_file()
    found = actions(root)
    assert len(found) == 2, found.keys()
    by_output = {}
    for aid, logs in found.items():
        assert len(aid) == 16 and int(aid, 16) >= 0
        assert not logs.unfinished, [p.name for p in logs.processes]
        assert all(p.status == 0 for p in logs.processes)
        assert not logs.reasons()
        writes = [w for w in events(logs, "W") if w.startswith(str(root))]
        assert len(writes) == 1
        by_output[Path(writes[0]).name] = logs
    assert set(by_output) == {"x.o", "y.o"}
    logs = by_output["x.o"]
    reads = events(logs, "R")
    assert str(root / "x.c") in reads and str(root / "x.h") in reads
    assert str(root / "y.c") not in reads
    absent = events(logs, "A")
    # include candidates probed before x.h was found, and precompiled-header probes
    assert str(root / "x.h.gch") in absent
    assert any(a.endswith("/stdc-predef.h") for a in absent)
    execs = [Path(x).name for x in events(logs, "X")]
    assert "dash" in execs or "sh" in execs
    assert "cc1" in execs and any(x.endswith("as") for x in execs)
    assert any("gcc" in x or x == "cc" for x in execs)
    # one log per process, each closed by its 'Z'
    assert len(logs.processes) >= 4


def test_output_is_captured_passed_on_and_exit_status_recorded(project):
    root = project[0]
    r = run_tool(project, "echo to-out; echo to-err >&2; exit 3")
    assert r.stdout == b"to-out\n"
    assert r.stderr.startswith(b"to-err\n") and b"[status 3]" in r.stderr
    (logs,) = actions(root).values()
    assert logs.streams() == [(1, b"to-out\n"), (2, b"to-err\n")]
    assert [p.status for p in logs.processes] == [3]


def test_a_shell_as_the_tool_gives_each_forked_child_its_own_action(project):
    root = project[0]
    env = cache_env(project)
    r = subprocess.run(["sh", "-c", "sh -c 'echo one'; sh -c 'echo two'; true"], cwd=root, env=env,
                       capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"one\ntwo\n", r.stderr
    outs = sorted(logs.streams() for logs in actions(root).values())
    assert outs == [[(1, b"one\n")], [(1, b"two\n")]]


def test_without_vrift_cache_nothing_is_recorded(project):
    root = project[0]
    env = cache_env(project)
    del env["VRIFT_CACHE"]
    r = run_tool(project, "cc -c x.c -o x.o", env=env)
    assert r.returncode == 0 and (root / "x.o").is_file()
    assert not (root / ".vrift" / "actions").exists()


def static_binary(tmp_path: Path) -> Path:
    src = tmp_path / "static.c"
    src.write_text("int main(void) { return 0; }\n")
    out = tmp_path / "static-bin"
    r = subprocess.run(["cc", "-static", "-o", str(out), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no static libc to link a static binary: {r.stderr.strip()[:200]}")
    return out


@pytest.mark.parametrize("case", ["static", "device", "socket", "stdin-pipe", "getrandom"])
def test_uncacheable_cases_leave_an_N_record(project, tmp_path, case):
    root = project[0]
    py = sys.executable
    input = None
    if case == "static":
        command, want = str(static_binary(tmp_path)), "static binary"
    elif case == "device":
        command, want = "cat < /dev/urandom | head -c1 > /dev/null", "device /dev/urandom"
    elif case == "socket":
        command = f"{py} -c \"import socket; socket.socket().connect_ex(('127.0.0.1', 9))\""
        want = "socket connect"
    elif case == "stdin-pipe":
        command, want, input = "cat > copied", "read from stdin (pipe)", b"from the tool's pipe\n"
    else:
        command = f"{py} -c \"import os; os.getrandom(4)\""
        want = "getrandom"
    r = run_tool(project, command, input=input)
    assert r.returncode == 0, r.stderr
    (logs,) = actions(root).values()
    assert any(reason.startswith(want) for reason in logs.reasons()), logs.reasons()
    if case == "stdin-pipe":
        assert (root / "copied").read_bytes() == input  # the command itself ran as usual


def test_a_plain_compile_has_no_uncacheable_record(project):
    r = run_tool(project, "cc -c x.c -o x.o && cat x.h > /dev/null")
    assert r.returncode == 0
    (logs,) = actions(project[0]).values()
    assert logs.reasons() == []


# ---------------------------------------------------------------- a daemon stand-in

MAGIC, VERSION = protocol.MAGIC, protocol.VERSION
HEADER, FIELD = struct.Struct("<4sHHII"), struct.Struct("<HI")
Tag = protocol.Tag
T_PID, T_PATH, T_TEXT, T_CWD, T_STATUS, T_FLAGS = Tag.PID, Tag.PATH, Tag.TEXT, Tag.CWD, Tag.STATUS, Tag.FLAGS
T_ARG, T_ENV, T_ACTION, T_STDOUT, T_STDERR = Tag.ARG, Tag.ENV, Tag.ACTION, Tag.STDOUT, Tag.STDERR


def fields_of(body: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(body):
        tag, n = FIELD.unpack_from(body, pos)
        out.append((tag, body[pos + 6:pos + 6 + n]))
        pos += 6 + n
    return out


def frame(type_: int, rid: int, fields: list[tuple[int, bytes]]) -> bytes:
    body = b"".join(FIELD.pack(t, len(v)) + v for t, v in fields)
    return HEADER.pack(MAGIC, VERSION, type_, rid, len(body)) + body


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


class FakeDaemon:
    """Answers HELLO, ACTION_LOOKUP (with `answer`) and ACTION_END; keeps what it was sent.
    At END it reads the action's logs, as the real daemon does before replying."""

    def __init__(self, path: Path, root: Path, answer: list[tuple[int, bytes]]):
        self.path, self.root, self.answer = path, root, answer
        self.requests: list[tuple[int, list[tuple[int, bytes]]]] = []
        self.logs_at_end: dict[str, actionlog.ActionLogs] = {}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.connection, args=(conn,), daemon=True).start()

    def connection(self, conn):
        with conn:
            buf = b""
            while True:
                while len(buf) < HEADER.size or len(buf) < HEADER.size + HEADER.unpack_from(buf)[4]:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                _, _, type_, rid, n = HEADER.unpack_from(buf)
                fields = fields_of(buf[HEADER.size:HEADER.size + n])
                buf = buf[HEADER.size + n:]
                self.requests.append((type_, fields))
                answer, reply_type = [], type_ | 0x8000
                if type_ == 0x30:
                    answer = self.answer
                elif type_ == 0x31:
                    aid = dict(fields)[T_ACTION].decode()
                    self.logs_at_end[aid] = actionlog.read_dir(self.root / ".vrift" / "actions" / aid)
                    answer = [(T_FLAGS, u32(1))]
                elif type_ != 0x01:
                    # COMMIT, INVALIDATE…: refused in band, the library then does the work itself
                    reply_type, answer = 0x7FFF, [(12, u32(4)), (T_TEXT, b"not served by this stand-in")]
                conn.sendall(frame(reply_type, rid, answer))

    def close(self):
        self.sock.close()

    def of_type(self, type_: int) -> list[list[tuple[int, bytes]]]:
        return [f for t, f in self.requests if t == type_]


@pytest.fixture
def fake_daemon(project):
    daemons = []

    def start(answer):
        root = project[0]
        d = FakeDaemon(Path(f"/tmp/vr-fake-{os.getpid()}-{len(daemons)}-{threading.get_ident() % 9973}.sock"), root,
                       answer)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        d.close()
        d.path.unlink(missing_ok=True)


def test_a_hit_replays_output_and_status_without_running_the_command(project, fake_daemon):
    root = project[0]
    d = fake_daemon([(T_FLAGS, u32(1)), (T_STATUS, u32(7)), (T_STDOUT, b"replayed out\n"),
                     (T_STDERR, b"replayed err\n")])
    env = cache_env(project, VRIFT_SOCKET=str(d.path), VRIFT_CACHE_ENV="CFLAGS:UNSET_ONE", CFLAGS="-O2")
    del env["VRIFT_CACHE_KEEP_LOGS"]
    r = run_tool(project, "touch side-effect; echo real", env=env)
    assert not (root / "side-effect").exists()
    assert r.stdout == b"replayed out\n"
    assert r.stderr == b"replayed err\n[status 7]\n"
    (lookup,) = d.of_type(0x30)
    assert [v for t, v in lookup if t == T_ARG] == [b"/bin/sh", b"-c", b"touch side-effect; echo real"]
    values = dict(lookup)
    assert values[T_PATH] == os.fsencode(os.path.realpath("/bin/sh"))
    assert values[T_CWD] == os.fsencode(root)
    assert len(values[T_ACTION]) == 16
    assert [v for t, v in lookup if t == T_ENV] == [b"CFLAGS=-O2"]
    assert d.of_type(0x31) == []  # a replayed action has no end to report
    assert not (root / ".vrift" / "actions").exists()


def test_a_miss_records_and_ends_the_action_with_its_status(project, fake_daemon):
    root = project[0]
    d = fake_daemon([(T_FLAGS, u32(0))])
    env = cache_env(project, VRIFT_SOCKET=str(d.path))
    del env["VRIFT_CACHE_KEEP_LOGS"]
    r = run_tool(project, "cc -c x.c -o x.o; echo built", env=env)
    assert r.returncode == 0 and r.stdout == b"built\n"
    assert (root / "x.o").is_file()
    (end,) = d.of_type(0x31)
    values = dict(end)
    aid = values[T_ACTION].decode()
    assert struct.unpack("<I", values[T_STATUS])[0] == 0
    logs = d.logs_at_end[aid]  # complete when END arrives: every process has its 'Z'
    assert not logs.unfinished and logs.streams() == [(1, b"built\n")]
    assert str(root / "x.o") in events(logs, "W")


def test_no_record_answer_and_no_daemon_leave_nothing(project, fake_daemon):
    root = project[0]
    d = fake_daemon([(T_FLAGS, u32(2))])  # NO_RECORD: the daemon would not cache it anyway
    env = cache_env(project, VRIFT_SOCKET=str(d.path))
    del env["VRIFT_CACHE_KEEP_LOGS"]
    assert run_tool(project, "echo hi > out.txt", env=env).returncode == 0
    assert (root / "out.txt").read_text() == "hi\n"
    assert d.of_type(0x31) == []
    env = cache_env(project)
    del env["VRIFT_CACHE_KEEP_LOGS"]
    assert run_tool(project, "echo again > out.txt", env=env).returncode == 0
    assert (root / "out.txt").read_text() == "again\n"
    assert not (root / ".vrift" / "actions").exists() or not any((root / ".vrift" / "actions").iterdir())
