"""Frame codec and the shared socket server (real Unix sockets, no daemon needed)."""
from __future__ import annotations

import os
import pwd
import socket
import stat
import struct
import tempfile
from pathlib import Path

import pytest

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
