"""The hot tier: a project's index in a shared-memory file (layout: vrift/native/vrift_vdir.h).

One process writes (VDirWriter: the project daemon, or `vrift ingest` when none runs); any
number read (the preload library in C, VDirReader in Python).  Every change is published under
the sequence lock on header.generation, so a reader never sees half of it; the DIRTY bit is the
one word clients change, with atomic OR.  When a batch does not fit, the writer builds a larger
file, renames it over the name and marks the old one RETIRED: readers remap by name.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from . import layout, native
from .entry import Entry
from .shm_files import say_once
from .shm_format import (ENT, HDR, PATH_BYTES_GUESS, U32, U64, Geometry, VDirCorrupt, VDirError, VDirForeign,
                         check_path, entry_path, header_problem, header_values, pack_entry, project_id_bytes,
                         read_header, root_bytes, root_of, show_path, temp_name, write_header)
from .shm_reader import VDirReader, _find, _map_file, _Mapped

__all__ = ["VDirCorrupt", "VDirError", "VDirReader", "VDirWriter", "path_hash"]

_FLAGS_AT = ENT["flags"][0]


def path_hash(path: bytes) -> int:
    """The hash the writer files a path under (module-level so tests can force collisions)."""
    return native.path_hash(path)


class VDirWriter(_Mapped):
    """The one writer of a VDir file.  Not for concurrent use by several processes; thread-safe."""

    def __init__(self, path: Path, mapping: native.Mapping, ident: tuple[int, int]):
        super().__init__(path)
        self._map, self._ident = mapping, ident
        self._slot = ctypes.c_uint32()
        self._geometry = _geometry_of(read_header(mapping.view))

    def _header(self) -> dict:
        """The header, checked: what this writer laid out, whatever another process wrote over
        it since (a scribbled header made the native calls read outside the mapping)."""
        m = self._m()
        h = read_header(m.view)
        if _geometry_of(h) != self._geometry or h["entry_used"] > h["entry_capacity"] \
                or h["strings_used"] > h["strings_capacity"]:
            problem = header_problem(m.view, m.size) or "its geometry differs from what this writer laid out"
            raise VDirCorrupt(f"VDir {self.path}: header overwritten under its writer: {problem}")
        return h

    def heartbeat(self) -> None:
        """Say this writer is alive (readers stop trusting a table whose beat is stale)."""
        with self._lock:
            if self._map is not None:
                native.lib().vrift_heartbeat(self._map.base)

    def mark_dead(self) -> None:
        """This writer stops: readers must not trust the table any more (they fall back)."""
        with self._lock:
            if self._map is not None:
                native.lib().vrift_header_flags_or(self._map.base, layout.H_DEAD)

    def retire(self) -> None:
        """Mark the mapped file replaced: readers that still map it go by name again."""
        with self._lock:
            if self._map is not None:
                native.lib().vrift_retire(self._map.base)

    def damaged_view_of(self, reader: VDirReader) -> list[int]:
        """reader.damaged(), scanned through this writer's own mapping when the reader maps the
        same file (the same bytes): a scrub through a second mapping made the whole file
        resident twice in the writer's process."""
        with self._lock:
            reader.refresh()
            if self._map is not None and reader.ident == self._ident:
                return self._damaged()
        return reader.damaged()

    # ---------------------------------------------------------------- creation and reuse
    @classmethod
    def create(cls, path: Path, root: str | Path, project_id: str, capacity_hint: int = 0,
               index_generation: int = 0, blksize: int | None = None) -> "VDirWriter":
        """A fresh, empty VDir at `path` (an old file there is replaced and, if a VDir, retired)."""
        path = Path(path)
        root_b, pid = root_bytes(root), project_id_bytes(project_id)
        if blksize is None:
            try:
                blksize = os.stat(root_b).st_blksize
            except OSError:
                blksize = 4096
        geo = Geometry.for_counts(capacity_hint, capacity_hint * PATH_BYTES_GUESS)
        old = _open_old(path)
        try:
            generation = (native.lib().vrift_generation(old.base) + 2) & ~1 if old else 0
            values = header_values(geo, root_b, pid, generation=generation, entry_count=0, entry_used=0,
                                   strings_used=0, index_generation=index_generation, blksize=blksize)
            mapping, ident = cls._write_file(path, geo, values, root_b, fill=None)
        except BaseException:
            if old is not None:
                old.close()
            raise
        if old is not None:  # after the rename: a reader that remaps finds the new file
            native.lib().vrift_retire(old.base)
            old.close()
        return cls(path, mapping, ident)

    @classmethod
    def open_existing(cls, path: Path, root: str | Path, project_id: str,
                      unconfirmed: bool = False) -> "VDirWriter":
        """Take over a valid VDir left by an earlier writer of the same project (daemon restart).
        `unconfirmed`: the tree may have changed while nobody watched it, so every entry is
        marked DIRTY (readers ask the kernel) *before* the file is declared alive again; the
        new writer clears the mark path by path as it confirms entries against the disk."""
        path = Path(path)
        root_b, pid = root_bytes(root), project_id_bytes(project_id)
        mapping, st = _map_file(path, writable=True)
        h = read_header(mapping.view)
        problem = None
        if root_of(mapping.view, h) != os.fsdecode(root_b):
            problem = f"root is {root_of(mapping.view, h)!r}, expected {os.fsdecode(root_b)!r}"
        elif h["project_id"] != pid:
            problem = f"project id {h['project_id'].hex()} differs from {pid.hex()}"
        elif h["generation"] & 1:
            problem = f"a publish was interrupted (generation {h['generation']} is odd)"
        elif h["header_flags"] & layout.H_RETIRED:
            problem = "the file is marked retired"
        if problem:
            mapping.close()
            raise VDirCorrupt(f"VDir {path}: {problem}")
        if unconfirmed and native.lib().vrift_flags_or_all(mapping.base, mapping.size, layout.F_DIRTY) == 0xFFFFFFFF:
            mapping.close()
            raise VDirCorrupt(f"VDir {path}: its geometry does not check")
        # a new writer takes over: no beat promised until it gives one, and alive again
        U64.pack_into(mapping.view, HDR["heartbeat_ms"][0], 0)
        native.lib().vrift_header_flags_clear(mapping.base, layout.H_DEAD)
        return cls(path, mapping, (st.st_dev, st.st_ino))

    @staticmethod
    def _write_file(path: Path, geo: Geometry, values: dict, root_b: bytes,
                    fill) -> tuple[native.Mapping, tuple[int, int]]:
        """Write a new file under a temporary name, `fill` it, rename it over `path`.
        On any failure nothing is left behind and `path` is untouched."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_stale_temps(path)
        tmp = temp_name(path)
        mapping = None
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                # Reserve every page now: on a full tmpfs a store into a page that cannot be
                # allocated is a SIGBUS, in the writer and in every reader; this is ENOSPC.
                try:
                    os.posix_fallocate(fd, 0, geo.file_size)
                except OSError as exc:
                    raise VDirError(f"VDir {path}: cannot reserve {geo.file_size:,} bytes in {path.parent} "
                                    f"({exc.strerror}): free shared memory or set VRIFT_SHM_DIR") from None
                mapping = native.Mapping(fd, geo.file_size, writable=True)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            write_header(mapping.view, values, root_b)
            if fill is not None:
                fill(mapping)
            os.replace(tmp, path)
        except BaseException:
            if mapping is not None:
                mapping.close()
            tmp.unlink(missing_ok=True)
            raise
        return mapping, (st.st_dev, st.st_ino)

    def close(self, unlink: bool = False) -> None:
        """Unmap; with `unlink`, retire the file (mapped readers let go) and remove its name."""
        with self._lock:
            if unlink and self._map is not None:
                native.lib().vrift_retire(self._map.base)
                try:
                    st = os.stat(self.path)
                    if (st.st_dev, st.st_ino) == self._ident:
                        self.path.unlink()
                except FileNotFoundError:
                    pass
            self._close_map()

    # ---------------------------------------------------------------- reads
    def _locate(self, path: bytes, h: int) -> int:
        m = self._m()
        index = native.lib().vrift_locate(m.base, m.size, path, len(path), h, ctypes.byref(self._slot))
        if index < -1:
            raise VDirCorrupt(f"VDir {self.path}: header overwritten under its writer")
        return index

    def lookup(self, path: bytes) -> Entry | None:
        with self._lock:
            return _find(self._m(), path, self.path)

    def entries(self) -> Iterator[Entry]:
        """Every record in dense order, tombstones included (the writer's own view: no lock)."""
        with self._lock:
            return iter(list(self._entries_of(self._m().view, self._header())))

    @property
    def resident_bytes(self) -> int:
        """Memory the file really uses (tmpfs allocates pages on first write)."""
        return os.stat(self.path).st_blocks * 512

    # ---------------------------------------------------------------- flags
    def set_flags(self, path: bytes, bits: int) -> bool:
        return self._change_flags(path, bits, native.lib().vrift_flags_or)

    def clear_flags(self, path: bytes, bits: int) -> bool:
        return self._change_flags(path, bits, native.lib().vrift_flags_clear)

    def clear_dirty_many(self, paths: Iterable[bytes]) -> int:
        """clear_flags(path, F_DIRTY) for many paths with one header check; returns how many
        had an entry (a restarted daemon confirms 10^5 entries: per-call checks cost 60%)."""
        lib, n = native.lib(), 0
        with self._lock:
            self._header()
            m = self._m()
            for path in paths:
                if len(path) > layout.REL_MAX or b"\0" in path:
                    continue
                index = self._locate(path, path_hash(path))
                if index >= 0:
                    lib.vrift_flags_clear(m.base, m.size, index, layout.F_DIRTY)
                    n += 1
        return n

    def native_call(self, fn):
        """fn(base, size) of the checked mapping under this writer's lock: a native walk that
        reads the published entries and clears DIRTY (vrift/native/walk.c)."""
        with self._lock:
            self._header()
            m = self._m()
            return fn(m.base, m.size)

    def _change_flags(self, path: bytes, bits: int, op) -> bool:
        with self._lock:
            if len(path) > layout.REL_MAX or b"\0" in path:
                return False
            self._header()
            index = self._locate(path, path_hash(path))
            if index < 0:
                return False
            m = self._m()
            if bits & ~layout.F_DIRTY:  # covered by the checksum: changed and resealed under the lock
                native.lib().vrift_seq_begin(m.base)
                try:
                    op(m.base, m.size, index, bits)
                    native.lib().vrift_seal(m.base, m.size, index)
                finally:
                    native.lib().vrift_seq_end(m.base)
            else:
                op(m.base, m.size, index, bits)
            return True

    # ---------------------------------------------------------------- publishing
    def put(self, entry: Entry, index_generation: int | None = None, keep_flags: int = 0) -> None:
        self.put_many((entry,), index_generation, keep_flags)

    def put_many(self, entries: Iterable[Entry], index_generation: int | None = None, keep_flags: int = 0) -> None:
        """Insert or update `entries` in one publish.

        A DELETED entry is a tombstone (kept so probe chains stay intact; lookups see DELETED).
        An existing path is rewritten in place.  Its flags become the entry's flags plus the
        bits of `keep_flags` set in the table at that moment (pass F_DIRTY to keep a client's
        DIRTY).  When the batch does not fit, the file is rebuilt larger (see _grow)."""
        batch = list(entries)
        for e in batch:
            check_path(e.path)
            if len(e.digest) != 32:
                raise VDirError(f"VDir entry {show_path(e.path)}: digest is {len(e.digest)} bytes, expected 32")
        with self._lock:
            hashes = [path_hash(e.path) for e in batch]
            h = self._header()
            plan = self._plan(batch, hashes, h)
            if plan is None:
                self._grow(batch, hashes, index_generation, keep_flags)
                return
            updates, inserts, used, sused = plan
            m = self._m()
            lib, view, base = native.lib(), m.view, m.base
            eoff, soff = h["entries_offset"], h["strings_offset"]
            # New records and strings go past entry_used/strings_used, where no reader looks
            # until the publish links them: only the linking happens under the lock.
            for path, (index, record, path_off, _) in inserts.items():
                view[soff + path_off:soff + path_off + len(path)] = path
                view[eoff + index * layout.ENTRY_SIZE:eoff + (index + 1) * layout.ENTRY_SIZE] = record
            size = m.size
            lib.vrift_seal_range(base, size, h["entry_used"], used - h["entry_used"])  # new records are contiguous
            count = h["entry_count"]
            lib.vrift_seq_begin(base)
            try:
                for index, (tail, flags, deleted) in updates.items():
                    at = eoff + index * layout.ENTRY_SIZE
                    view[at + _FLAGS_AT + 4:at + layout.ENTRY_SIZE] = tail
                    before = lib.vrift_flags_replace(base, size, index, flags, keep_flags)
                    lib.vrift_seal(base, size, index)
                    count += bool(before & layout.F_DELETED) - deleted
                for index, _, _, deleted in inserts.values():
                    if lib.vrift_place(base, size, index) < 0:  # cannot happen: the plan checked the load
                        raise VDirCorrupt(f"VDir {self.path}: slot table full")
                    count += not deleted
                # counters last: a client marking a subtree DIRTY scans the records below entry_used
                U32.pack_into(view, HDR["entry_count"][0], count)
                U64.pack_into(view, HDR["strings_used"][0], sused)
                U32.pack_into(view, HDR["entry_used"][0], used)
                if index_generation is not None:
                    U64.pack_into(view, HDR["index_generation"][0], index_generation)
            finally:
                lib.vrift_seq_end(base)

    def _plan(self, batch: list[Entry], hashes: list[int], h: dict):
        """Where each entry of a batch goes and its bytes, computed before publishing; None when
        the batch does not fit.  A path given twice keeps its last entry, as sequential puts would."""
        view = self._m().view
        eoff = h["entries_offset"]
        updates: dict[int, tuple[bytes, int, bool]] = {}  # index -> (record after flags, flags, deleted)
        inserts: dict[bytes, tuple[int, bytes, int, bool]] = {}  # path -> (index, record, path_off, deleted)
        used, sused = h["entry_used"], h["strings_used"]
        for e, hsh in zip(batch, hashes):
            deleted = bool(e.flags & layout.F_DELETED)
            if e.path in inserts:
                index, _, path_off, _ = inserts[e.path]
                inserts[e.path] = (index, pack_entry(e, hsh, path_off), path_off, deleted)
                continue
            index = self._locate(e.path, hsh)
            if index >= 0:
                path_off = U32.unpack_from(view, eoff + index * layout.ENTRY_SIZE + ENT["path_off"][0])[0]
                updates[index] = (pack_entry(e, hsh, path_off)[_FLAGS_AT + 4:], e.flags, deleted)
            else:
                inserts[e.path] = (used, pack_entry(e, hsh, sused), sused, deleted)
                used += 1
                sused += len(e.path)
        geo = Geometry(h["entry_capacity"], h["table_capacity"], h["strings_capacity"])
        return (updates, inserts, used, sused) if geo.fits(used, sused) else None

    def _grow(self, batch: list[Entry], hashes: list[int], index_generation: int | None, keep_flags: int) -> None:
        """Rebuild into a bigger file: live records and DIRTY tombstones of the old file, then
        the batch; rename it over the name, retire the old file, carry DIRTY bits set since."""
        old = self._m()
        view, lib = old.view, native.lib()
        h = self._header()
        dirty_before = self._flagged(old, layout.F_DIRTY)
        pending = {e.path: (e, hsh) for e, hsh in zip(batch, hashes)}
        if h["entry_used"] == h["entry_count"] and all(self._locate(p, hsh) < 0 for p, (_, hsh) in pending.items()):
            self._append_grow(h, pending, index_generation, dirty_before)
            return
        kept: list[tuple[bytes, bytes]] = []  # (record, path)
        old_flags: dict[bytes, int] = {}
        eoff = h["entries_offset"]
        for i in range(h["entry_used"]):
            raw = bytes(view[eoff + i * layout.ENTRY_SIZE:eoff + (i + 1) * layout.ENTRY_SIZE])
            p = entry_path(view, h, raw)
            flags = U32.unpack_from(raw, _FLAGS_AT)[0]
            if p in pending:
                old_flags[p] = flags
            elif not (flags & layout.F_DELETED) or flags & layout.F_DIRTY:
                kept.append((raw, p))
        string_bytes = sum(len(p) for _, p in kept) + sum(len(p) for p in pending)
        geo = Geometry.for_counts(len(kept) + len(pending), string_bytes)
        live = sum(1 for raw, _ in kept if not U32.unpack_from(raw, _FLAGS_AT)[0] & layout.F_DELETED)
        live += sum(1 for e, _ in pending.values() if not e.flags & layout.F_DELETED)
        values = dict(h, file_size=geo.file_size, entry_capacity=geo.entry_capacity,
                      table_capacity=geo.table_capacity, bloom_offset=geo.bloom_offset,
                      table_offset=geo.table_offset, entries_offset=geo.entries_offset,
                      strings_offset=geo.strings_offset, strings_capacity=geo.strings_capacity,
                      generation=(h["generation"] + 2) & ~1, entry_count=live, entry_used=len(kept) + len(pending),
                      strings_used=string_bytes, header_flags=0,
                      index_generation=h["index_generation"] if index_generation is None else index_generation)
        root_b = bytes(view[layout.ROOT_OFFSET:layout.ROOT_OFFSET + h["root_len"]])

        def fill(new: native.Mapping) -> None:
            records, strings, off = [], [], 0
            for raw, p in kept:
                records.append(raw[:ENT["path_off"][0]] + U32.pack(off) + raw[ENT["path_len"][0]:])
                strings.append(p)
                off += len(p)
            for p, (e, hsh) in pending.items():
                records.append(pack_entry(e, hsh, off, e.flags | (old_flags.get(p, 0) & keep_flags)))
                strings.append(p)
                off += len(p)
            body = b"".join(records)
            new.view[geo.entries_offset:geo.entries_offset + len(body)] = body
            new.view[geo.strings_offset:geo.strings_offset + off] = b"".join(strings)
            lib.vrift_seal_range(new.base, new.size, 0, len(records))  # kept records have new string offsets
            if lib.vrift_place_range(new.base, new.size, 0, len(records)) != 0:
                raise VDirCorrupt(f"VDir {self.path}: slot table full while growing")

        self._map, self._ident = self._write_file(self.path, geo, values, root_b, fill)
        self._geometry = _geometry_of(read_header(self._map.view))
        lib.vrift_retire(old.base)
        old.release()
        self._map.release()  # the scan of the old file below maps its pages again meanwhile
        carried = [i for i in self._flagged(old, layout.F_DIRTY) if i not in dirty_before]
        if carried:
            self._carry_dirty(view, h, carried)
        old.close()

    def _append_grow(self, h: dict, pending: dict, index_generation: int | None, dirty_before: set[int]) -> None:
        """_grow when every old record stays where it is: no tombstone to drop (entry_used ==
        entry_count) and no path of the batch already in the file (a bulk load such as a first
        ingest).  The old records and strings are copied as two blocks, their string offsets
        and checksums unchanged; only the batch is packed and sealed.  A per-record rebuild
        made the VDir's growth a seventh of a first ingest."""
        old = self._m()
        view, lib = old.view, native.lib()
        used, sused = h["entry_used"], h["strings_used"]
        string_bytes = sused + sum(len(p) for p in pending)
        geo = Geometry.for_counts(used + len(pending), string_bytes)
        live = used + sum(1 for e, _ in pending.values() if not e.flags & layout.F_DELETED)
        values = dict(h, file_size=geo.file_size, entry_capacity=geo.entry_capacity,
                      table_capacity=geo.table_capacity, bloom_offset=geo.bloom_offset,
                      table_offset=geo.table_offset, entries_offset=geo.entries_offset,
                      strings_offset=geo.strings_offset, strings_capacity=geo.strings_capacity,
                      generation=(h["generation"] + 2) & ~1, entry_count=live, entry_used=used + len(pending),
                      strings_used=string_bytes, header_flags=0,
                      index_generation=h["index_generation"] if index_generation is None else index_generation)
        root_b = bytes(view[layout.ROOT_OFFSET:layout.ROOT_OFFSET + h["root_len"]])
        eoff, soff = h["entries_offset"], h["strings_offset"]

        def fill(new: native.Mapping) -> None:
            at = geo.entries_offset + used * layout.ENTRY_SIZE
            native.copy_releasing(new, geo.entries_offset, old, eoff, used * layout.ENTRY_SIZE)
            native.copy_releasing(new, geo.strings_offset, old, soff, sused)
            records, strings, off = [], [], sused
            for p, (e, hsh) in pending.items():
                records.append(pack_entry(e, hsh, off))
                strings.append(p)
                off += len(p)
            body = b"".join(records)
            new.view[at:at + len(body)] = body
            new.view[geo.strings_offset + sused:geo.strings_offset + off] = b"".join(strings)
            lib.vrift_seal_range(new.base, new.size, used, len(records))
            if lib.vrift_place_range(new.base, new.size, 0, used + len(records)) != 0:
                raise VDirCorrupt(f"VDir {self.path}: slot table full while growing")

        self._map, self._ident = self._write_file(self.path, geo, values, root_b, fill)
        self._geometry = _geometry_of(read_header(self._map.view))
        lib.vrift_retire(old.base)
        self._map.release()  # the scan of the old file below maps its pages again meanwhile
        # DIRTY set by clients in the old file after the copy: the same index here
        carried = [i for i in self._flagged(old, layout.F_DIRTY) if i not in dirty_before]
        m = self._m()
        for i in carried:
            lib.vrift_flags_or(m.base, m.size, i, layout.F_DIRTY)
        old.close()

    @staticmethod
    def _flagged(mapping: native.Mapping, bits: int) -> set[int]:
        lib = native.lib()
        count = lib.vrift_collect_flagged(mapping.base, mapping.size, bits, None, 0)
        out = (ctypes.c_uint32 * max(count, 1))()
        count = lib.vrift_collect_flagged(mapping.base, mapping.size, bits, out, count)
        return set(out[:count])

    def _carry_dirty(self, old_view: memoryview, old_h: dict, indices: list[int]) -> None:
        """DIRTY set in the old file by clients after the rebuild copied it: set it here too."""
        lib, m = native.lib(), self._m()
        missing = []
        for i in indices:
            at = old_h["entries_offset"] + i * layout.ENTRY_SIZE
            p = entry_path(old_view, old_h, old_view[at:at + layout.ENTRY_SIZE])
            index = self._locate(p, path_hash(p))
            if index >= 0:
                lib.vrift_flags_or(m.base, m.size, index, layout.F_DIRTY)
            else:  # a clean tombstone the rebuild dropped: keep the client's mark as a DIRTY tombstone
                missing.append(Entry.deleted(p).with_flags(layout.F_DELETED | layout.F_DIRTY))
        if missing:
            self.put_many(missing)


_GEOMETRY = ("file_size", "entry_capacity", "table_capacity", "bloom_offset", "table_offset", "entries_offset",
             "strings_offset", "strings_capacity", "header_size", "entry_size", "magic", "version")


def _geometry_of(h: dict) -> tuple:
    return tuple(h[k] for k in _GEOMETRY)


def remove_stale_temps(path: Path) -> None:
    """Temporary files of `path` left by writers that died before renaming them (temp_name
    puts the writer's pid in the name)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        try:
            pid = int(parts[0])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            continue  # its writer still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)


def _open_old(path: Path) -> native.Mapping | None:
    """The file currently at `path` mapped read-write when it is a VDir (to retire it), else None.
    A file that is not ours is not touched: the rename of the new file replaces its name."""
    try:
        mapping, _ = _map_file(path, writable=True)
    except VDirForeign as exc:
        say_once(str(path), f"{exc}: replacing it")
        return None
    except VDirError:
        return None
    return mapping
