"""`vrift cas verify|stats|path` and `vrift gc`."""
from __future__ import annotations

import re
import sys

import click

from ..errors import VriftError
from ..home import Home
from .common import emit_json, human_bytes, json_option, render_table

DEFAULT_GRACE = "1d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds from '7d', '12h', '30m', '45s', '1w', '0' or a plain number of seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text or "")
    if not m:
        raise VriftError(f"--older-than: not a duration (like 7d, 12h, 30m, 0): {text!r}")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)


def _cas():
    from ..cas import CAS

    home = Home.from_env().ensure()
    return home, CAS(home.cas_dir)


@click.group("cas")
def cas_group():
    """Inspect and verify the content-addressed store."""


@cas_group.command("verify")
@json_option
@click.option("--quarantine", is_flag=True, help="Move bad blobs out of the store into cas/quarantine/.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Hashing threads (default: CPU count, ≤ 8).")
def verify_cmd(as_json, quarantine, workers):
    """Rehash every blob; exit 1 if any blob's content does not match its name."""
    from ..cas.verify import verify

    _, cas = _cas()
    report = verify(cas, progress=sys.stderr.isatty() and not as_json, workers=workers or 0, quarantine=quarantine)
    if as_json:
        emit_json(report.to_json())
    else:
        click.echo(f"checked {report.checked:,} blobs, {human_bytes(report.bytes)}: "
                   f"{'all sound' if report.ok else f'{len(report.bad):,} bad'}")
        if report.bad:
            click.echo(render_table(["digest", "problem"], report.bad, fit=1))
        if report.quarantined:
            click.echo(f"moved {len(report.quarantined):,} bad blobs to {cas.root / 'quarantine'}")
    sys.exit(0 if report.ok else 1)


@cas_group.command("stats")
@json_option
def stats_cmd(as_json):
    """Number of blobs and the space they take on disk (as `du` counts it)."""
    _, cas = _cas()
    count, logical, disk = cas.usage()
    if as_json:
        emit_json({"root": str(cas.root), "blobs": count, "bytes": disk, "logical_bytes": logical})
    else:
        click.echo(f"CAS {cas.root}")
        click.echo(render_table(["blobs", "on disk", "content"], [[f"{count:,}", human_bytes(disk), human_bytes(logical)]],
                                right=(0, 1, 2)))


@cas_group.command("path")
@click.argument("digest")
def path_cmd(digest):
    """Print the path of the blob named DIGEST (64 hex characters); exit 1 if absent."""
    _, cas = _cas()
    p = cas.blob_path(digest.strip().lower())
    click.echo(str(p))
    if not p.exists():
        click.echo(f"no blob {digest} in {cas.root}", err=True)
        sys.exit(1)


@click.command("gc")
@click.option("--delete", is_flag=True, help="Remove the blobs (default: only report what would go).")
@click.option("--older-than", "older_than", default=DEFAULT_GRACE, show_default=True, metavar="DURATION",
              help="Grace period: keep unreferenced blobs used more recently than this (7d, 12h, 30m, 0). "
                   "Keep it above the length of the longest running build.")
@json_option
def gc_cmd(delete, older_than, as_json):
    """Remove blobs that no project index and no action-cache entry references (dry run by default)."""
    from ..maintenance.gc import collect

    grace = parse_duration(older_than)
    home, cas = _cas()
    progress = sys.stderr.isatty() and not as_json
    evicted = _evict(home, cas, delete, progress)
    report = collect(home, cas, grace, delete=delete, progress=progress)
    if as_json:
        data = report.to_json()
        data["older_than_s"] = grace
        data["cache_eviction"] = evicted.to_json() if evicted else None
        emit_json(data)
        return
    gone = "removed" if delete else "would remove"
    if evicted and evicted.evicted:
        click.echo(f"action cache over its limit ({human_bytes(evicted.size_before)} > "
                   f"{human_bytes(evicted.max_size)}): {'evicted' if delete else 'would evict'} "
                   f"{evicted.evicted:,} entries and {evicted.blobs_removed:,} blobs "
                   f"({human_bytes(evicted.bytes_removed)})")
    rows = [
        ["blobs", f"{report.blobs:,}", human_bytes(report.bytes_total)],
        ["referenced", f"{report.referenced:,}", ""],
        ["unreferenced, younger than " + older_than, f"{report.kept_young:,}", ""],
        [gone, f"{(report.removed if delete else report.removable):,}",
         human_bytes(report.bytes_removed if delete else report.bytes_removable)],
    ]
    click.echo(render_table(["", "blobs", "size"], rows, right=(1, 2)))
    if report.missing:
        click.echo(f"warning: {report.missing:,} referenced blobs are missing from the store "
                   "(re-ingest the projects that use them)", err=True)
    if not delete and report.removable:
        click.echo("dry run: pass --delete to remove them")


def _evict(home: Home, cas, delete: bool, progress: bool):
    """Bring the action cache within cache.max_size first: the blobs it frees go now."""
    from ..cache.evict import evict
    from ..cache.store import CacheStore, cache_dir
    from .cache_cmd import max_size_bytes

    if not (cache_dir(home) / "data.mdb").exists():
        return None
    limit = max_size_bytes(home)
    with CacheStore(home) as store:
        return evict(home, store, cas, limit, progress=progress, delete=delete)
