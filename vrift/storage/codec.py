"""How blobs and entries are framed on a remote: one header byte, then the bytes.

    0x00 <data>          stored as is
    0x01 <zstd frame>    compressed (blobs of at least `compress_min` bytes that shrink)

The framing is ours, not the server's: a server only sees opaque values.  Every unpacked blob is
checked against its BLAKE3 digest by the caller (tiers.py)."""
from __future__ import annotations

from .base import RemoteError

RAW, ZSTD = b"\x00", b"\x01"
MAX_UNPACKED = 1 << 31


class Corrupt(RemoteError):
    kind = "corrupt"


def pack(data: bytes, compress_min: int) -> bytes:
    if compress_min and len(data) >= compress_min:
        import zstandard  # only daemons with a remote pay for the import

        packed = zstandard.ZstdCompressor(level=3).compress(data)
        if len(packed) + 1 < len(data):
            return ZSTD + packed
    return RAW + data


def unpack(payload: bytes) -> bytes:
    head, body = payload[:1], payload[1:]
    if head == RAW:
        return body
    if head == ZSTD:
        import zstandard

        try:
            return zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_UNPACKED)
        except zstandard.ZstdError as e:
            raise Corrupt(f"bad zstd frame: {e}") from None
    raise Corrupt(f"unknown framing byte {head!r}")
