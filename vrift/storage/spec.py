"""Remote storage specs: a URL and ccache-style attributes after `|`.

    redis://[[user]:password@]host[:port][/db]      one Redis server (rediss:// for TLS)
    redis+unix:///path/to/socket[?db=N]             Redis on a Unix socket
    redis+cluster://[[user]:password@]h1:p1,h2:p2   Redis Cluster: seed nodes (rediss+cluster:// for TLS)
    http(s)://[user:password@]host[:port][/prefix]  bazel-remote's REST layout (nginx WebDAV, bazel-remote)

Attributes, e.g. `redis://cache:6379|read-only|operation-timeout=500`:

    read-only               fetch from it, never upload
    connect-timeout=MS      default cache.remote_connect_timeout_ms
    operation-timeout=MS    default cache.remote_timeout_ms
    compress-min=BYTES      zstd for blobs at least this large (default 4096; 0: never)
    bearer-token=TOKEN      HTTP only: Authorization: Bearer TOKEN
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import VriftError

# URL scheme -> the module under vrift/storage/ whose `Backend` class serves it: a new backend is
# one module and one line here
SCHEMES = {"redis": "redis", "rediss": "redis", "redis+unix": "redis", "redis+cluster": "redis",
           "rediss+cluster": "redis", "http": "http", "https": "http"}
COMPRESS_MIN = 4096
_USERINFO = re.compile(r"^(?P<scheme>[a-z+]+)://(?P<user>[^:@/]*)(?::(?P<password>[^@/]*))?@")


@dataclass(frozen=True)
class RemoteSpec:
    url: str
    scheme: str
    read_only: bool = False
    connect_timeout: float = 0.2
    operation_timeout: float = 0.5
    compress_min: int = COMPRESS_MIN
    bearer_token: str | None = None

    @property
    def shown(self) -> str:
        return mask(self.url)


def mask(text: str) -> str:
    """The spec with its password and bearer token replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}://{m['user']}:***@" if m["password"] is not None
                         else m.group(0), text)
    return re.sub(r"(\|bearer-token=)[^|]*", r"\1***", text)


def parse(text: str, connect_ms: int = 200, operation_ms: int = 500) -> RemoteSpec:
    """One spec; a VriftError naming what is wrong (the password masked)."""
    url, *attrs = [part.strip() for part in text.strip().split("|")]
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise VriftError(f"cache.remote: {mask(url)!r}: expected a URL starting with "
                         f"{', '.join(s + '://' for s in SCHEMES)}")
    if not url.partition("://")[2].strip("/"):
        raise VriftError(f"cache.remote: {mask(url)!r}: no host or path")
    options = {"connect_timeout": connect_ms / 1000, "operation_timeout": operation_ms / 1000}
    for attr in attrs:
        name, eq, value = attr.partition("=")
        name = name.strip().lower()
        if name == "read-only" and not eq:
            options["read_only"] = True
        elif name in ("connect-timeout", "operation-timeout", "compress-min") and eq:
            try:
                number = int(value)
                if number < 0:
                    raise ValueError
            except ValueError:
                raise VriftError(f"cache.remote: {mask(url)!r}: {name}: expected a non-negative integer, "
                                 f"got {value!r}") from None
            if name == "compress-min":
                options["compress_min"] = number
            else:
                options[name.replace("-", "_")] = max(number, 1) / 1000
        elif name == "bearer-token" and eq and SCHEMES[scheme] == "http":
            options["bearer_token"] = value
        else:
            raise VriftError(f"cache.remote: {mask(url)!r}: unknown attribute {mask('|' + attr)[1:]!r} "
                             "(read-only, connect-timeout=MS, operation-timeout=MS, compress-min=BYTES, "
                             "bearer-token=TOKEN for http)")
    return RemoteSpec(url=url, scheme=scheme, **options)


def open_backend(spec: RemoteSpec):
    """The backend object for a spec (its module, and the client library, imported only now)."""
    import importlib

    return importlib.import_module(f"{__package__}.{SCHEMES[spec.scheme]}").Backend(spec)
