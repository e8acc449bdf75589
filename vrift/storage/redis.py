"""Redis and Redis Cluster as a remote (redis-py).

Key layout (docs/remote.md):  `vrift:cas:<blake3 hex>` -> a framed blob (codec.py),
`vrift:ac:<action key hex>` -> a framed entry document (tiers.py).  No TTL: the server's
`maxmemory` with `allkeys-lru` evicts what is not used.  In a Cluster the keys spread over the
hash slots (no hash tags: a blob and an entry need not live together)."""
from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

import threading

import redis
from redis.exceptions import RedisClusterException
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import VriftError
from .base import RemoteError, RemoteFull, RemoteRefused, RemoteTimeout
from .spec import RemoteSpec

PREFIX = "vrift:"


class RedisBackend:
    def __init__(self, spec: RemoteSpec):
        self.url = spec.shown
        common = {"socket_connect_timeout": spec.connect_timeout, "socket_timeout": spec.operation_timeout,
                  "retry": Retry(NoBackoff(), 0)}
        scheme = spec.scheme
        if scheme.endswith("+cluster"):
            self._cluster(spec, common, connect=False)  # the seeds are checked now
            self._make = lambda: self._cluster(spec, common)
        elif scheme == "redis+unix":
            parts = urlsplit(spec.url)
            db = parse_qs(parts.query).get("db", ["0"])[0]
            pw = f"&password={parts.password}" if parts.password else ""
            url = f"unix://{parts.path}?db={db}{pw}"
            self._make = lambda: redis.Redis.from_url(url, **common)
        else:
            self._make = lambda: redis.Redis.from_url(spec.url, **common)
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        """Made on first use: RedisCluster asks a seed for the slot map when it is made, so a
        cluster that is down when the daemon starts is a failed request (the circuit breaker's
        business), not a remote lost for the daemon's lifetime."""
        if self._client is None:
            with self._lock, _errors():
                if self._client is None:
                    self._client = self._make()
        return self._client

    @staticmethod
    def _cluster(spec: RemoteSpec, common: dict, connect: bool = True):
        from redis.cluster import ClusterNode, RedisCluster

        rest = spec.url.partition("://")[2]
        auth, at, hosts = rest.rpartition("@")
        user = password = None
        if at:
            user, _, password = auth.partition(":")
            user, password = unquote(user) or None, unquote(password) or None
        nodes = []
        for seed in hosts.strip("/").split(","):
            host, _, port = seed.strip().rpartition(":")
            if not host or not port.isdigit():
                raise VriftError(f"cache.remote: {spec.shown!r}: cluster seeds are host:port, got {seed!r}")
            nodes.append(ClusterNode(host, int(port)))
        if not connect:
            return None
        return RedisCluster(startup_nodes=nodes, username=user, password=password,
                            ssl=spec.scheme.startswith("rediss"), **common)

    @staticmethod
    def blob_name(digest: bytes, payload: bytes) -> str:
        return digest.hex()

    def has(self, namespace: str, names: list[str]) -> set[str]:
        if not names:
            return set()
        with _errors():
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.exists(f"{PREFIX}{namespace}:{name}")
            found = pipe.execute()
        return {n for n, f in zip(names, found) if f}

    def get(self, namespace: str, name: str) -> bytes | None:
        with _errors():
            return self.client.get(f"{PREFIX}{namespace}:{name}")

    def put(self, namespace: str, name: str, payload: bytes) -> None:
        with _errors():
            self.client.set(f"{PREFIX}{namespace}:{name}", payload)

    def close(self) -> None:
        if self._client is None:
            return
        try:
            self._client.close()
        except (redis.RedisError, RedisClusterException):
            pass


class _errors:
    """redis-py's exceptions as RemoteErrors (one place, so every call maps them alike)."""

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if e is None or not isinstance(e, (redis.RedisError, RedisClusterException, OSError)):
            return False
        text = str(e)
        if isinstance(e, redis.TimeoutError):
            raise RemoteTimeout(f"timed out: {text}") from None
        if isinstance(e, redis.AuthenticationError) or text.startswith(("WRONGPASS", "NOAUTH", "NOPERM")) \
                or "invalid username-password" in text or "Authentication required" in text:
            raise RemoteRefused(f"refused: {text}") from None
        if text.startswith("OOM") or "maxmemory" in text:
            raise RemoteFull(f"full: {text}") from None
        raise RemoteError(text or type(e).__name__) from None


Backend = RedisBackend
