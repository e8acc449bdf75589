"""Running the wrapped tool: its environment, the counters file, the process, the summary.

The tool inherits the wrapper's stdin, stdout and stderr (nothing is captured) and its
process group: Ctrl-C reaches it directly from the terminal, while the wrapper ignores
SIGINT/SIGQUIT like a shell waiting for a foreground job, and forwards SIGTERM/SIGHUP that
are sent to the wrapper alone.  The exit status is the tool's, 128+N for a death by signal N.
"""
from __future__ import annotations

import os
import signal
import struct
import sys

from ..vdir.layout import COUNTERS_NAME_PREFIX

# vrift/preload/vrift_counters.h
COUNTERS_MAGIC = 0x56524354
COUNTERS_VERSION = 1
COUNTERS_SIZE = 256
COUNTER_NAMES = ("stat_served", "stat_passed", "stat_outside", "committed", "commit_local", "published",
                 "direct", "invalidated", "fallbacks", "daemon_errors", "processes",
                 "vdir_corrupt", "fast_hits")
_COUNTERS_HEAD = struct.Struct("<IIQ")
_COUNTERS_BODY = struct.Struct(f"<{len(COUNTER_NAMES)}Q")

FORWARDED = (signal.SIGTERM, signal.SIGHUP)
IGNORED_WHILE_WAITING = (signal.SIGINT, signal.SIGQUIT)
# Python ignores these at start-up; the tool must get the defaults back (as subprocess does)
RESTORED = (signal.SIGPIPE, signal.SIGXFSZ)


def remove_stale_counters(directory: str) -> None:
    """Counters files of wrappers that died without removing theirs (kill -9): their pid is gone."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith(COUNTERS_NAME_PREFIX):
            continue
        try:
            pid = int(name[len(COUNTERS_NAME_PREFIX):])
            os.kill(pid, 0)
        except ValueError:
            continue
        except ProcessLookupError:
            remove_quietly(os.path.join(directory, name))
        except PermissionError:
            pass


def create_counters(directory: str) -> str:
    """A fresh counters file (0600) in `directory`, magic and version set, counts zero; stale
    files of dead wrappers there are removed first."""
    remove_stale_counters(directory)
    head = _COUNTERS_HEAD.pack(COUNTERS_MAGIC, COUNTERS_VERSION, 0)
    for attempt in range(2):
        path = os.path.join(directory, f"{COUNTERS_NAME_PREFIX}{os.getpid()}")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:  # left by an earlier wrapper with the same pid that was killed
            if attempt:
                raise
            os.unlink(path)
            continue
        try:
            os.write(fd, head + bytes(COUNTERS_SIZE - len(head)))
        finally:
            os.close(fd)
        return path
    raise AssertionError("unreachable")


def read_counters(path: str) -> dict[str, int] | None:
    """The counts the build's processes added, or None when the file is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(COUNTERS_SIZE)
    except OSError:
        return None
    if len(data) < COUNTERS_SIZE:
        return None
    magic, version, _ = _COUNTERS_HEAD.unpack_from(data)
    if magic != COUNTERS_MAGIC or version != COUNTERS_VERSION:
        return None
    return dict(zip(COUNTER_NAMES, _COUNTERS_BODY.unpack_from(data, _COUNTERS_HEAD.size)))


def remove_quietly(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def vrift_env(base, lib: str, info: dict, counters: str | None, socket_timeout_ms: int | None) -> dict:
    """The wrapped build's environment: the caller's, plus the contract of docs/preload.md."""
    env = dict(base)
    env["VRIFT_PROJECT_ROOT"] = info["root"]
    env["VRIFT_VDIR"] = info["vdir"]
    env["VRIFT_SOCKET"] = info["socket"]
    env["VRIFT_STAGING_DIR"] = info["staging_dir"]
    if counters:
        env["VRIFT_COUNTERS"] = counters
    if socket_timeout_ms is not None and "VRIFT_SOCKET_TIMEOUT_MS" not in base:
        env["VRIFT_SOCKET_TIMEOUT_MS"] = str(socket_timeout_ms)
    env["LD_PRELOAD"] = with_preload(base.get("LD_PRELOAD", ""), lib)
    return env


ACTION_VARS = ("VRIFT_ACTION_ROLE", "VRIFT_ACTION_ID", "VRIFT_ACTION_STARTED", "VRIFT_ACTION_ROOT_PID",
               "VRIFT_ACTION_OUT", "VRIFT_ACTION_ERR")


def cache_env(env: dict, enabled: bool, names, explain: bool, tools=None) -> bool:
    """Turn the action cache on or off in the build's environment (docs/cache.md); True when on.
    Inside an action already being recorded (a `vrift wrap` run by a recipe) the wrapped tool
    stays a member of that action: its variables are left alone."""
    if env.get("VRIFT_ACTION_STARTED"):
        return False
    for var in ("VRIFT_CACHE", "VRIFT_CACHE_ENV", "VRIFT_CACHE_EXPLAIN", "VRIFT_CACHE_TOOLS", *ACTION_VARS):
        env.pop(var, None)
    if not enabled:
        return False
    env["VRIFT_CACHE"] = "1"
    env["VRIFT_ACTION_ROLE"] = "tool"
    # PATH is always sent: the daemon resolves the names an action looks up in it (not a key part)
    env["VRIFT_CACHE_ENV"] = ":".join(["PATH", *(n for n in names if n != "PATH")])
    if tools is not None:  # unset: the preload library's built-in list (the default of cache.tools)
        env["VRIFT_CACHE_TOOLS"] = ":".join(tools)
    if explain:
        env["VRIFT_CACHE_EXPLAIN"] = "1"
    return True


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


def with_preload(existing: str, lib: str) -> str:
    """`lib` first, then what was preloaded already (kept; not added twice in a nested wrap)."""
    others = [p for p in existing.replace(":", " ").split() if p != lib]
    return " ".join([lib, *others])


def run(argv: list[str], env: dict) -> int:
    """Run the tool and return its exit status (127/126 when it cannot be started, as a shell)."""
    saved = {}
    child: list[int] = []

    def forward(signum, _frame):
        if child:
            try:
                os.kill(child[0], signum)
            except ProcessLookupError:
                pass

    reset = list(RESTORED)
    for sig in IGNORED_WHILE_WAITING:
        saved[sig] = signal.getsignal(sig)
        if saved[sig] != signal.SIG_IGN:  # ignored by our parent: the tool inherits that
            reset.append(sig)
        signal.signal(sig, signal.SIG_IGN)
    for sig in FORWARDED:
        saved[sig] = signal.signal(sig, forward)
    try:
        try:
            pid = os.posix_spawnp(argv[0], argv, env, setsigdef=reset)
        except FileNotFoundError:
            print(f"vrift: {argv[0]}: command not found", file=sys.stderr, flush=True)
            return 127
        except PermissionError as e:
            print(f"vrift: {argv[0]}: {e.strerror}", file=sys.stderr, flush=True)
            return 126
        except OSError as e:
            print(f"vrift: {argv[0]}: cannot run: {e.strerror or e}", file=sys.stderr, flush=True)
            return 126
        child.append(pid)
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


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
