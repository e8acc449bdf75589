"""`vrift cache stats [--zero]|show [KEY]|clear`."""
from __future__ import annotations

import os
import time

import click

from ..errors import VriftError
from ..home import Home
from .common import emit_json, human_bytes, json_option, render_table, shorten, terminal_width


def _store(must_exist: bool = True):
    from ..cache.store import CacheStore, cache_dir

    home = Home.from_env().ensure()
    if not (cache_dir(home) / "data.mdb").exists():
        if must_exist:
            return home, None
    return home, CacheStore(home)


def max_size_bytes(home: Home) -> int:
    """cache.max_size as the configuration of the current directory's project gives it."""
    from .. import config as config_mod
    from ..identity import find_root

    cfg = config_mod.load(find_root(), home=home)
    return config_mod.parse_size(cfg["cache.max_size"])


CONSISTENT_READS = 5  # LMDB / daemons / LMDB rounds before the last one is taken as it is


def cache_stats(home: Home, store) -> dict:
    """The numbers `vrift cache stats` and `vrift status` show (`store` None: empty cache)."""
    from ..cache.store import cache_dir, merge_counters

    doc = {"path": str(cache_dir(home)), "keys": 0, "fingerprints": 0, "size_bytes": 0,
           "max_size_bytes": max_size_bytes(home), "lmdb_bytes": 0, "counters": {}}
    if store is not None:
        from ..cache import evict
        from ..cas import CAS

        base = store.stats()
        doc.update(keys=base["keys"], fingerprints=base["fingerprints"], counters=base["counters"],
                   size_bytes=evict.size(home, store, CAS(home.cas_dir)),
                   lmdb_bytes=evict.disk_bytes(os.path.join(doc["path"], "data.mdb")))
    # LMDB, then what the running daemons hold, then LMDB again: a daemon folding its counts
    # into LMDB in between (every second) would be missed, so the pair is read again until the
    # totals stood still around the question
    unflushed = _unflushed(home)
    for _ in range(CONSISTENT_READS):
        if store is None:
            break
        again = store.stats()["counters"]
        if again == doc["counters"]:
            break
        doc["counters"] = again
        unflushed = _unflushed(home)
    c = doc["counters"] = merge_counters(dict(doc["counters"]), unflushed)
    hits, misses = int(c.get("hits", 0)), int(c.get("misses", 0))
    reasons = dict(sorted((c.get("uncacheable") or {}).items(), key=lambda kv: -kv[1]))
    doc.update(hits=hits, misses=misses, uncacheable=sum(reasons.values()), uncacheable_reasons=reasons,
               recorded=int(c.get("recorded", 0)), evicted=int(c.get("evicted", 0)),
               bytes_replayed=int(c.get("bytes_replayed", 0)), corrupt_blobs=int(c.get("corrupt_blobs", 0)),
               fast_hits=int(c.get("fast_hits", 0)),
               time_saved_s=round(float(c.get("time_saved_s", 0)), 3),
               hit_rate=round(hits / (hits + misses), 4) if hits + misses else None,
               zeroed_at=c.get("zeroed_at"))
    return doc


def size_line(doc: dict) -> str:
    limit = human_bytes(doc["max_size_bytes"]) if doc["max_size_bytes"] else "no limit"
    pct = f" ({100 * doc['size_bytes'] / doc['max_size_bytes']:.0f}%)" if doc["max_size_bytes"] else ""
    return f"{human_bytes(doc['size_bytes'])} of {limit}{pct}"


def hits_line(doc: dict) -> str:
    rate = f" ({100 * doc['hit_rate']:.0f}% hit rate)" if doc["hit_rate"] is not None else ""
    return (f"{doc['hits']:,} hits, {doc['misses']:,} misses{rate}, {doc['uncacheable']:,} uncacheable, "
            f"{_seconds(doc['time_saved_s'])} saved")


@click.group("cache")
def cache_group():
    """Inspect and clear the action cache (shared by every project of this user)."""


@cache_group.command("stats")
@click.option("--zero", is_flag=True, help="Reset the hit, miss and time-saved totals to zero (like ccache -z).")
@json_option
def stats_cmd(zero, as_json):
    """Size against cache.max_size, hits, misses, time saved and uncacheable actions by reason
    (folded in by the project daemons every second)."""
    home, store = _store()
    if zero:
        if store is not None:
            with store:
                store.zero()
        if as_json:
            emit_json({"zeroed": True})
        else:
            click.echo("statistics zeroed")
        return
    if store is None:
        doc = cache_stats(home, None)
    else:
        with store:
            doc = cache_stats(home, store)
    backlog = _upload_backlog(home) if doc["counters"].get("remote") else {}
    if backlog:
        doc["upload_backlog"] = backlog
    if as_json:
        emit_json(doc)
        return
    rows = [("entries", f"{doc['keys']:,} commands, {doc['fingerprints']:,} variants"),
            ("size", size_line(doc)),
            ("hits", f"{doc['hits']:,}" + (f" ({100 * doc['hit_rate']:.1f}%)" if doc["hit_rate"] is not None else "")),
            ("misses", f"{doc['misses']:,}"),
            ("uncacheable", f"{doc['uncacheable']:,}"),
            ("time saved", _seconds(doc["time_saved_s"])),
            ("recorded", f"{doc['recorded']:,}"),
            ("evicted", f"{doc['evicted']:,}"),
            ("replayed", human_bytes(doc["bytes_replayed"]))]
    if doc.get("corrupt_blobs"):
        rows.append(("damaged blobs", f"{doc['corrupt_blobs']:,} found at replay (quarantined; the commands ran)"))
    if doc["zeroed_at"]:
        rows.append(("zeroed", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(doc["zeroed_at"]))))
    click.echo(f"action cache {doc['path']}")
    click.echo(render_table(("", "value"), rows, fit=1))
    for url, rem in sorted((doc["counters"].get("remote") or {}).items()):
        g = rem.get
        click.echo("")
        click.echo(f"remote {url}")
        click.echo(render_table(("", "value"), [
            ("hits / misses", f"{g('hits', 0):,} / {g('misses', 0):,}"),
            ("errors", f"{g('errors', 0):,} errors, {g('timeouts', 0):,} timeouts, {g('refused', 0):,} refused, "
                       f"{g('full', 0):,} full"),
            ("damaged", f"{g('corrupt', 0):,} blobs or entries"),
            ("skipped", f"{g('skipped', 0):,} after a failure, {g('over_budget', 0):,} out of time"),
            ("traffic", f"{human_bytes(g('bytes_down', 0))} down, {human_bytes(g('bytes_up', 0))} up"),
            ("uploads", f"{g('uploaded', 0):,} done, {g('upload_failed', 0):,} failed, {g('upload_dropped', 0):,} "
                        f"dropped, {backlog.get(url, 0):,} waiting")], fit=1))
    if doc["uncacheable_reasons"]:
        click.echo("")
        click.echo(render_table(("uncacheable because", "actions"), list(doc["uncacheable_reasons"].items()),
                                right=(1,), fit=0))


def _running_daemons(home):
    """(socket, the daemon's action-cache STATS) of each running project daemon."""
    from ..daemon.client import ProjectClient

    for sock in sorted(home.run_dir.glob("p-*.sock")):
        try:
            with ProjectClient(sock, 5000) as c:  # a loaded machine: late counters beat none
                yield sock, c.cache_stats().get("cache") or {}
        except (VriftError, OSError, ValueError):
            continue  # stopped or busy: its counters are folded in when it stops


def _unflushed(home) -> dict:
    from ..cache.store import merge_counters

    out: dict = {}
    for _, cache in _running_daemons(home):
        merge_counters(out, cache.get("unflushed") or {})
    return out


def _upload_backlog(home) -> dict[str, int]:
    """Uploads queued in the running project daemons, per remote (asked over their sockets)."""
    out: dict[str, int] = {}
    for _, cache in _running_daemons(home):
        for r in cache.get("remote") or []:
            out[r["url"]] = out.get(r["url"], 0) + int(r.get("backlog", 0))
    return out


@cache_group.command("show")
@click.argument("key", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Entries to list when no KEY is given.")
@json_option
def show_cmd(key, limit, as_json):
    """Without KEY: the most recently used entries (key, tool, command, age).  With KEY (hex,
    or a prefix of at least 4 digits): its fingerprints, inputs, outputs and status."""
    if key is None:
        _list_recent(limit, as_json)
        return
    if len(key) < 4:
        raise VriftError(f"key {key!r}: give at least 4 hex digits")
    home, store = _store()
    if store is None:
        raise VriftError(f"no cache entry {key} (the action cache is empty)")
    with store:
        keys = store.find_keys(key)
        if not keys:
            raise VriftError(f"no cache entry {key}")
        if len(keys) > 1:
            raise VriftError(f"key prefix {key} is ambiguous ({len(keys)} keys): give more digits")
        found = [(fid, data) for fid, data in store.candidates(keys[0])]
        hits = store.last_hits()
    doc = {"key": keys[0].hex(), "fingerprints": [dict(data, id=fid.hex(), last_hit=hits.get(fid.hex()))
                                                  for fid, data in found]}
    if as_json:
        emit_json(doc)
        return
    width = terminal_width()
    click.echo(f"key {doc['key']}")
    for fp in doc["fingerprints"]:
        click.echo(f"\nfingerprint {fp['id'][:16]}  {fp.get('tool', '')}  exit status {fp.get('status')}  "
                   f"{human_bytes(fp.get('size', 0))}")
        click.echo(f"  recorded {_when(fp.get('created'))}, took {_seconds(fp.get('wall_s', 0))}"
                   + (f", last hit {_when(fp['last_hit'])}" if fp.get("last_hit") else ""))
        if fp.get("argv"):
            click.echo("  " + shorten(" ".join(fp["argv"]), width - 2))
        rows = [(i[0], i[1], (i[2] or "")[:12]) for i in fp.get("inputs", [])]
        rows += [("out", o[0], (o[1] or "directory")[:12]) for o in fp.get("outputs", [])]
        click.echo(render_table(("kind", "path", "digest"), rows, fit=1))


def _list_recent(limit: int, as_json: bool) -> None:
    _home, store = _store()
    rows: list[dict] = []
    if store is not None:
        with store:
            key_of = {fid: k for k, fids in store.keys() for fid in fids}
            hits = store.last_hits()
            for fid, data in store.iter_fingerprints():
                used = max(float(hits.get(fid.hex(), 0)), float(data.get("created", 0)))
                rows.append({"key": key_of.get(fid, b"").hex(), "fingerprint": fid.hex(), "tool": data.get("tool", ""),
                             "argv": data.get("argv", []), "last_used": used, "wall_s": data.get("wall_s", 0),
                             "size": data.get("size", 0)})
    rows.sort(key=lambda r: -r["last_used"])
    rows = rows[:limit]
    if as_json:
        emit_json({"entries": rows})
        return
    if not rows:
        click.echo("the action cache is empty")
        return
    now = time.time()
    table = [(r["key"][:12], shorten(_tool(r), 12), _age(now - r["last_used"]), _command(r["argv"])) for r in rows]
    click.echo(render_table(("key", "tool", "used", "command"), table, right=(2,), fit=3))
    click.echo("details: vrift cache show KEY")


@cache_group.command("clear")
@json_option
def clear_cmd(as_json):
    """Remove every entry (blobs stay in the CAS until `vrift gc`)."""
    from ..cache.fasttable import NAME_PREFIX

    home, store = _store()
    removed = {"keys": 0, "fingerprints": 0}
    if store is not None:
        with store:
            removed = store.clear()
    # the projects' action tables too, so no replay outlives the entries (a running daemon
    # writes its table again only when it records something new)
    for table in home.user_shm_dir.glob(f"{NAME_PREFIX}*"):
        try:
            table.unlink()
        except OSError:
            pass
    if as_json:
        emit_json(removed)
    else:
        click.echo(f"removed {removed['keys']:,} keys and {removed['fingerprints']:,} fingerprints")


def _command(argv: list[str]) -> str:
    """The command as the build wrote it: `sh -c CMD` (ninja's way) shows CMD."""
    from ..cache.scope import SHELLS

    if len(argv) > 2 and os.path.basename(argv[0]) in SHELLS and argv[1] == "-c":
        return argv[2]
    return " ".join(argv)


def _tool(row: dict) -> str:
    """The command's program: for `sh -c "cc …"` cc, not the shell."""
    from ..cache.scope import SHELLS, command_names

    names = command_names(row["tool"], row["argv"]) - SHELLS - {row["tool"]}
    return sorted(names)[0] if len(names) == 1 else row["tool"]


def _seconds(s) -> str:
    s = float(s or 0)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{s / 3600:.1f} h"


def _age(s: float) -> str:
    s = max(0, int(s))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit} ago"
    return f"{s}s ago"


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t or 0)))
