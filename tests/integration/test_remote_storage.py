"""The storage interface and the remote backends against real servers (Redis, a Redis Cluster,
nginx WebDAV), driven through the tiers the daemon uses: uploads, read-through with verified
blobs, and the failures a shared cache meets (wrong password, full server, silence, damage)."""
from __future__ import annotations

import os
import time

import pytest

from support.remote import (nginx, nginx_factory, redis_cluster, redis_factory, redis_server,  # noqa: F401
                            server_dir, silent_port)
from vrift.cache.store import CacheStore
from vrift.cas import CAS
from vrift.cas.store import hash_bytes
from vrift.errors import VriftError
from vrift.storage import base, spec as spec_mod, tiers
from vrift.storage.local import LocalBlobs, local_entries


class Cfg(dict):
    def __init__(self, urls, **kw):
        super().__init__({"cache.remote": urls, "cache.remote_connect_timeout_ms": 200,
                          "cache.remote_timeout_ms": 1000, "cache.remote_skip_s": 30, "cache.remote_flush_s": 10})
        self.update(kw)


def entry(cas: CAS, *contents: bytes):
    digests = [cas.store_bytes(c).digest for c in contents]
    fp = {"inputs": [], "outputs": [[f"o{i}", d.hex(), 0o644, len(c)] for i, (d, c) in enumerate(zip(digests, contents))],
          "stdout": None, "stderr": None, "status": 0}
    return os.urandom(32), os.urandom(32), fp, set(digests)


def roundtrip(tmp_path, url, big: bytes = b"") -> tuple[tiers.RemoteTiers, tiers.RemoteTiers]:
    """Machine 1 uploads an entry, machine 2 (an empty CAS) reads it through; returns both."""
    cas1, cas2 = CAS(tmp_path / "cas1"), CAS(tmp_path / "cas2")
    t1, t2 = tiers.build(Cfg([url]), cas1), tiers.build(Cfg([url]), cas2)
    key, fid, fp, digests = entry(cas1, b"object code", big or os.urandom(100_000))
    t1.enqueue(key, fid, fp, digests)
    assert t1.flush(20)["pending"] == 0
    assert t1.stats()[0]["uploaded"] == 1, t1.stats()
    found = list(t2.candidates(key, set()))
    assert [(f, d) for _, f, d, _ in found] == [(fid, fp)]
    remote, _, _, names = found[0]
    assert t2.fetch_blobs(remote, digests, names) is None
    for d in digests:
        assert cas2.read_bytes(d) == cas1.read_bytes(d)
    assert t2.stats()[0]["bytes_down"] > 0
    t1.stop(5)
    t2.stop(5)
    return t1, t2


def test_local_stores_implement_the_interface(tmp_path, home):
    cas = CAS(tmp_path / "cas")
    blobs = LocalBlobs(cas)
    assert isinstance(blobs, base.BlobStore)
    with CacheStore(home) as store:
        assert isinstance(local_entries(store), base.EntryStore)
    data = b"hello"
    d = hash_bytes(data)
    assert blobs.has_many([d]) == set()
    blobs.put_bytes(d, data)
    assert blobs.has_many([d, hash_bytes(b"other")]) == {d}
    assert blobs.fetch(d, tmp_path / "out") and (tmp_path / "out").read_bytes() == data
    assert not blobs.fetch(hash_bytes(b"absent"), tmp_path / "no")
    with pytest.raises(VriftError):
        blobs.put_bytes(hash_bytes(b"not this"), data)


def test_specs_parse_and_mask():
    s = spec_mod.parse("redis://u:pw@h:1/2|read-only|operation-timeout=250|compress-min=0")
    assert (s.read_only, s.operation_timeout, s.compress_min, s.shown) == (True, 0.25, 0, "redis://u:***@h:1/2")
    assert spec_mod.mask("http://a:b@x/p|bearer-token=tok") == "http://a:***@x/p|bearer-token=***"
    for bad in ("ftp://x", "redis://", "redis://h|nope", "redis://h|connect-timeout=-1", "redis://h|bearer-token=x"):
        with pytest.raises(VriftError, match="cache.remote"):
            spec_mod.parse(bad)


def test_redis_roundtrip_and_key_layout(tmp_path, redis_server):
    roundtrip(tmp_path, redis_server.url)
    keys = redis_server.keys()
    assert sum(k.startswith("vrift:ac:") for k in keys) == 1
    assert sum(k.startswith("vrift:cas:") for k in keys) == 2
    assert redis_server.cli("ttl", [k for k in keys if k.startswith("vrift:ac:")][0]).strip() == "-1"


def test_redis_unix_socket_and_db(tmp_path, redis_server):
    roundtrip(tmp_path, f"redis+unix://{redis_server.socket_path}?db=3")
    assert redis_server.cli("-n", "3", "dbsize").strip() == "3"
    assert redis_server.cli("-n", "0", "dbsize").strip() == "0"


def test_redis_cluster_spreads_keys_over_nodes(tmp_path, redis_cluster):
    seeds = ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster[:2])
    for _ in range(4):
        roundtrip(tmp_path / str(time.monotonic_ns()), f"redis+cluster://{seeds}")
    per_node = [len(n.keys()) for n in redis_cluster]
    # 4 entries, 4 random blobs, and "object code" stored once
    assert sum(per_node) == 9 and sum(1 for c in per_node if c) >= 2, per_node


def test_a_cluster_down_at_start_is_used_once_it_is_up(tmp_path, redis_factory):
    """The daemon builds its tiers at start; a cluster not up yet is a failed request, then
    (the breaker's time past) it is used."""
    import subprocess

    from support.remote import REDIS_CLI, need

    need(REDIS_CLI, "redis-cli")
    ports = [__import__("support.remote", fromlist=["free_port"]).free_port() for _ in range(3)]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
    cas = CAS(tmp_path / "cas")
    t = tiers.build(Cfg([url], **{"cache.remote_skip_s": 0}), cas)
    assert list(t.candidates(os.urandom(32), set())) == []
    assert t.stats()[0]["errors"] == 1
    nodes = [redis_factory(cluster=True, port=p) for p in ports]
    subprocess.run([REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-yes"],
                   capture_output=True, text=True, timeout=60, check=True)
    deadline = time.monotonic() + 30
    while "cluster_state:ok" not in nodes[0].cli("cluster", "info"):
        assert time.monotonic() < deadline, "the cluster did not become ready"
        time.sleep(0.1)
    key, fid, fp, digests = entry(cas, b"after the cluster came up")
    t.enqueue(key, fid, fp, digests)
    assert t.flush(20)["pending"] == 0
    assert t.stats()[0]["uploaded"] == 1, t.stats()
    t.stop(1)


def test_nginx_webdav_blobs_named_by_sha256(tmp_path, nginx):
    import hashlib

    roundtrip(tmp_path, nginx.url())
    files = nginx.files()
    cas_files = [p for p in files if p.parent.name == "cas"]
    assert len(cas_files) == 2 and len([p for p in files if p.parent.name == "ac"]) == 1
    for p in cas_files:  # what bazel-remote checks an upload against
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name


def test_large_blobs_are_compressed(tmp_path, nginx):
    big = b"compressible " * 50_000
    roundtrip(tmp_path, nginx.url(), big=big)
    sizes = sorted(p.stat().st_size for p in nginx.files() if p.parent.name == "cas")
    assert sizes[-1] < len(big) // 10


def test_http_basic_auth_and_bearer(tmp_path, nginx_factory):
    basic = nginx_factory(auth="ci:s3cret")
    roundtrip(tmp_path / "a", basic.url(auth="ci:s3cret"))
    bearer = nginx_factory(bearer="tok123")
    roundtrip(tmp_path / "b", bearer.url() + "|bearer-token=tok123")
    cas = CAS(tmp_path / "c")
    t = tiers.build(Cfg([basic.url(auth="ci:wrong")]), cas)
    assert list(t.candidates(os.urandom(32), set())) == []
    st = t.stats()[0]
    assert st["refused"] == 1 and st["skipping_for_s"] > 0, st
    assert "wrong" not in str(st)
    t.stop(1)


def test_redis_acl_user_limited_to_vrift_keys(tmp_path, redis_factory):
    r = redis_factory("--user", "default", "off", "--user", "ci", "on", ">pw", "~vrift:*", "+get", "+set",
                      "+exists", "+ping", "+info", "+hello", "+client")
    roundtrip(tmp_path, f"redis://ci:pw@127.0.0.1:{r.port}/0")


def test_wrong_redis_password_is_refused_and_skipped(tmp_path, redis_factory):
    r = redis_factory(password="right")
    t = tiers.build(Cfg([f"redis://:wrong@127.0.0.1:{r.port}/0"]), CAS(tmp_path / "cas"))
    key = os.urandom(32)
    assert list(t.candidates(key, set())) == []
    assert list(t.candidates(key, set())) == []  # the breaker is open: not asked again
    st = t.stats()[0]
    assert (st["refused"], st["skipped"]) == (1, 1), st
    assert "wrong" not in str(st)
    t.stop(1)


def test_a_port_that_never_answers_times_out_then_is_skipped(tmp_path, silent_port):
    for url in (f"redis://127.0.0.1:{silent_port}/0", f"http://127.0.0.1:{silent_port}/c"):
        t = tiers.build(Cfg([url + "|operation-timeout=300"]), CAS(tmp_path / "cas"))
        key = os.urandom(32)
        assert list(t.candidates(key, set())) == []
        assert list(t.candidates(key, set())) == []
        st = t.stats()[0]
        assert st["timeouts"] == 1 and st["skipped"] == 1, st
        t.stop(1)


def test_a_dead_server_is_an_error_not_an_exception(tmp_path, redis_server):
    url = redis_server.url
    redis_server.kill()
    t = tiers.build(Cfg([url]), CAS(tmp_path / "cas"))
    assert list(t.candidates(os.urandom(32), set())) == []
    assert t.stats()[0]["errors"] == 1
    t.stop(1)


def test_corrupted_remote_blob_is_a_counted_miss(tmp_path, redis_server):
    cas1, cas2 = CAS(tmp_path / "cas1"), CAS(tmp_path / "cas2")
    t1, t2 = tiers.build(Cfg([redis_server.url]), cas1), tiers.build(Cfg([redis_server.url]), cas2)
    key, fid, fp, digests = entry(cas1, b"good bytes")
    t1.enqueue(key, fid, fp, digests)
    assert t1.flush(20)["pending"] == 0
    (blob_key,) = [k for k in redis_server.keys() if k.startswith("vrift:cas:")]
    redis_server.client().set(blob_key, b"\x00evil bytes")
    remote, _, _, names = next(t2.candidates(key, set()))
    why = t2.fetch_blobs(remote, digests, names)
    assert why and "does not match" in why
    assert not cas2.has(next(iter(digests)))
    assert t2.stats()[0]["corrupt"] == 1
    assert t2.stats()[0]["skipping_for_s"] == 0  # damage is not a reason to skip the server
    t1.stop(1)
    t2.stop(1)


def test_full_redis_refuses_uploads_and_they_are_counted(tmp_path, redis_factory):
    r = redis_factory("--maxmemory", "1mb", "--maxmemory-policy", "noeviction")
    cas = CAS(tmp_path / "cas")
    t = tiers.build(Cfg([r.url]), cas)
    key, fid, fp, digests = entry(cas, os.urandom(3 << 20))
    t.enqueue(key, fid, fp, digests)
    assert t.flush(20)["pending"] == 0
    st = t.stats()[0]
    assert st["full"] == 1 and st["upload_failed"] == 1 and st["uploaded"] == 0, st
    t.stop(1)


def test_read_only_remote_never_receives_uploads(tmp_path, redis_server):
    cas = CAS(tmp_path / "cas")
    t = tiers.build(Cfg([redis_server.url + "|read-only"]), cas)
    key, fid, fp, digests = entry(cas, b"x")
    t.enqueue(key, fid, fp, digests)
    assert t.stop(5)["pending"] == 0
    assert redis_server.keys() == []


def test_stop_is_bounded_when_the_remote_hangs(tmp_path, silent_port):
    cas = CAS(tmp_path / "cas")
    t = tiers.build(Cfg([f"redis://127.0.0.1:{silent_port}/0|operation-timeout=300", ], **{"cache.remote_skip_s": 0}),
                    cas)
    for _ in range(20):
        t.enqueue(*entry(cas, os.urandom(10)))
    report = t.stop(0.5)
    assert report["waited_s"] < 5
    st = t.stats()[0]
    assert st["uploaded"] == 0 and st["timeouts"] >= 1
    assert st["upload_dropped"] + st["upload_failed"] + st["skipped"] >= 1


def test_config_show_lists_remotes_with_origins_and_masked_secrets(tmp_path, run_vrift):
    import json

    proj = tmp_path / "p"
    proj.mkdir()
    (proj / ".vrift.yaml").write_text("cache:\n  remote:\n    - redis://ci:hunter2@cache:6379/1|read-only\n"
                                      "    - http://u:pw@web/c|bearer-token=tok\n")
    shown = json.loads(run_vrift("config", "show", "--json", cwd=proj, check=True).stdout)["cache.remote"]
    assert shown == {"value": ["redis://ci:***@cache:6379/1|read-only", "http://u:***@web/c|bearer-token=***"],
                     "source": f"{proj / '.vrift.yaml'}:2"}
    env = {"VRIFT_CACHE_REMOTE": "redis://:s3@a:1  redis+cluster://b:1,c:2"}
    shown = json.loads(run_vrift("config", "show", "--json", cwd=proj, env=env, check=True).stdout)["cache.remote"]
    assert shown == {"value": ["redis://:***@a:1", "redis+cluster://b:1,c:2"], "source": "env VRIFT_CACHE_REMOTE"}
    text = run_vrift("config", "show", cwd=proj, env=env, check=True).stdout
    assert "s3" not in text and "hunter2" not in text
    (proj / ".vrift.yaml").write_text("cache:\n  remote: ftp://u:secret@x\n")
    bad = run_vrift("config", "show", cwd=proj)
    assert bad.returncode != 0 and ".vrift.yaml:2: cache.remote" in bad.stderr and "secret" not in bad.stderr
    assert "Traceback" not in bad.stderr
