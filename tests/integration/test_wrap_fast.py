"""The pieces of the `vrift wrap` fast path that mirror other modules (root discovery, ids,
paths, frames, the counters layout) agree with the originals, and the cache is only used
while its stamps hold.  No daemon is started here."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vrift import identity, locate, native
from vrift.home import Home
from vrift.wrap import counters, daemonlink, environment, report, wrapcache
from vrift.wrap.fastwrap import parse
from vrift.wrap.adapters.make import MakeAdapter
from vrift.wrap.adapters.make.hook import HOOK_LINE, fragment, make_quote
from vrift.wrap.adapters.ninja import NinjaAdapter
from vrift.daemon import protocol

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv, expected", [
    (["ninja", "-C", "b"], (["ninja", "-C", "b"], False, None, None)),
    (["-q", "make", "-j2"], (["make", "-j2"], True, None, None)),
    (["--quiet", "--root", "/r", "--", "./build.sh", "-q"], (["./build.sh", "-q"], True, "/r", None)),
    (["--root=/r", "--adapter=make", "gmake"], (["gmake"], False, "/r", "make")),
    (["--", "--weird-name"], (["--weird-name"], False, None, None)),
])
def test_parse(argv, expected):
    opts = parse(argv)
    assert (opts.argv, opts.quiet, opts.root, opts.adapter) == expected


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"], ["-q"], ["--root"], ["--unknown", "ninja"], ["--"]])
def test_parse_leaves_the_unusual_to_click(argv):
    assert parse(argv) is None


def test_adapters_follow_minus_c_like_the_tools():
    ninja = NinjaAdapter()
    assert ninja.start_dir(["ninja", "-C", "out", "-j4", "-Csub"], "/w") == "/w/out/sub"
    assert ninja.start_dir(["ninja", "-f", "-C", "x"], "/w") == "/w", "-f takes -C as its file name"
    assert ninja.start_dir(["ninja", "-t", "targets", "-C", "x"], "/w") == "/w", "after -t come the tool's args"
    assert ninja.start_dir(["ninja", "-C", "/abs"], "/w") == "/abs"
    make = MakeAdapter()
    assert make.start_dir(["make", "-kC", "a", "--directory=b", "--directory", "c", "-j8"], "/w") == "/w/a/b/c"
    assert make.start_dir(["make", "-fC"], "/w") == "/w"
    assert make.start_dir(["make", "--", "-C", "x"], "/w") == "/w"
    assert ninja.handles("/usr/bin/ninja") and make.handles("gmake") and not make.handles("ninja")


def test_root_discovery_matches_vrift_project(tmp_path, monkeypatch):
    (tmp_path / "outer/.git").mkdir(parents=True)
    (tmp_path / "outer/inner/deep/er").mkdir(parents=True)
    (tmp_path / "outer/inner/build.ninja").write_text("")
    (tmp_path / "outer/cfg/x").mkdir(parents=True)
    (tmp_path / "outer/cfg/.vrift.yaml").write_text("")
    (tmp_path / "outer/cfg/x/Makefile").write_text("")
    (tmp_path / "plain").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "outer/inner")
    cases = ["outer/inner/deep/er", "outer/inner", "outer", "outer/cfg/x", "plain", "link/deep",
             "outer/inner/deep/er/missing-file.c"]
    for start in cases:
        for env in ({}, {"VRIFT_PROJECT_ROOT": str(tmp_path / "plain")}):
            got, error = locate.find_root(str(tmp_path / start), None, env)
            assert error is None and got == str(identity.find_root(tmp_path / start, env=env)), (start, env)
    got, _ = locate.find_root(str(tmp_path / "plain"), str(tmp_path / "outer/cfg"), {})
    assert got == str(identity.find_root(tmp_path / "plain", explicit=tmp_path / "outer/cfg", env={}))
    root, error = locate.find_root(str(tmp_path), str(tmp_path / "nope"), {})
    assert root is None and "--root: not a directory" in error
    assert locate.project_id(str(tmp_path / "link")) == identity.project_id(tmp_path / "link")


def test_paths_match_home_and_native(tmp_path):
    env = {"VRIFT_HOME": str(tmp_path / "h")}
    home = Home.from_env(env)
    assert locate.home_root(env) == str(home.root) and locate.run_dir(env) == str(home.run_dir)
    pid = identity.project_id(tmp_path)
    from vrift.daemon.paths import project_files

    assert locate.project_socket(env, pid) == str(project_files(home, pid).socket)
    assert locate.home_root({"HOME": "/x"}) == os.path.join(os.path.expanduser("~"), ".vrift")
    assert locate.preload_library({}) == str(native.preload_library())
    assert locate.preload_library({"VRIFT_PRELOAD_LIB": "/x.so"}) == "/x.so"


def test_frames_are_the_protocols_frames():
    fields = [(protocol.Tag.ROOT, b"/some/root")]
    assert daemonlink.encode(protocol.Msg.HELLO, 7, fields) == protocol.Frame(protocol.Msg.HELLO, 7, fields).encode()
    assert daemonlink.encode(protocol.Msg.SYNC, 8, []) == protocol.Frame(protocol.Msg.SYNC, 8).encode()
    assert (daemonlink.TAG_GENERATION, daemonlink.TAG_TEXT, daemonlink.TAG_ROOT, daemonlink.TAG_VDIR,
            daemonlink.TAG_SOCKET, daemonlink.TAG_STAGING_DIR) == (
        protocol.Tag.GENERATION, protocol.Tag.TEXT, protocol.Tag.ROOT, protocol.Tag.VDIR, protocol.Tag.SOCKET,
        protocol.Tag.STAGING_DIR)
    assert daemonlink.MSG_ERROR == protocol.Msg.ERROR and daemonlink.REPLY_BIT == protocol.REPLY_BIT
    assert (daemonlink.TAG_FLAGS, daemonlink.TAG_SIZE) == (protocol.Tag.FLAGS, protocol.Tag.SIZE)
    assert daemonlink.SYNC_UNCONFIRMED_OK == protocol.SyncFlag.UNCONFIRMED_OK
    assert (daemonlink.STATS_CACHE_ONLY, daemonlink.STATS_EXPLAIN, daemonlink.STATS_INGEST) == (
        protocol.StatsFlag.CACHE_ONLY, protocol.StatsFlag.EXPLAIN, protocol.StatsFlag.INGEST)


def test_replies_are_decoded_and_errors_named():
    a, b = socket.socketpair()
    with a, b:
        ok = protocol.reply(protocol.Frame(protocol.Msg.SYNC, 2)).add(protocol.Tag.GENERATION, 41)
        b.sendall(ok.encode())
        assert daemonlink.decode_reply(a, protocol.Msg.SYNC, 2)[protocol.Tag.GENERATION] == (41).to_bytes(8, "little")
        b.sendall(protocol.error(3, protocol.Err.PATH_REJECTED, "outside the root").encode())
        with pytest.raises(daemonlink.LinkError, match="refused: outside the root"):
            daemonlink.decode_reply(a, protocol.Msg.SYNC, 3)
        b.sendall(protocol.reply(protocol.Frame(protocol.Msg.HELLO, 9)).encode())
        with pytest.raises(daemonlink.LinkError, match="does not match"):
            daemonlink.decode_reply(a, protocol.Msg.SYNC, 4)
        b.sendall(protocol.HEADER.pack(protocol.MAGIC, 1, 0x8002, 5, 3) + b"\x01\x00\x00")
        with pytest.raises(daemonlink.LinkError, match="truncated"):
            daemonlink.decode_reply(a, protocol.Msg.SYNC, 5)
        b.close()
        with pytest.raises(daemonlink.LinkError, match="closed"):
            daemonlink.decode_reply(a, protocol.Msg.SYNC, 6)


def test_no_daemon_is_told_apart(tmp_path):
    with pytest.raises(daemonlink.NoDaemon):
        daemonlink.hello_sync(str(tmp_path / "none.sock"), "/", 1.0)


def test_counters_layout_matches_the_c_header(tmp_path):
    header = (REPO / "vrift/preload/vrift_counters.h").read_text()
    assert int(re.search(r"VRIFT_COUNTERS_MAGIC (0x[0-9a-fA-F]+)u", header).group(1), 16) == counters.COUNTERS_MAGIC
    assert int(re.search(r"VRIFT_COUNTERS_VERSION (\d+)u", header).group(1)) == counters.COUNTERS_VERSION
    assert int(re.search(r"VRIFT_COUNTERS_SIZE (\d+)u", header).group(1)) == counters.COUNTERS_SIZE
    names = re.findall(r"^\s+VRIFT_C_(\w+)", header, re.M)
    assert names[-1] == "COUNT" and [n.lower() for n in names[:-1]] == list(counters.COUNTER_NAMES)
    path = counters.create_counters(str(tmp_path))
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.path.getsize(path) == counters.COUNTERS_SIZE
    assert counters.read_counters(path) == dict.fromkeys(counters.COUNTER_NAMES, 0)
    with open(path, "r+b") as f:  # what a process adds at exit: u64 at 16 + 8*i
        f.seek(16 + 8 * counters.COUNTER_NAMES.index("stat_served"))
        f.write((1234).to_bytes(8, "little"))
    assert counters.read_counters(path)["stat_served"] == 1234
    assert counters.create_counters(str(tmp_path)) == path, "a stale file of a dead wrapper with our pid is replaced"
    assert counters.read_counters(path)["stat_served"] == 0
    Path(path).write_bytes(b"\0" * 256)
    assert counters.read_counters(path) is None


def test_preload_list_keeps_what_was_there_once():
    assert environment.with_preload("", "/v.so") == "/v.so"
    assert environment.with_preload("/a.so:/b.so", "/v.so") == "/v.so /a.so /b.so"
    assert environment.with_preload("/v.so /a.so", "/v.so") == "/v.so /a.so"


def test_summary_line_format():
    s = report.summarize({**dict.fromkeys(counters.COUNTER_NAMES, 0), "committed": 3, "published": 1,
                          "stat_served": 900, "stat_passed": 12}, 1.234, None)
    assert report.summary_line(s) == "vrift: 4 files written, 900 of 912 stats served from the index, 1.23 s"
    s["index_files"] = 1204
    s["cache"] = {"lookups": 206, "hits": 204, "misses": 2, "uncacheable": 0, "reasons": {}, "time_saved_s": 1.94}
    assert report.summary_line(s) == ("vrift: 204/206 cached (1.9 s saved), 4 files written, 900 of 912 stats "
                                      "served from the index (1,204 files), 1.23 s (cache: 2 missed, 0 uncacheable)")
    off = report.summarize(None, 0.5, "VRIFT_ENABLED=0")
    assert report.summary_line(off).endswith("0.50 s (not accelerated: VRIFT_ENABLED=0)")


def test_settings_cache_follows_its_stamps(tmp_path):
    root, home = tmp_path / "p", tmp_path / "h"
    root.mkdir()
    home.mkdir()
    cache = str(tmp_path / "c.json")
    env = {"VRIFT_HOME": str(home), "PATH": "/bin"}
    stamps = wrapcache.settings_stamps(str(root), str(home), env)
    values = dict.fromkeys(wrapcache.SETTINGS_KEYS, 1)
    wrapcache.store_settings(cache, stamps, values)
    assert os.stat(cache).st_mode & 0o777 == 0o600
    assert wrapcache.cached_settings(cache, wrapcache.settings_stamps(str(root), str(home), env)) == values
    assert wrapcache.cached_settings(cache, wrapcache.settings_stamps(
        str(root), str(home), {**env, "PATH": "/usr/bin", "VRIFT_COUNTERS": "x"})) == values, "only VRIFT_* count"
    assert wrapcache.cached_settings(cache, wrapcache.settings_stamps(
        str(root), str(home), {**env, "VRIFT_DEBUG": "1"})) is None
    (root / ".vrift.yaml").write_text("enabled: false\n")
    assert wrapcache.cached_settings(cache, wrapcache.settings_stamps(str(root), str(home), env)) is None
    Path(cache).write_text("{not json")
    assert wrapcache.cached_settings(cache, stamps) is None


def test_plugin_cache_follows_site_directories(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    cache = str(tmp_path / "p.json")
    stamps = wrapcache.plugin_stamps([str(site)])
    wrapcache.store_entry_points(cache, stamps, [("ninja", "vrift.wrap.adapters.ninja")])
    assert wrapcache.cached_entry_points(cache, wrapcache.plugin_stamps([str(site)])) == [("ninja", "vrift.wrap.adapters.ninja")]
    (site / "newdist-1.0.dist-info").mkdir()  # what installing a distribution does
    assert wrapcache.cached_entry_points(cache, wrapcache.plugin_stamps([str(site)])) is None
    assert wrapcache.cached_entry_points(cache, wrapcache.plugin_stamps([str(site), "/x"])) is None


def test_make_fragment_quotes_what_make_would_expand(tmp_path):
    assert make_quote("/a$b#c") == "/a$$b\\#c"
    info = {"root": "/p$x", "vdir": "/shm/v", "socket": "/h/s.sock", "staging_dir": "/p$x/.vrift/staging"}
    mk = tmp_path / "f.mk"
    mk.write_text(fragment("/p$x", "/lib/v.so", info))
    (tmp_path / "Makefile").write_text(f"include {mk}\nall:\n\t@echo \"$$VRIFT_PROJECT_ROOT|$$LD_PRELOAD\"\n")
    out = subprocess.run(["make", "-s", "-C", str(tmp_path)], env={"PATH": os.environ["PATH"], "LD_PRELOAD": "/o.so"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "/p$x|/lib/v.so /o.so"
    assert HOOK_LINE.startswith("-include $(if $(VRIFT_VDIR),,")


def test_disabled_wrap_imports_nothing_heavy(tmp_path):
    """VRIFT_ENABLED=0: the tool runs at once, without click, yaml or pluggy."""
    env = {**os.environ, "VRIFT_ENABLED": "0", "VRIFT_HOME": str(tmp_path / "h")}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "vrift", "wrap", "--", "true"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"click", "yaml", "pluggy", "importlib.metadata", "vrift.identity", "vrift.home", "vrift.cli"}
    assert "not accelerated: VRIFT_ENABLED=0" in proc.stderr


def test_a_broken_installation_still_runs_the_tool(tmp_path):
    """VRIFT_HOME is a regular file: nothing of vrift can work, the build runs plainly."""
    (tmp_path / "home").write_text("")
    env = {**os.environ, "VRIFT_HOME": str(tmp_path / "home"), "VRIFT_SHM_DIR": str(tmp_path)}
    env.pop("VRIFT_ENABLED", None)
    (tmp_path / "proj").mkdir()
    proc = subprocess.run([sys.executable, "-m", "vrift", "wrap", "--", "sh", "-c", "echo built; exit 3"],
                          env=env, capture_output=True, text=True, cwd=tmp_path / "proj")
    assert proc.returncode == 3 and proc.stdout == "built\n"
    assert "Traceback" not in proc.stderr
    assert "(not accelerated: " in proc.stderr.splitlines()[-1]
