"""Frame codec and the shared socket server (real Unix sockets, no daemon needed)."""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import struct
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from vrift.daemon import protocol
from vrift.daemon.listener import Listener, RequestError
from vrift.daemon.protocol import (HEADER, MAX_BODY, Err, Frame, Msg, ProtocolError, Tag, error, parse_body,
                                   parse_header, read_frame, reply)


def test_round_trip_keeps_raw_bytes_and_integers():
    f = (Frame(Msg.COMMIT, 42).add(Tag.PATH, b"/p/\xff\xfe.o").add(Tag.PATH, "rel/ü")
         .add(Tag.GENERATION, 2**40 + 3).add(Tag.PID, 77).add_json({"a": [1]}))
    data = f.encode()
    assert data[:4] == b"VRP1" and len(data) == 16 + struct.unpack_from("<I", data, 12)[0]
    mtype, rid, length = parse_header(data[:16])
    g = parse_body(mtype, rid, data[16:])
    assert (g.type, g.request_id) == (Msg.COMMIT, 42)
    assert g.all(Tag.PATH) == [b"/p/\xff\xfe.o", "rel/ü".encode()]
    assert g.int(Tag.GENERATION) == 2**40 + 3 and g.int(Tag.PID) == 77
    assert g.json() == {"a": [1]}


def test_documented_example_bytes():
    ping = Frame(Msg.PING, 7).encode()
    assert ping.hex(" ") == "56 52 50 31 01 00 09 00 07 00 00 00 00 00 00 00"
    assert reply(Frame(Msg.PING, 7)).encode()[6:8] == b"\x09\x80"


@pytest.mark.parametrize("header, code", [
    (HEADER.pack(b"XXXX", 1, 1, 0, 0), Err.BAD_FRAME),
    (HEADER.pack(b"VRP1", 2, 1, 0, 0), Err.BAD_VERSION),
    (HEADER.pack(b"VRP1", 1, 1, 0, MAX_BODY + 1), Err.TOO_LARGE),
    (HEADER.pack(b"VRP1", 1, 1, 0, 0xFFFFFFFF), Err.TOO_LARGE),
])
def test_bad_headers(header, code):
    with pytest.raises(ProtocolError) as e:
        parse_header(header)
    assert e.value.code == code


@pytest.mark.parametrize("body", [b"\x01", b"\x01\x00\x05\x00\x00\x00ab", b"\x01\x00\xff\xff\xff\xff"])
def test_truncated_fields(body):
    with pytest.raises(ProtocolError) as e:
        parse_body(1, 1, body)
    assert e.value.code == Err.BAD_FRAME


def test_wrong_integer_width_is_a_bad_request():
    f = parse_body(1, 1, Frame(1).add(Tag.PID, b"\x01\x02").encode()[16:])
    with pytest.raises(ProtocolError) as e:
        f.int(Tag.PID)
    assert e.value.code == Err.BAD_REQUEST


@pytest.fixture
def echo_server():
    d = tempfile.mkdtemp(prefix="vrl", dir="/tmp")  # short: sun_path is 108 bytes
    path = Path(d) / "t.sock"

    def handler(conn, req):
        if req.type == Msg.STATS:
            raise RequestError(Err.PATH_REJECTED, "no")
        return reply(req).add(Tag.COUNT, len(req.fields))

    listener = Listener(path, handler)
    listener.start()
    yield listener
    listener.stop()
    os.rmdir(d)


def connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(str(path))
    return s


def test_socket_is_private(echo_server):
    assert stat.S_IMODE(os.stat(echo_server.path).st_mode) == 0o600


def test_request_errors_keep_the_connection_bad_frames_close_it(echo_server):
    s = connect(echo_server.path)
    s.sendall(Frame(Msg.STATS, 5).encode())
    r = read_frame(s)
    assert r.is_error and r.request_id == 5 and r.int(Tag.ERROR_CODE) == Err.PATH_REJECTED
    s.sendall(Frame(Msg.PING, 6).add(Tag.PATH, b"x").encode())
    r = read_frame(s)
    assert r.type == Msg.PING | 0x8000 and r.int(Tag.COUNT) == 1
    s.sendall(b"GARBAGE!" * 2)
    r = read_frame(s)
    assert r.is_error and r.int(Tag.ERROR_CODE) == Err.BAD_FRAME
    assert read_frame(s) is None  # closed
    s2 = connect(echo_server.path)  # the server still serves others
    s2.sendall(Frame(Msg.PING, 1).encode())
    assert read_frame(s2).request_id == 1


def test_oversized_body_is_refused_without_reading_it(echo_server):
    s = connect(echo_server.path)
    s.sendall(HEADER.pack(b"VRP1", 1, Msg.PING, 9, MAX_BODY + 1))
    r = read_frame(s)
    assert r.int(Tag.ERROR_CODE) == Err.TOO_LARGE
    assert read_frame(s) is None


@pytest.fixture
def recording_server():
    """A Listener whose handler records what it handled, in order; STATS blocks until released."""
    d = tempfile.mkdtemp(prefix="vrl", dir="/tmp")
    path = Path(d) / "t.sock"
    handled: list[tuple[int, int]] = []
    release = threading.Event()

    def handler(conn, req):
        handled.append((req.type, req.request_id))
        if req.type in protocol.ONE_WAY:
            return None
        if req.type == Msg.STATS:
            release.wait(30)
        return reply(req).add(Tag.COUNT, len(handled))

    listener = Listener(path, handler)
    listener.start()
    yield listener, handled, release
    release.set()
    listener.stop()
    os.rmdir(d)


def test_a_connections_frames_are_handled_in_order_one_way_and_requests_alike(recording_server):
    listener, handled, _ = recording_server
    s = connect(listener.path)
    frames = [Frame(Msg.WRITING, 1).add(Tag.PATH, b"a"), Frame(Msg.PING, 2), Frame(Msg.WRITTEN, 3).add(Tag.PATH, b"a"),
              Frame(Msg.CHANGED, 4).add(Tag.PATH, b"b"), Frame(Msg.SYNC, 5), Frame(Msg.WRITTEN, 6)]
    s.sendall(b"".join(f.encode() for f in frames))  # pipelined: one read brings them all
    a, b = read_frame(s), read_frame(s)
    assert (a.request_id, a.int(Tag.COUNT)) == (2, 2)  # nothing after PING was handled before it
    assert (b.request_id, b.int(Tag.COUNT)) == (5, 5)
    assert listener.quiesce(timeout=30)
    assert handled == [(f.type, f.request_id) for f in frames]


def test_a_blocked_request_holds_only_its_own_connection(recording_server):
    listener, handled, release = recording_server
    blocked = connect(listener.path)
    blocked.sendall(Frame(Msg.STATS, 1).encode() + Frame(Msg.WRITTEN, 2).encode() + Frame(Msg.PING, 3).encode())
    other = connect(listener.path)
    for i in range(50):
        other.sendall(Frame(Msg.WRITTEN, 100 + i).encode())
    other.sendall(Frame(Msg.PING, 200).encode())
    assert read_frame(other).request_id == 200  # the reader kept reading the others
    assert (Msg.WRITTEN, 2) not in handled       # behind the blocked STATS, in order
    release.set()
    assert [read_frame(blocked).request_id for _ in range(2)] == [1, 3]
    assert handled.index((Msg.STATS, 1)) < handled.index((Msg.WRITTEN, 2)) < handled.index((Msg.PING, 3))


def test_other_uid_is_refused(echo_server):
    if os.getuid() != 0:
        pytest.skip("switching uid needs root")
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chmod(os.path.dirname(echo_server.path), 0o755)
    os.chmod(echo_server.path, 0o666)  # let the socket file be reached: only SO_PEERCRED stops it
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.setuid(nobody)
            s = connect(echo_server.path)
            s.sendall(Frame(Msg.PING, 1).encode())
            outcome = b"answered" if read_frame(s) is not None else b"refused"
        except (OSError, ProtocolError):
            outcome = b"refused"
        os.write(w, outcome)
        os._exit(0)
    os.close(w)
    outcome = os.read(r, 100)
    os.waitpid(child, 0)
    assert outcome == b"refused"
    assert echo_server.rejected_uid == 1
    s = connect(echo_server.path)
    s.sendall(Frame(Msg.PING, 2).encode())
    assert read_frame(s).request_id == 2


# ---------------------------------------------------------------- the one definition, C and Python

PROTO_H = Path(__file__).resolve().parents[2] / "vrift" / "native" / "vrift_proto.h"

# Prints every constant of vrift_proto.h as "<kind> <name> <value> [<extra>]", through the
# header's own X-macro lists, so a constant added in C shows up here without editing the test.
_DUMP = r'''
#include <stdio.h>
#include "vrift_proto.h"
#define M(name, value, one_way) printf("M %s %u %d\n", #name, (unsigned)(value), one_way);
#define T(name, value) printf("T %s %u\n", #name, (unsigned)(value));
#define E(name, value, closes) printf("E %s %u %d\n", #name, (unsigned)(value), closes);
#define F(group, name, value) printf("F %s_%s %u\n", #group, #name, (unsigned)(value));
#define U32(name) printf("U32 %s %u\n", #name, (unsigned)VRP_T_##name);
#define U64(name) printf("U64 %s %u\n", #name, (unsigned)VRP_T_##name);
int main(void) {
    VRP_MESSAGES(M) VRP_TAGS(T) VRP_ERRORS(E) VRP_FLAGS(F) VRP_U32_TAGS(U32) VRP_U64_TAGS(U64)
    /* the enums are what C code uses: check them against the lists too */
    if (VRP_M_WRITTEN != 0x41 || VRP_T_PATH != 1 || VRP_E_INTERNAL != 10 || VRP_F_LOOKUP_HIT != 1) return 1;
    printf("S MAGIC %u\nS VERSION %u\nS HEADER_SIZE %u\nS FIELD_SIZE %u\nS MAX_BODY %u\nS MAX_FIELDS %u\n"
           "S REPLY_BIT %u\n", VRP_MAGIC, VRP_VERSION, VRP_HEADER_SIZE, VRP_FIELD_SIZE, VRP_MAX_BODY,
           VRP_MAX_FIELDS, VRP_REPLY_BIT);
    return 0;
}
'''


@pytest.fixture(scope="module")
def c_constants(tmp_path_factory) -> dict[str, list[tuple]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("proto")
    (d / "dump.c").write_text(_DUMP)
    build = subprocess.run([cc, "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{PROTO_H.parent}",
                            str(d / "dump.c"), "-o", str(d / "dump")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out: dict[str, list[tuple]] = {}
    for line in subprocess.run([str(d / "dump")], capture_output=True, text=True, check=True).stdout.splitlines():
        kind, name, *rest = line.split()
        out.setdefault(kind, []).append((name, *map(int, rest)))
    return out


def _flag_classes() -> dict[str, type]:
    return {"LOOKUP": protocol.LookupFlag, "END": protocol.EndFlag, "STATS": protocol.StatsFlag,
            "CHANGED": protocol.ChangedFlag, "SYNC": protocol.SyncFlag,
            "SHUTDOWN": protocol.ShutdownFlag, "SHUTDOWN_REPLY": protocol.ShutdownReplyFlag,
            "ERROR": protocol.ErrorFlag}


def test_every_message_type_is_the_same_in_c_and_python(c_constants):
    c = {name: value for name, value, _ in c_constants["M"]}
    assert c == {m.name: int(m) for m in Msg}
    assert {name for name, _, one_way in c_constants["M"] if one_way} == {m.name for m in protocol.ONE_WAY}


def test_every_field_tag_is_the_same_in_c_and_python(c_constants):
    c = dict(c_constants["T"])
    assert c == {t.name: int(t) for t in Tag}
    assert len(set(c.values())) == len(c), "two names share a tag"
    assert {n for n, _ in c_constants["U32"]} == {t.name for t in protocol.U32_TAGS}
    assert {n for n, _ in c_constants["U64"]} == {t.name for t in protocol.U64_TAGS}


def test_every_error_code_is_the_same_in_c_and_python(c_constants):
    assert {name: value for name, value, _ in c_constants["E"]} == {e.name: int(e) for e in Err}
    assert {name for name, _, closes in c_constants["E"] if closes} == {e.name for e in protocol.CLOSING_ERRORS}


def test_every_flag_is_the_same_in_c_and_python(c_constants):
    classes = _flag_classes()
    python = {f"{group}_{f.name}": int(f) for group, cls in classes.items() for f in cls}
    assert dict(c_constants["F"]) == python


def test_framing_constants_are_the_same_in_c_and_python(c_constants):
    s = dict(c_constants["S"])
    assert s == {"MAGIC": struct.unpack("<I", protocol.MAGIC)[0], "VERSION": protocol.VERSION,
                 "HEADER_SIZE": protocol.HEADER_SIZE, "FIELD_SIZE": protocol.FIELD_SIZE,
                 "MAX_BODY": protocol.MAX_BODY, "MAX_FIELDS": protocol.MAX_FIELDS, "REPLY_BIT": protocol.REPLY_BIT}


def test_the_c_side_names_no_protocol_number_of_its_own():
    """Every C file speaks the protocol through vrift_proto.h: no local tag or type table."""
    import re
    preload = PROTO_H.parent.parent / "preload"
    for src in sorted(preload.glob("*.[ch]")):
        text = src.read_text()
        assert not re.search(r"\b[MTE]_[A-Z_]+\s*=\s*(0x)?[0-9]", text), f"{src.name} defines protocol numbers"
        assert not re.search(r"#define\s+[MTE]_[A-Z_]+\s+(0x)?[0-9]", text), f"{src.name} defines protocol numbers"


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_the_header_compiles_without_warnings():
    proc = subprocess.run(["gcc", "-x", "c", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
                           str(PROTO_H)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
