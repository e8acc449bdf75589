"""The tiers a daemon reads through and writes behind: local first, then each remote in order.

Read: `RemoteTiers.candidates(key)` asks each available remote for the key's entry; the daemon
checks those fingerprints against the files like local ones and, for the first that matches,
`fetch_blobs()` brings its blobs into the local CAS, each verified against its BLAKE3 digest (a
bad or missing one is a miss, counted).  Write: `enqueue()` after an entry was recorded locally;
one background thread uploads the blobs the remote lacks, then the entry (so a reader never sees
an entry before its blobs).  Nothing here blocks a build beyond a remote's timeouts, and a remote
that failed is skipped for `skip_s` seconds (a circuit breaker).

The remote entry, framed by codec.py under `ac/<key hex>`:
    {"v": 1, "fingerprints": [{"id": hex, "fingerprint": {...}, "blobs": {blake3 hex: remote name}}]}
newest first, at most REMOTE_FINGERPRINTS.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time

from ..cas.store import CASError, hash_bytes
from .base import RemoteError
from .codec import Corrupt, pack, unpack
from .local import LocalBlobs
from .spec import RemoteSpec, open_backend, parse

log = logging.getLogger("vrift.remote")

REMOTE_FINGERPRINTS = 8
QUEUE_LIMIT = 10_000
SKIP_S = 30.0
COUNTERS = ("hits", "misses", "errors", "timeouts", "refused", "full", "corrupt", "skipped",
            "bytes_down", "bytes_up", "uploaded", "upload_failed", "upload_dropped", "over_budget",
            "entry_s", "fetch_s", "store_s")  # the last three: seconds spent reading entries, fetching and storing blobs


class Named:
    """The local CAS as match() sees it for a remote fingerprint: a blob is there when the CAS
    has it or the remote entry names it (it is fetched, and verified, only on a match)."""

    def __init__(self, cas, names: dict):
        self.cas, self.names = cas, names

    def has(self, digest) -> bool:
        hexd = digest if isinstance(digest, str) else digest.hex()
        return hexd in self.names or self.cas.has(digest)


class Remote:
    """One remote: its backend, circuit breaker and counters."""

    def __init__(self, spec: RemoteSpec, skip_s: float = SKIP_S):
        self.spec = spec
        self.name = spec.shown
        self.read_only = spec.read_only
        self.skip_s = skip_s
        self.backend = open_backend(spec)
        self.counters = dict.fromkeys(COUNTERS, 0)
        self._unflushed: dict = {}
        self._lock = threading.Lock()
        self._skip_until = 0.0
        self.last_error: str | None = None

    def count(self, name: str, n: float = 1) -> None:
        with self._lock:
            self.counters[name] += n
            self._unflushed[name] = self._unflushed.get(name, 0) + n

    def take_delta(self) -> dict:
        with self._lock:
            delta, self._unflushed = self._unflushed, {}
        return delta

    def available(self) -> bool:
        if time.monotonic() < self._skip_until:
            self.count("skipped")
            return False
        return True

    def failed(self, e: RemoteError, doing: str) -> None:
        """Count the failure and skip the remote for a while; logged once per opening."""
        kind = {"timeout": "timeouts", "refused": "refused", "full": "full", "corrupt": "corrupt"}.get(e.kind, "errors")
        self.count(kind)
        if e.kind == "corrupt":
            return  # a bad blob says nothing about the server's health
        with self._lock:
            was_open = time.monotonic() >= self._skip_until
            self._skip_until = time.monotonic() + self.skip_s
            self.last_error = f"{doing}: {e}"
        if was_open:
            log.warning("remote cache %s: %s: %s (skipped for %.0f s)", self.name, doing, e, self.skip_s)

    # -- entries --------------------------------------------------------------------------------
    def entry(self, key: bytes) -> list[dict]:
        payload = self.backend.get("ac", key.hex())
        if payload is None:
            return []
        self.count("bytes_down", len(payload))
        try:
            doc = json.loads(unpack(payload))
            fps = doc["fingerprints"]
            if doc.get("v") != 1 or not isinstance(fps, list):
                raise ValueError("unknown entry version")
            return [f for f in fps if isinstance(f, dict) and isinstance(f.get("fingerprint"), dict)
                    and isinstance(f.get("id"), str) and isinstance(f.get("blobs"), dict)]
        except (ValueError, KeyError, TypeError) as e:
            raise Corrupt(f"entry {key.hex()[:16]}: {e}") from None

    def stats(self) -> dict:
        with self._lock:
            out = dict(self.counters)
            out["skipping_for_s"] = round(max(0.0, self._skip_until - time.monotonic()), 1)
        out.update(url=self.name, read_only=self.read_only, last_error=self.last_error)
        return out


class RemoteTiers:
    def __init__(self, remotes: list[Remote], cas, flush_s: float = 10.0):
        self.remotes = remotes
        self.cas = cas
        self.blobs = LocalBlobs(cas)
        self.flush_s = flush_s
        self._queue: queue.Queue = queue.Queue()
        self._backlog = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._upload_loop, name="remote-upload", daemon=True)
        self._stopped = False
        if any(not r.read_only for r in remotes):
            self._thread.start()

    # -- read through ---------------------------------------------------------------------------
    def candidates(self, key: bytes, seen: set[bytes], deadline: float = float("inf")):
        """(remote, fid, fingerprint JSON, blob names) of the key's remote fingerprints, in tier
        order, leaving out ids in `seen` (already checked locally); no remote is asked after
        `deadline` (time.monotonic())."""
        for remote in self.remotes:
            if time.monotonic() >= deadline:
                remote.count("over_budget")
                return
            if not remote.available():
                continue
            t0 = time.perf_counter()
            try:
                found = remote.entry(key)
            except RemoteError as e:
                remote.failed(e, "reading an entry")
                continue
            finally:
                remote.count("entry_s", time.perf_counter() - t0)
            if not found:
                remote.count("misses")
            for f in found:
                try:
                    fid = bytes.fromhex(f["id"])
                except ValueError:
                    continue
                if fid not in seen:
                    seen.add(fid)
                    yield remote, fid, f["fingerprint"], f["blobs"]

    def fetch_blobs(self, remote: Remote, digests: set[bytes], names: dict,
                    deadline: float = float("inf")) -> str | None:
        """Bring the blobs the local CAS lacks from `remote`, each verified; None when all are
        here, else why not (the caller counts a miss).  No request starts after `deadline`."""
        for digest in sorted(digests - self.blobs.has_many(digests)):
            if time.monotonic() >= deadline:
                remote.count("over_budget")
                return f"{remote.name}: out of time for this lookup"
            name = names.get(digest.hex())
            if not isinstance(name, str) or not name:
                remote.count("corrupt")
                return f"the remote entry names no blob for {digest.hex()[:16]}"
            t0 = time.perf_counter()
            try:
                payload = remote.backend.get("cas", name)
                if payload is None:
                    remote.count("misses")
                    return f"blob {digest.hex()[:16]} is missing on {remote.name}"
                remote.count("bytes_down", len(payload))
                data = unpack(payload)
                if hash_bytes(data) != digest:
                    raise Corrupt(f"blob {digest.hex()[:16]}: content does not match its digest")
            except RemoteError as e:
                remote.failed(e, "fetching a blob")
                return f"{remote.name}: {e}"
            finally:
                t1 = time.perf_counter()
                remote.count("fetch_s", t1 - t0)
            self.cas.store_bytes(data)  # durable like any blob: a later local hit materialises it
            remote.count("store_s", time.perf_counter() - t1)
        return None

    # -- write behind ---------------------------------------------------------------------------
    def enqueue(self, key: bytes, fid: bytes, fingerprint: dict, digests: set[bytes]) -> None:
        with self._lock:
            if self._stopped or not self._thread.is_alive():
                return
            if self._backlog >= QUEUE_LIMIT:
                for r in self.remotes:
                    r.count("upload_dropped")
                return
            self._backlog += 1
        self._queue.put((key, fid, fingerprint, digests))

    def backlog(self) -> int:
        with self._lock:
            return self._backlog

    def _upload_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                for remote in self.remotes:
                    if not remote.read_only and remote.available():
                        self._upload(remote, *item)
            except Exception:  # noqa: BLE001 - an upload bug must not stop the queue
                log.exception("remote upload failed")
            finally:
                with self._lock:
                    self._backlog -= 1
                    if not self._backlog:
                        self._idle.notify_all()

    def _upload(self, remote: Remote, key: bytes, fid: bytes, fingerprint: dict, digests: set[bytes]) -> None:
        try:
            payloads = {}
            for d in digests:
                try:
                    data = self.cas.read_bytes(d)
                except CASError:
                    remote.count("upload_failed")
                    return  # gone locally (gc): an entry without its blob is useless remotely
                payload = pack(data, remote.spec.compress_min)
                payloads[remote.backend.blob_name(d, payload)] = (d, payload)
            present = remote.backend.has("cas", list(payloads))
            names = {}
            for name, (d, payload) in payloads.items():
                names[d.hex()] = name
                if name not in present:
                    remote.backend.put("cas", name, payload)
                    remote.count("bytes_up", len(payload))
            try:
                old = remote.entry(key)
            except Corrupt:
                old = []  # overwritten below
            fps = [{"id": fid.hex(), "fingerprint": fingerprint, "blobs": names}]
            fps += [f for f in old if f.get("id") != fid.hex()]
            doc = json.dumps({"v": 1, "fingerprints": fps[:REMOTE_FINGERPRINTS]}, separators=(",", ":")).encode()
            payload = pack(doc, remote.spec.compress_min)
            remote.backend.put("ac", key.hex(), payload)
            remote.count("bytes_up", len(payload))
            remote.count("uploaded")
        except RemoteError as e:
            remote.count("upload_failed")
            remote.failed(e, "uploading")

    def flush(self, timeout: float | None = None) -> dict:
        """Wait (at most `timeout`, default flush_s) for the upload queue to drain."""
        deadline = time.monotonic() + (self.flush_s if timeout is None else timeout)
        start = time.monotonic()
        done_before = self._done()
        with self._lock:
            while self._backlog and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._idle.wait(left)
            left = self._backlog
        uploaded, failed = (a - b for a, b in zip(self._done(), done_before))
        return {"uploaded": uploaded, "failed": failed, "pending": left, "waited_s": round(time.monotonic() - start, 3)}

    def _done(self) -> tuple[int, int]:
        return (sum(r.counters["uploaded"] for r in self.remotes),
                sum(r.counters["upload_failed"] for r in self.remotes))

    def stop(self, timeout: float | None = None) -> dict:
        """Flush in bounded time, then stop the uploader; what was left is dropped and counted."""
        report = self.flush(timeout)
        with self._lock:
            self._stopped = True
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(1.0)
        if report["pending"]:
            for r in self.remotes:
                if not r.read_only:
                    r.count("upload_dropped", report["pending"])
            log.warning("remote cache: %d uploads not done within %.0f s, dropped", report["pending"], self.flush_s)
        if not self._thread.is_alive():  # else it is stuck in a request: let it end with the process
            for r in self.remotes:
                r.backend.close()
        return report

    def stats(self) -> list[dict]:
        backlog = self.backlog()
        return [dict(r.stats(), backlog=0 if r.read_only else backlog) for r in self.remotes]

    def take_deltas(self) -> dict:
        return {r.name: d for r in self.remotes if (d := r.take_delta())}


def build(cfg, cas) -> RemoteTiers | None:
    """The remote tiers the configuration names (None without any); the factory the daemon uses.
    A spec that does not parse was refused when the configuration was read."""
    urls = list(cfg["cache.remote"]) if "cache.remote" in cfg else []
    if not urls:
        return None
    remotes = []
    for text in urls:
        spec = parse(text, cfg["cache.remote_connect_timeout_ms"], cfg["cache.remote_timeout_ms"])
        try:
            remotes.append(Remote(spec, skip_s=float(cfg["cache.remote_skip_s"])))
        except Exception as e:  # noqa: BLE001 - a remote that cannot even be set up is left out
            log.warning("remote cache %s: unusable: %s", spec.shown, e)
    return RemoteTiers(remotes, cas, flush_s=float(cfg["cache.remote_flush_s"])) if remotes else None
