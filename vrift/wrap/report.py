"""The summary of a wrapped build: a dict for scripts and hooks (with this build's share of the
daemon's action-cache counters), one line for a person, and the lines of `--explain`."""
from __future__ import annotations

from .counters import COUNTER_NAMES


def summary_line(summary: dict) -> str:
    """One line a newcomer can read: what the cache did, what was written, what the index
    answered, how long it took; problems in parentheses.  Numbers have thousands separators."""
    cache = summary.get("cache")
    line = "vrift: "
    if cache and cache.get("lookups"):
        line += f"{cache['hits']:,}/{cache['lookups']:,} cached ({cache.get('time_saved_s', 0):.1f} s saved), "
    written = summary["committed"]
    stats = summary["stats_served"] + summary["stats_passed"]
    line += f"{written:,} {'file' if written == 1 else 'files'} written, {summary['stats_served']:,} of {stats:,} stats " \
            "served from the index"
    if summary.get("index_files") is not None:
        line += f" ({summary['index_files']:,} files)"
    line += f", {summary['wall_s']:.2f} s"
    notes = []
    if summary.get("fallback"):
        notes.append(f"not accelerated: {summary['fallback']}")
    if summary.get("fallback_processes"):
        notes.append(f"{summary['fallback_processes']} processes fell back to the real filesystem (VDir unusable)")
    if summary.get("vdir_corrupt"):
        notes.append(f"{summary['vdir_corrupt']} damaged index entries asked of the kernel instead (reported)")
    if summary.get("daemon_restarts"):
        notes.append(summary["daemon_restarts"])
    if summary.get("written_without_daemon"):
        notes.append(f"{summary['written_without_daemon']} files written without the daemon")
    if cache and (cache["misses"] or cache["uncacheable"]):
        text = f"cache: {cache['misses']:,} missed, {cache['uncacheable']:,} uncacheable"
        if cache["reasons"]:
            top = list(cache["reasons"].items())[:2]
            text += " (top: " + ", ".join(f"{r} ×{n}" for r, n in top) + ")"
        notes.append(text)
    if cache and cache.get("remote_problems"):
        notes.extend(cache["remote_problems"])
    return line + (f" ({'; '.join(notes)})" if notes else "")


def summarize(counters: dict[str, int] | None, wall_s: float, fallback: str | None) -> dict:
    c = counters or dict.fromkeys(COUNTER_NAMES, 0)
    return {
        "committed": c["committed"] + c["published"] + c["direct"],
        "stats_served": c["stat_served"],
        "stats_passed": c["stat_passed"],
        "stats_outside": c["stat_outside"],
        "written_without_daemon": c["commit_local"],
        "fallback_processes": c["fallbacks"],
        "daemon_errors": c["daemon_errors"],
        "processes": c["processes"],
        "vdir_corrupt": c["vdir_corrupt"],
        "wall_s": wall_s,
        "fallback": fallback,
        "counters": dict(c),
    }


def cache_summary(before: dict, after: dict, fast_hits: int | None = None) -> dict:
    """This build's share of the daemon's cache counters (other builds of the same project
    running at the same time are counted too).  `fast_hits`: the hits the preload library
    replayed from the action table, from the build's counters — the daemon hears of them by a
    message nobody waits for, which may not have been read yet."""
    def delta(name):
        return max(0, int(after.get(name, 0)) - int(before.get(name, 0)))

    if fast_hits is not None:
        told = delta("fast_hits")
        raw = delta

        def delta(name):  # noqa: F811 - the daemon's count of fast hits replaced by the build's own
            return raw(name) - told + fast_hits if name in ("hits", "lookups") else raw(name)

    reasons = {}
    for reason, n in (after.get("uncacheable") or {}).items():
        d = int(n) - int((before.get("uncacheable") or {}).get(reason, 0))
        if d > 0:
            reasons[reason] = d
    saved = max(0.0, float(after.get("time_saved_s", 0)) - float(before.get("time_saved_s", 0)))
    return {"lookups": delta("lookups"), "hits": delta("hits"), "misses": delta("misses"),
            "uncacheable": sum(reasons.values()), "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "recorded": delta("recorded"), "bytes_replayed": delta("bytes_replayed"),
            "time_saved_s": round(saved, 3),
            "remote_problems": remote_problems(before, after)}


REMOTE_PROBLEMS = ("timeouts", "errors", "refused", "full", "corrupt")


def remote_problems(before: dict, after: dict) -> list[str]:
    """One phrase per remote that failed during this build ("redis://h:6379/0: 2 timeouts"):
    the build went on without it, and says so once."""
    old = {r.get("url"): r for r in before.get("remote") or []}
    out = []
    for r in after.get("remote") or []:
        prev = old.get(r.get("url"), {})
        parts = [f"{n} {name}" for name in REMOTE_PROBLEMS if (n := int(r.get(name, 0)) - int(prev.get(name, 0))) > 0]
        if parts:
            out.append(f"remote {r.get('url')}: {', '.join(parts)}")
    return out


def explain_lines(items: list) -> list[str]:
    return [f"vrift: cache {'miss' if e.get('kind') == 'miss' else 'uncacheable'}: {e.get('argv', '')}: {e.get('why', '')}"
            for e in items]
