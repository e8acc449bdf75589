"""`vrift cache stats [--json] [--zero]`, `vrift cache show` without a key, `vrift status`
showing the cache: after real make builds (cold, then warm after a clean)."""
from __future__ import annotations

import json
import shutil

import pytest

from support.build import require_tools, tool_env, vrift
from support.daemon import daemons  # noqa: F401


def _project(base, n=4):
    root = base / "p"
    (root / "src").mkdir(parents=True)
    rules = []
    for i in range(n):
        (root / "src" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
        rules.append(f"out/f{i}.txt: src/f{i}.txt\n\tmkdir -p out && sleep 0.05 && tr a-z A-Z < src/f{i}.txt > out/f{i}.txt\n")
    (root / "Makefile").write_text("all: " + " ".join(f"out/f{i}.txt" for i in range(n)) + "\n" + "".join(rules))
    return root


def _cold_then_warm(tmp_path):
    """The project built wrapped, its outputs removed, built again: 4 misses, then 4 hits."""
    require_tools("make", "tr", "sleep")
    root = _project(tmp_path)
    env = tool_env()
    vrift("wrap", "make", cwd=root, env=env, check=True)
    shutil.rmtree(root / "out")
    vrift("wrap", "make", cwd=root, env=env, check=True)
    return root, env


def _stats(root, env) -> dict:
    return json.loads(vrift("cache", "stats", "--json", cwd=root, env=env, check=True).stdout)


@pytest.fixture
def built(tmp_path, daemons):
    root, env = _cold_then_warm(tmp_path)
    vrift("daemon", "stop", cwd=root, env=env, check=True)  # counters are folded in at shutdown
    return root, env


def test_stats_after_a_cold_and_a_warm_build(built):
    root, env = built
    s = _stats(root, env)
    for field in ("size_bytes", "max_size_bytes", "hits", "misses", "uncacheable", "time_saved_s", "hit_rate"):
        assert field in s, field
    assert s["hits"] == 4 and s["misses"] == 4 and s["hit_rate"] == 0.5 and s["max_size_bytes"] == 5 << 30
    # each hit saves the recorded run time of its action, which slept 50 ms
    assert s["time_saved_s"] >= 4 * 0.05, s
    assert s["size_bytes"] > 0 and s["fingerprints"] == 4
    text = vrift("cache", "stats", cwd=root, env=dict(env, COLUMNS="80"), check=True).stdout
    assert "time saved" in text and "of 5.0 GiB" in text and max(map(len, text.splitlines())) <= 80

    zeroed = vrift("cache", "stats", "--zero", cwd=root, env=env, check=True)
    assert "zeroed" in zeroed.stdout
    s = _stats(root, env)
    assert (s["hits"], s["misses"], s["time_saved_s"], s["hit_rate"]) == (0, 0, 0, None)
    assert s["fingerprints"] == 4 and s["zeroed_at"]  # entries stay


def test_show_lists_recent_entries_and_status_shows_the_cache(built):
    root, env = built
    listed = json.loads(vrift("cache", "show", "--json", cwd=root, env=env, check=True).stdout)["entries"]
    assert len(listed) == 4 and all(e["key"] and "tr a-z A-Z" in " ".join(e["argv"]) for e in listed)
    assert listed == sorted(listed, key=lambda e: -e["last_used"])
    text = vrift("cache", "show", cwd=root, env=dict(env, COLUMNS="80"), check=True).stdout
    lines = text.splitlines()
    assert lines[0].split() == ["key", "tool", "used", "command"] and max(map(len, lines)) <= 80
    assert listed[0]["key"][:12] in text and "ago" in text
    # a listed prefix shows the entry
    detail = vrift("cache", "show", listed[0]["key"][:12], cwd=root, env=env, check=True).stdout
    assert "took" in detail and "src/f" in detail
    assert len(json.loads(vrift("cache", "show", "--limit", "2", "--json", cwd=root, env=env,
                                check=True).stdout)["entries"]) == 2

    status = vrift("status", cwd=root, env=dict(env, COLUMNS="80"), check=True).stdout
    assert "action cache: 4 entries" in status and "4 hits, 4 misses (50% hit rate)" in status
    assert max(map(len, status.splitlines())) <= 80, status
    doc = json.loads(vrift("status", "--json", cwd=root, env=env, check=True).stdout)
    assert doc["cache"]["hits"] == 4 and doc["cas"]["bytes"] >= doc["cas"]["logical_bytes"] > 0


def test_empty_cache(tmp_path, home, run_vrift):
    assert "the action cache is empty" in run_vrift("cache", "show", cwd=tmp_path, check=True).stdout
    s = json.loads(run_vrift("cache", "stats", "--json", cwd=tmp_path, check=True).stdout)
    assert (s["size_bytes"], s["hits"], s["hit_rate"]) == (0, 0, None)
    assert run_vrift("cache", "stats", "--zero", cwd=tmp_path, check=True).returncode == 0


def test_stats_right_after_a_build_count_what_the_running_daemon_has_not_folded_yet(tmp_path, daemons):
    # like `ccache -s`: the totals are current the moment the build ends, daemon still running
    root, env = _cold_then_warm(tmp_path)
    s = _stats(root, env)  # no daemon stop, no wait
    assert (s["hits"], s["misses"]) == (4, 4), s
    vrift("daemon", "stop", cwd=root, env=env, check=True)
    s = _stats(root, env)  # folded at shutdown: counted once, not twice
    assert (s["hits"], s["misses"]) == (4, 4), s


def test_stats_read_while_the_daemon_folds_its_counts_miss_nothing(tmp_path, daemons):
    """The daemon folds what it counted into LMDB every second; a read of LMDB and then of the
    daemon that straddles a fold must not lose the folded counts (it did: 0 hits for a moment)."""
    from vrift.cache.store import CacheStore
    from vrift.commands.cache_cmd import cache_stats

    _cold_then_warm(tmp_path)
    reads = []
    with CacheStore(daemons) as store:
        for _ in range(400):  # across the fold of this build's counts (within about a second)
            doc = cache_stats(daemons, store)
            reads.append((doc["hits"], doc["misses"]))
            if store.stats()["counters"].get("hits", 0) >= 4 and len(reads) > 20:
                break
        assert store.stats()["counters"].get("hits", 0) == 4, "the counts were folded during the reads"
    assert set(reads) == {(4, 4)}, sorted(set(reads))
