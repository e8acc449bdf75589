"""`vrift cache stats|show KEY|clear`."""
from __future__ import annotations

import time

import click

from ..project import Home, VriftError
from .common import emit_json, human_bytes, json_option, render_table


def _store(must_exist: bool = True):
    from ..cache.store import CacheStore, cache_dir

    home = Home.from_env().ensure()
    if not (cache_dir(home) / "data.mdb").exists():
        if must_exist:
            return home, None
    return home, CacheStore(home)


@click.group("cache")
def cache_group():
    """Inspect and clear the action cache (shared by every project of this user)."""


@cache_group.command("stats")
@json_option
def stats_cmd(as_json):
    """Entries, their size, and the totals of hits, misses and uncacheable actions by reason
    (folded in by the project daemons every few seconds)."""
    home, store = _store()
    if store is None:
        stats = {"path": str(home.root / "cache"), "keys": 0, "fingerprints": 0, "bytes": 0, "lmdb_bytes": 0,
                 "counters": {}}
    else:
        with store:
            stats = store.stats()
    backlog = _upload_backlog(home) if (stats["counters"].get("remote")) else {}
    if backlog:
        stats["upload_backlog"] = backlog
    if as_json:
        emit_json(stats)
        return
    c = stats["counters"]
    lookups = c.get("hits", 0) + c.get("misses", 0)
    rate = f" ({100 * c.get('hits', 0) / lookups:.0f}% hit rate)" if lookups else ""
    click.echo(f"action cache {stats['path']}")
    click.echo(f"  {stats['keys']:,} keys, {stats['fingerprints']:,} fingerprints, outputs {human_bytes(stats['bytes'])}, "
               f"LMDB {human_bytes(stats['lmdb_bytes'])}")
    click.echo(f"  {c.get('hits', 0):,} hits, {c.get('misses', 0):,} misses{rate}, {c.get('recorded', 0):,} recorded, "
               f"{human_bytes(c.get('bytes_replayed', 0))} replayed")
    for url, r in sorted((c.get("remote") or {}).items()):
        g = r.get
        click.echo(f"remote {url}")
        click.echo(f"  {g('hits', 0):,} hits, {g('misses', 0):,} misses, {g('errors', 0):,} errors, "
                   f"{g('timeouts', 0):,} timeouts, {g('refused', 0):,} refused, {g('full', 0):,} full, "
                   f"{g('corrupt', 0):,} corrupt blobs or entries, {g('skipped', 0):,} skipped (after a failure), "
                   f"{g('over_budget', 0):,} out of time")
        click.echo(f"  {human_bytes(g('bytes_down', 0))} down, {human_bytes(g('bytes_up', 0))} up, "
                   f"{g('uploaded', 0):,} entries uploaded, {g('upload_failed', 0):,} failed, "
                   f"{g('upload_dropped', 0):,} dropped, {backlog.get(url, 0):,} waiting in running daemons")
    reasons = sorted((c.get("uncacheable") or {}).items(), key=lambda kv: -kv[1])
    if reasons:
        click.echo(f"  {sum(n for _, n in reasons):,} uncacheable:")
        click.echo(render_table(("reason", "actions"), [(r, n) for r, n in reasons], right=(1,)))


def _upload_backlog(home) -> dict[str, int]:
    """Uploads queued in the running project daemons, per remote (asked over their sockets)."""
    from ..daemon.client import ProjectClient

    out: dict[str, int] = {}
    for sock in sorted(home.run_dir.glob("p-*.sock")):
        try:
            with ProjectClient(sock, 1000) as c:
                remotes = (c.cache_stats().get("cache") or {}).get("remote") or []
        except (VriftError, OSError, ValueError):
            continue  # stopped or busy: its counters are folded in when it stops
        for r in remotes:
            out[r["url"]] = out.get(r["url"], 0) + int(r.get("backlog", 0))
    return out


@cache_group.command("show")
@click.argument("key")
@json_option
def show_cmd(key, as_json):
    """Show the fingerprints of KEY (hex, or a prefix of at least 4 digits): inputs, outputs, status."""
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
    click.echo(f"key {doc['key']}")
    for fp in doc["fingerprints"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(fp.get("created", 0)))
        click.echo(f"\nfingerprint {fp['id']}  {fp.get('tool', '')}  status {fp.get('status')}  "
                   f"{human_bytes(fp.get('size', 0))}  recorded {when}"
                   + (f"  last hit {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(fp['last_hit']))}"
                      if fp.get("last_hit") else ""))
        if fp.get("argv"):
            click.echo("  " + " ".join(fp["argv"]))
        rows = [(i[0], i[1], (i[2] or "")[:16]) for i in fp.get("inputs", [])]
        rows += [("out", o[0], (o[1] or "directory")[:16]) for o in fp.get("outputs", [])]
        click.echo(render_table(("kind", "path", "digest"), rows))


@cache_group.command("clear")
@json_option
def clear_cmd(as_json):
    """Remove every entry (blobs stay in the CAS until `vrift gc`)."""
    _home, store = _store()
    removed = {"keys": 0, "fingerprints": 0}
    if store is not None:
        with store:
            removed = store.clear()
    if as_json:
        emit_json(removed)
    else:
        click.echo(f"removed {removed['keys']:,} keys and {removed['fingerprints']:,} fingerprints")
