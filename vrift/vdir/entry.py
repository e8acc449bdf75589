"""One indexed path: what the VDir, LMDB and the WAL all store about it."""
from __future__ import annotations

import os
import stat as statmod
from dataclasses import dataclass, replace

from . import layout

ZERO_DIGEST = bytes(32)
_pack_record = layout.RECORD.pack


@dataclass(frozen=True, slots=True)
class Entry:
    path: bytes          # relative to the project root; b"" is the root itself
    mode: int
    dev: int
    ino: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    mtime_ns: int
    ctime_ns: int
    digest: bytes = ZERO_DIGEST  # BLAKE3 of the content; zero for directories and symlinks
    flags: int = 0

    @classmethod
    def from_stat(cls, path: bytes, st: os.stat_result, digest: bytes = ZERO_DIGEST, flags: int = 0) -> "Entry":
        if statmod.S_ISLNK(st.st_mode):
            flags |= layout.F_SYMLINK
        elif statmod.S_ISDIR(st.st_mode):
            flags |= layout.F_DIR
        return cls(path, st.st_mode, st.st_dev, st.st_ino, st.st_nlink, st.st_uid, st.st_gid,
                   st.st_size, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns, digest, flags)

    @classmethod
    def deleted(cls, path: bytes) -> "Entry":
        return cls(path, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, ZERO_DIGEST, layout.F_DELETED)

    @property
    def is_deleted(self) -> bool:
        return bool(self.flags & layout.F_DELETED)

    def with_flags(self, flags: int) -> "Entry":
        return replace(self, flags=flags)

    def same_file(self, st: os.stat_result) -> bool:
        """True when `st` shows the content this entry describes cannot have changed."""
        return (self.size == st.st_size and self.mtime_ns == st.st_mtime_ns
                and self.ctime_ns == st.st_ctime_ns and self.ino == st.st_ino
                and self.dev == st.st_dev and self.mode == st.st_mode)

    # -- the fixed-size record of LMDB and the WAL (layout.RECORD) --
    @staticmethod
    def stat_record(st: os.stat_result, flags: int, digest: bytes) -> bytes:
        """Entry.from_stat(path, st, digest, flags).pack_record() without the Entry: what a
        re-ingest compares against the indexed record of an unchanged path.  `flags` must
        already hold DIR or SYMLINK as from_stat would set them."""
        ms, mn = divmod(st.st_mtime_ns, 1_000_000_000)
        cs, cn = divmod(st.st_ctime_ns, 1_000_000_000)
        return _pack_record(flags, st.st_mode, st.st_dev, st.st_ino, st.st_nlink, 0, st.st_uid, st.st_gid,
                            st.st_size, st.st_blocks, ms, cs, mn, cn, digest)

    def pack_record(self, flags: int | None = None) -> bytes:
        """The record; `flags` replaces the entry's own (no new Entry for it)."""
        ms, mn = divmod(self.mtime_ns, 1_000_000_000)
        cs, cn = divmod(self.ctime_ns, 1_000_000_000)
        return layout.RECORD.pack(self.flags if flags is None else flags, self.mode, self.dev, self.ino, self.nlink, 0, self.uid,
                                  self.gid, self.size, self.blocks, ms, cs, mn, cn, self.digest)

    @classmethod
    def unpack_record(cls, path: bytes, data: bytes | memoryview) -> "Entry":
        (flags, mode, dev, ino, nlink, _checksum, uid, gid, size, blocks, ms, cs, mn, cn,
         digest) = layout.RECORD.unpack(data)
        return cls(bytes(path), mode, dev, ino, nlink, uid, gid, size, blocks,
                   ms * 1_000_000_000 + mn, cs * 1_000_000_000 + cn, bytes(digest), flags)

    # -- the 128-byte shared-memory entry (layout.ENTRY) --
    def pack_entry(self, path_hash: int, path_off: int) -> bytes:
        return layout.ENTRY.pack(path_hash, path_off, len(self.path), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                 ZERO_DIGEST)[:layout.RECORD_OFFSET] + self.pack_record()

    def to_json(self, root: str | None = None) -> dict:
        return {
            "path": os.fsdecode(self.path),
            "digest": self.digest.hex() if self.digest != ZERO_DIGEST else None,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "ctime_ns": self.ctime_ns,
            "mode": self.mode,
            "ino": self.ino,
            "dev": self.dev,
            "nlink": self.nlink,
            "flags": flag_names(self.flags),
        }


def flag_names(flags: int) -> list[str]:
    names = [("DIRTY", layout.F_DIRTY), ("DELETED", layout.F_DELETED), ("SYMLINK", layout.F_SYMLINK),
             ("DIR", layout.F_DIR), ("COMPLETE_DIR", layout.F_COMPLETE_DIR)]
    return [n for n, bit in names if flags & bit]
