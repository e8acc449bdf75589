"""cache.max_size: the action cache's size on disk, LRU eviction (directly, in `vrift gc`, and
in the daemon after a build), and `cas stats` in disk bytes."""
from __future__ import annotations

import json
import os
import secrets
import time

import blake3
import pytest

from support.build import require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401
from vrift import config
from vrift.cache import evict
from vrift.cache.fingerprint import Fingerprint
from vrift.cache.store import CacheStore
from vrift.cas import CAS
from vrift.home import Home


def _put(store: CacheStore, cas: CAS, name: str, blobs: list[bytes], created: float) -> bytes:
    outputs = []
    for n, data in enumerate(blobs):
        digest = cas.store_bytes(data).digest
        outputs.append([f"build/{name}.{n}", digest.hex(), 0o644, len(data)])
    fp = Fingerprint(outputs=outputs, created=created, tool="cc", argv=["cc", "-c", f"{name}.c"])
    store.put(blake3.blake3(name.encode()).digest(), fp.id, fp.to_json())
    return fp.id


def _blob(kib: int) -> bytes:
    return secrets.token_bytes(kib * 1024)


def test_parse_size_units():
    assert config.parse_size("5G") == 5 << 30 and config.parse_size("500M") == 500 << 20
    assert config.parse_size("1.5g") == 3 << 29 and config.parse_size("64KiB") == 64 << 10
    assert config.parse_size(0) == 0 and config.parse_size("123") == 123
    for bad in ("lots", "-1G", "5 X", True):
        with pytest.raises(ValueError):
            config.parse_size(bad)
    assert config.KEYS["cache.max_size"].default == "5G"


def test_max_size_from_env_and_file(tmp_path, home, run_vrift):
    shown = json.loads(run_vrift("config", "show", "--json", cwd=tmp_path,
                                 env={"VRIFT_CACHE_MAX_SIZE": "500M"}, check=True).stdout)
    assert shown["cache.max_size"] == {"value": "500M", "source": "env VRIFT_CACHE_MAX_SIZE"}
    bad = run_vrift("config", "show", cwd=tmp_path, env={"VRIFT_CACHE_MAX_SIZE": "huge"})
    assert bad.returncode == 1 and "VRIFT_CACHE_MAX_SIZE" in bad.stderr and "5G" in bad.stderr
    (tmp_path / ".vrift.yaml").write_text("cache:\n  max_size: 2X\n")
    bad = run_vrift("config", "show", cwd=tmp_path)
    assert bad.returncode == 1 and ".vrift.yaml:2" in bad.stderr and "cache.max_size" in bad.stderr


def test_usage_counts_disk_blocks_and_not_index_blobs(home):
    cas = CAS(home.cas_dir)
    with CacheStore(home) as store:
        small = b"x"  # one byte of content, a whole block on disk
        _put(store, cas, "a", [small], 1000)
        u = evict.usage(store, cas)
        digest = blake3.blake3(small).digest()
        disk = os.stat(cas.blob_path(digest)).st_blocks * 512
        assert disk >= 512 and u.blob_disk == {digest: disk}
        assert u.size_bytes == u.entry_bytes + disk and u.entry_bytes > 0
        assert evict.usage(store, cas, index_refs={digest}).blob_disk == {}


def test_lru_eviction_removes_oldest_and_only_their_blobs(home):
    cas = CAS(home.cas_dir)
    shared = _blob(8)
    with CacheStore(home) as store:
        ids = {name: _put(store, cas, name, [_blob(16), shared], created)
               for name, created in (("a", 1000), ("b", 2000), ("c", 3000), ("d", 4000))}
        store.add(last_hit={ids["a"]: 5000.0})  # a was used last: b is now the oldest
        before = evict.usage(store, cas, set())
        b_own = [bytes.fromhex(o[1]) for o in store.fingerprint(ids["b"])["outputs"]][0]
        report = evict.evict(home, store, cas, before.size_bytes - 1, index_refs=set())
        assert report.evicted == 1 and report.keys_removed == 1 and report.blobs_removed == 1
        assert store.fingerprint(ids["b"]) is None and not cas.has(b_own)
        assert all(store.fingerprint(ids[n]) for n in "acd") and cas.has(blake3.blake3(shared).digest())
        assert report.size_after <= report.max_size and report.size_after == evict.usage(store, cas, set()).size_bytes
        assert ids["b"].hex() not in store.last_hits()
        # a dry run says what would go and changes nothing
        dry = evict.evict(home, store, cas, 1, index_refs=set(), delete=False)
        assert dry.evicted == 3 and all(store.fingerprint(ids[n]) for n in "acd")
        # down to nothing: the shared blob goes with the last entry naming it, unless an index holds it
        keep = blake3.blake3(shared).digest()
        everything = evict.evict(home, store, cas, 1, index_refs={keep})
        assert everything.evicted == 3 and list(store.keys()) == [] and cas.has(keep)
        assert cas.stats()[0] == 1
        assert evict.evict(home, store, cas, 0).evicted == 0  # 0: no limit


def test_gc_evicts_beyond_the_limit_and_cas_stats_in_disk_bytes(home, run_vrift):
    cas = CAS(home.cas_dir)
    with CacheStore(home) as store:
        for n, name in enumerate("abcd"):
            _put(store, cas, name, [_blob(12)], 1000 + n)
        size = evict.usage(store, cas, set()).size_bytes
    stats = json.loads(run_vrift("cas", "stats", "--json", check=True).stdout)
    on_disk = sum(os.stat(p).st_blocks * 512 for _, p, _, _ in cas.iter_blobs())
    assert stats["blobs"] == 4 and stats["bytes"] == on_disk and stats["logical_bytes"] == 4 * 12 * 1024
    limit = str(size // 2)
    dry = json.loads(run_vrift("gc", "--json", env={"VRIFT_CACHE_MAX_SIZE": limit}, check=True).stdout)
    assert dry["cache_eviction"]["evicted"] >= 2 and cas.stats()[0] == 4
    done = run_vrift("gc", "--delete", env={"VRIFT_CACHE_MAX_SIZE": limit}, check=True)
    assert "action cache over its limit" in done.stdout and "evicted" in done.stdout
    with CacheStore(home) as store:
        after = evict.usage(store, cas, set())
        assert after.size_bytes <= int(limit) and len(after.entries) == 2
        # the newest two stay
        assert sorted(fp["created"] for _, fp in store.iter_fingerprints()) == [1002, 1003]
    assert cas.stats()[0] == 2
    stats = json.loads(run_vrift("cache", "stats", "--json", env={"VRIFT_CACHE_MAX_SIZE": limit},
                                 check=True).stdout)
    assert stats["max_size_bytes"] == int(limit) and 0 < stats["size_bytes"] <= int(limit)


def test_the_daemon_evicts_after_a_build(tmp_path, daemons):
    """A real make build records 6 copies; with a limit below their size the daemon evicts
    the least recently used ones once the build has stopped recording.  (The copies' blobs
    are also in the project index, as the files are on disk: only the entries count.)"""
    require_tools("make", "cp")
    root = tmp_path / "p"
    (root / "src").mkdir(parents=True)
    rules = []
    for n in range(6):
        (root / "src" / f"f{n}.txt").write_bytes(secrets.token_bytes(20_000))
        rules.append(f"out/f{n}.txt: src/f{n}.txt\n\tmkdir -p out && cp src/f{n}.txt out/f{n}.txt\n")
    (root / "Makefile").write_text("all: " + " ".join(f"out/f{n}.txt" for n in range(6)) + "\n" + "".join(rules))
    env = tool_env()
    env["VRIFT_CACHE_MAX_SIZE"] = "10K"  # about three of the six entries
    vrift("wrap", "make", "-j1", cwd=root, env=env, check=True)
    home = Home.from_env(env)
    deadline = time.monotonic() + 30
    while True:
        stats = json.loads(vrift("cache", "stats", "--json", cwd=root, env=env, check=True).stdout)
        # eviction runs in the daemon entry by entry: wait for it to finish, not to start
        done = (stats["evicted"] > 0 and stats["size_bytes"] <= 10 * 1024
                and stats["fingerprints"] == stats["recorded"] - stats["evicted"])
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert stats["evicted"] > 0 and stats["size_bytes"] <= 10 * 1024, stats
    assert stats["recorded"] >= 6 and stats["fingerprints"] == stats["recorded"] - stats["evicted"]
    with CacheStore(home) as store:
        left = " ".join(" ".join(fp["argv"]) for _, fp in store.iter_fingerprints())
    assert "out/f5.txt" in left and "out/f0.txt" not in left  # the first recorded went first
