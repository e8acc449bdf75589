"""An HTTP remote in bazel-remote's REST layout: `<prefix>/cas/<name>` and `<prefix>/ac/<name>`,
GET (200 or 404), PUT, HEAD.  nginx's WebDAV module (dav_methods PUT; create_full_put_path on)
and bazel-remote serve it.

Blobs are named by SHA-256 of the payload we PUT (framed, maybe compressed: codec.py), which is
what bazel-remote checks a CAS upload against; the remote entry maps each BLAKE3 digest to that
name.  Entries are not protobuf ActionResults, so bazel-remote needs
`--disable_http_ac_validation` (docs/remote.md).  Connections are pooled (urllib3) and never
retried: a failure goes to the circuit breaker, not into a loop."""
from __future__ import annotations

import base64
import hashlib
from urllib.parse import unquote, urlsplit

import urllib3

from .base import RemoteError, RemoteFull, RemoteRefused, RemoteTimeout
from .spec import RemoteSpec

POOL_SIZE = 4


class HttpBackend:
    def __init__(self, spec: RemoteSpec):
        self.url = spec.shown
        parts = urlsplit(spec.url)
        self.prefix = parts.path.rstrip("/")
        self.headers = {}
        if parts.username is not None or parts.password is not None:
            pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if spec.bearer_token:
            self.headers["Authorization"] = "Bearer " + spec.bearer_token
        host = parts.hostname or "localhost"
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        self.pool = urllib3.connection_from_url(
            f"{parts.scheme}://{netloc}", maxsize=POOL_SIZE, block=False, retries=False,
            timeout=urllib3.Timeout(connect=spec.connect_timeout, read=spec.operation_timeout))

    @staticmethod
    def blob_name(digest: bytes, payload: bytes) -> str:
        return hashlib.sha256(payload).hexdigest()

    def _request(self, method: str, namespace: str, name: str, body: bytes | None = None):
        try:
            r = self.pool.urlopen(method, f"{self.prefix}/{namespace}/{name}", body=body, headers=self.headers,
                                  redirect=False, preload_content=True)
        except urllib3.exceptions.TimeoutError as e:
            raise RemoteTimeout(f"timed out: {e}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise RemoteError(str(e) or type(e).__name__) from None
        if r.status in (401, 403):
            raise RemoteRefused(f"{method} {namespace}/{name}: HTTP {r.status}")
        if r.status in (413, 507):
            raise RemoteFull(f"{method} {namespace}/{name}: HTTP {r.status}")
        return r

    def has(self, namespace: str, names: list[str]) -> set[str]:
        found = set()
        for name in names:
            r = self._request("HEAD", namespace, name)
            if r.status == 200:
                found.add(name)
            elif r.status != 404:
                raise RemoteError(f"HEAD {namespace}/{name}: HTTP {r.status}")
        return found

    def get(self, namespace: str, name: str) -> bytes | None:
        r = self._request("GET", namespace, name)
        if r.status == 404:
            return None
        if r.status != 200:
            raise RemoteError(f"GET {namespace}/{name}: HTTP {r.status}")
        return r.data

    def put(self, namespace: str, name: str, payload: bytes) -> None:
        r = self._request("PUT", namespace, name, body=payload)
        if r.status not in (200, 201, 204):
            raise RemoteError(f"PUT {namespace}/{name}: HTTP {r.status}")

    def close(self) -> None:
        self.pool.close()


Backend = HttpBackend
