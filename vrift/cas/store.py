"""The content-addressed blob store (SPEC §4.2).

A blob lives at `<root>/blake3/<hh>/<hh>/<64 hex>` and never changes after it is named.

How a blob comes to exist, and why:

- The bytes are hashed as they are written into a temporary file, so the digest always
  describes the stored bytes, even when the source changes while it is read.  Files under
  64 KiB are read into memory and hashed first: a duplicate then costs one open, one read and
  one stat, and nothing is written.
- The temporary file (`.tmp.<pid>.<thread>.<n>`) is written in the blob's own directory when
  the digest is known first (small files), else under `<root>/tmp/`; either way on the same
  filesystem.  It is created 0444 and gets its final name with `renameat2(RENAME_NOREPLACE)`
  (or `link` + `unlink` where that is missing): a blob never exists half-written under its
  name, and two writers of the same content race on the name, where exactly one wins
  (`new=True`) and the other sees `EEXIST`.  A crash can leave a temporary
  behind; gc removes those older than an hour.  (`O_TMPFILE` would leave nothing, but measured
  2-4x slower on ext4, where every unnamed file goes through the orphan list.)
- Durability: `fsync=True` (the default) syncs the blob's data before it is named and its
  directory after, so a blob is on disk before any index refers to it.  That costs two fsyncs
  per new blob; bulk writers (ingest) pass `fsync=False` and call `CAS.sync()` (one `syncfs`)
  before they publish index entries that refer to the batch.  A crash before that sync can leave
  a short blob under its name; a dedup hit compares sizes, and a mismatching blob is set aside
  into `quarantine/` and written again, and `vrift cas verify` finds any other damage.
- Strategies: `auto`/`reflink` try FICLONE (a reflinked blob shares extents, costs no copy) and
  fall back to copying; a filesystem that refuses once is not asked again by this instance.
  `hardlink` links the source itself into the store and makes it read-only (0444); it is used only
  when configured, never for root (root writes through 0444, which would break the iron law), and
  only after the linked inode has been hashed again.  `chmod u+w` on a hardlinked project file
  still lets its owner change the blob; that is the price of the strategy (verify reports it).
- Errors: anything that goes wrong on the store's side (disk full, quota, read-only filesystem,
  I/O error) is fatal for a bulk writer (`CASError.fatal`); a source that cannot be read is not.

Why one file of ~750 lines: one class whose every method shares the layout, the temporary-file
protocol, the link strategy and the durability rules described above; splitting it would put
those rules in two places.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import os
import stat as statmod
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3

from ..errors import VriftError

ALGO = "blake3"
DIGEST_SIZE = 32
SMALL = 64 * 1024       # read whole, hash, check for a duplicate before writing anything
CHUNK = 1 << 20         # streaming read size
FICLONE = 0x40049409
BUMP_INTERVAL_S = 3600  # a dedup hit refreshes a blob's mtime at most this often (gc grace)
STRATEGIES = ("auto", "reflink", "copy", "hardlink")

_NO_REFLINK = {errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.EPERM}
TEMP_PREFIX = ".tmp."
_FULL = {errno.ENOSPC, errno.EDQUOT}
_counter = itertools.count()


class CASError(VriftError):
    """A store failure.  `fatal` is True when the store itself is unusable (disk full, quota,
    read-only, I/O error): a bulk writer must stop rather than skip the file."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


class BlobCorrupt(CASError):
    """A blob whose content no longer hashes to its name; it has been moved to quarantine/."""


@dataclass(frozen=True, slots=True)
class StoreResult:
    digest: bytes
    size: int
    new: bool
    strategy: str

    @property
    def hex(self) -> str:
        return self.digest.hex()


def hash_bytes(data) -> bytes:
    return blake3.blake3(data, max_threads=1).digest()


_KINDS = ((statmod.S_ISDIR, "a directory"), (statmod.S_ISCHR, "a character device"),
          (statmod.S_ISBLK, "a block device"), (statmod.S_ISFIFO, "a fifo"), (statmod.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def open_regular(path) -> tuple[int, os.stat_result]:
    """An O_RDONLY descriptor of `path` and its fstat, only when it is a regular file: a device
    reads forever (/dev/zero hashed at 100% CPU), a fifo blocks the opener.  O_NONBLOCK keeps
    the open itself from waiting on a fifo; it changes nothing for a regular file.  Anything
    else raises OSError(EINVAL) naming the kind."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not statmod.S_ISREG(st.st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a regular file ({kind_of(st.st_mode)}): refusing to hash it",
                      os.fsdecode(path))
    return fd, st


def hash_file(path) -> tuple[bytes, int]:
    """(digest, size) of a regular file's current content (OSError for anything else).
    A file under SMALL bytes costs one read (the size from fstat, plus one byte to see the
    end): no buffer to allocate, which is most of the cost of hashing a small file."""
    fd, st = open_regular(path)
    try:
        head, complete = _read_head(fd, st.st_size)
        if complete:
            return hash_bytes(head), len(head)
        return _hash_fd(fd, len(head), blake3.blake3(head, max_threads=1))
    finally:
        os.close(fd)


def _hash_fd(fd: int, offset: int = 0, h=None) -> tuple[bytes, int]:
    """(digest, size) of what `fd` holds from `offset`, both counting the bytes `h` was fed."""
    if h is None:
        h = blake3.blake3(max_threads=1)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    size = 0
    while True:
        n = os.preadv(fd, [buf], offset + size)
        if not n:
            return h.digest(), offset + size
        h.update(view[:n])  # releases the GIL for large inputs
        size += n


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def parse_digest(digest) -> bytes:
    """A digest as 32 bytes, from bytes or 64 hex characters."""
    if isinstance(digest, (bytes, bytearray, memoryview)) and len(digest) == DIGEST_SIZE:
        return bytes(digest)
    if isinstance(digest, str) and len(digest) == 2 * DIGEST_SIZE:
        try:
            return bytes.fromhex(digest)
        except ValueError:
            pass
    raise VriftError(f"not a BLAKE3 digest (64 hex characters): {digest!r}")


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100


def _load_renameat2():
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def renameat2(src: bytes, dst: bytes) -> int:
        """0, or the errno."""
        if fn(_AT_FDCWD, src, _AT_FDCWD, dst, _RENAME_NOREPLACE) == 0:
            return 0
        return ctypes.get_errno()

    return renameat2


_renameat2 = _load_renameat2()


def _syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        os.sync()


FEW_BLOBS = 4  # sync_blobs: up to this many files are fsynced in turn, more from SYNC_THREADS threads
SYNC_THREADS = 8
# sync_blobs remembers the blobs it made durable (a rebuild stores the same outputs again: dedup
# hits that need no fsync); forgotten all at once past this many (~100 bytes each)
DURABLE_MEMORY = 1 << 16
_POOL_LOCK = threading.Lock()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CAS:
    def __init__(self, root: os.PathLike | str, link_strategy: str = "auto", *, fsync: bool = True):
        if link_strategy not in STRATEGIES:
            raise VriftError(f"link_strategy: expected one of {', '.join(STRATEGIES)}, got {link_strategy!r}")
        self.root = Path(root)
        self.link_strategy = link_strategy
        self.fsync = fsync
        self._blobs = f"{os.fspath(self.root)}/{ALGO}"
        self._tmp = f"{os.fspath(self.root)}/tmp"
        self._dirs: set[str] = set()
        # What sync_blobs made durable itself, so it is not fsynced again: blobs (digests) and
        # fan-out directories whose own name is durable in their parent (a bit per <hh> and per
        # <hh>/<hh>; directories are never removed from the store)
        self._durable: set[bytes] = set()
        self._durable_dirs = bytearray((256 + 65536) // 8)
        self._pool: ThreadPoolExecutor | None = None
        self._no_reflink: set[int] = set()   # st_dev of sources where FICLONE was refused
        self._reflinked = False
        self._hardlink = link_strategy == "hardlink" and os.geteuid() != 0
        self._noreplace = _renameat2 is not None
        self._dev: int | None = None

    def __repr__(self) -> str:
        return f"CAS({str(self.root)!r}, link_strategy={self.link_strategy!r})"

    # -- naming -------------------------------------------------------------------------
    def blob_path(self, digest) -> Path:
        return Path(self._path(parse_digest(digest).hex()))

    def _path(self, hexd: str) -> str:
        return f"{self._blobs}/{hexd[:2]}/{hexd[2:4]}/{hexd}"

    def has(self, digest) -> bool:
        return os.path.exists(self._path(parse_digest(digest).hex()))

    @property
    def strategy(self) -> str:
        """What new blobs are made with: hardlink, reflink (once one succeeded) or copy."""
        if self._hardlink:
            return "hardlink"
        return "reflink" if self._reflinked else "copy"

    # -- storing ------------------------------------------------------------------------
    def store_bytes(self, data, *, fsync: bool | None = None) -> StoreResult:
        data = bytes(data)
        return self._store_small(data, "<bytes>", self.fsync if fsync is None else fsync)

    def store_file(self, path, *, fsync: bool | None = None) -> StoreResult:
        """Store the content of the file at `path`.  The digest describes the stored bytes.

        Raises FileNotFoundError when the file is gone, CASError (non-fatal) when it cannot be
        read or is not a regular file, CASError (fatal) when the store cannot be written."""
        durable = self.fsync if fsync is None else fsync
        shown = os.fsdecode(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)  # a fifo: no wait
        except PermissionError as e:
            raise CASError(f"{shown}: cannot read: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not statmod.S_ISREG(st.st_mode):
                raise CASError(f"{shown}: not a regular file ({kind_of(st.st_mode)}): refusing to store it")
            if self._hardlink:
                result = self._store_hardlink(path, shown, fd, st, durable)
                if result is not None:
                    return result
            if (st.st_size >= SMALL and self.link_strategy in ("auto", "reflink")
                    and st.st_dev not in self._no_reflink):
                result = self._store_reflink(shown, fd, st, durable)
                if result is not None:
                    return result
            try:
                head, complete = _read_head(fd, st.st_size)
            except PermissionError as e:
                raise CASError(f"{shown}: cannot read: {e.strerror}") from None
            if complete:
                return self._store_small(head, shown, durable)
            return self._store_stream(fd, head, shown, durable)
        finally:
            os.close(fd)

    def _store_small(self, data: bytes, shown: str, durable: bool) -> StoreResult:
        digest = hash_bytes(data)
        final = self._path(digest.hex())
        if self._existing(final, len(data)):
            return StoreResult(digest, len(data), False, self.strategy)
        tfd, tmpname = self._open_temp(shown, durable, os.path.dirname(final))
        new = False
        try:
            try:
                _write_all(tfd, data)
            except OSError as e:
                raise self._error(e, shown) from None
            new = self._publish(tfd, tmpname, final, len(data), durable, shown)
        finally:
            self._drop_temp(tfd, tmpname, new)
        if new:
            self._durable.discard(digest)
        return StoreResult(digest, len(data), new, self.strategy)

    def _store_stream(self, fd: int, head: bytes, shown: str, durable: bool) -> StoreResult:
        h = blake3.blake3(head, max_threads=1)
        size = len(head)
        tfd, tmpname = self._open_temp(shown, durable)
        new = False
        try:
            try:
                _write_all(tfd, head)
            except OSError as e:
                raise self._error(e, shown) from None
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                n = os.readv(fd, [buf])  # source errors propagate as OSError: not fatal
                if not n:
                    break
                h.update(view[:n])
                try:
                    _write_all(tfd, view[:n])
                except OSError as e:
                    raise self._error(e, shown) from None
                size += n
            digest = h.digest()
            new = self._publish(tfd, tmpname, self._path(digest.hex()), size, durable, shown)
        finally:
            self._drop_temp(tfd, tmpname, new)
        if new:
            self._durable.discard(digest)
        return StoreResult(digest, size, new, self.strategy)

    def _store_reflink(self, shown: str, fd: int, st: os.stat_result, durable: bool) -> StoreResult | None:
        tfd, tmpname = self._open_temp(shown, durable, rw=True)
        new = False
        try:
            try:
                fcntl.ioctl(tfd, FICLONE, fd)
            except OSError as e:
                if e.errno in _NO_REFLINK:
                    self._no_reflink.add(st.st_dev)
                    return None
                raise self._error(e, shown) from None
            self._reflinked = True
            # hash the clone, not the source: the source may be changing under us
            digest, size = _hash_fd(tfd)
            new = self._publish(tfd, tmpname, self._path(digest.hex()), size, durable, shown)
        finally:
            self._drop_temp(tfd, tmpname, new)
        if new:
            self._durable.discard(digest)
        return StoreResult(digest, size, new, "reflink")

    def _store_hardlink(self, path, shown: str, fd: int, st: os.stat_result, durable: bool) -> StoreResult | None:
        if st.st_uid != os.geteuid() or st.st_dev != self._cas_dev():
            return None
        digest, size = _hash_fd(fd)
        final = self._path(digest.hex())
        if self._existing(final, size):
            return StoreResult(digest, size, False, "hardlink")
        self._ensure_dir(self._tmp, durable)
        tmp = f"{self._tmp}/{TEMP_PREFIX}h.{os.getpid()}.{threading.get_ident()}.{next(_counter)}"
        try:
            os.link(path, tmp)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOENT):
                return None
            raise self._error(e, shown) from None
        restore = True
        try:
            os.chmod(tmp, 0o444)
            again, size2 = hash_file(tmp)  # the inode now in the store, after it became read-only
            if (again, size2) != (digest, size):
                return None  # changed under us: copy whatever it is now
            if durable:
                lfd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(lfd)
                finally:
                    os.close(lfd)
            self._ensure_dir(os.path.dirname(final), durable)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return StoreResult(digest, size, False, "hardlink")
            restore = False
            self._durable.discard(digest)
            if durable:
                self._sync_dir(os.path.dirname(final))
            return StoreResult(digest, size, True, "hardlink")
        except OSError as e:
            raise self._error(e, shown) from None
        finally:
            if restore:
                try:
                    os.chmod(tmp, statmod.S_IMODE(st.st_mode))
                except OSError:
                    pass
            try:
                os.unlink(tmp)
            except OSError:
                pass

    # -- the pieces of a store ------------------------------------------------------------
    def _existing(self, final: str, size: int) -> bool:
        """True when a sound blob already has this name (refreshing its mtime for gc)."""
        try:
            st = os.stat(final)
        except FileNotFoundError:
            return False
        if st.st_size != size:
            # names are never half-written, so this is damage (a crash before sync): set it aside
            self._set_aside(final, "size")
            return False
        # a blob with other names is a hardlinked project file: its mtime is not ours to touch
        if st.st_nlink == 1 and time.time() - st.st_mtime > BUMP_INTERVAL_S:
            try:
                os.utime(final)
            except OSError:
                pass
        return True

    def _open_temp(self, shown: str, durable: bool, where: str | None = None, rw: bool = False) -> tuple[int, str]:
        d = self._tmp if where is None else where
        name = f"{d}/{TEMP_PREFIX}{os.getpid()}.{threading.get_ident()}.{next(_counter)}"
        flags = (os.O_RDWR if rw else os.O_WRONLY) | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL
        try:
            try:
                return os.open(name, flags, 0o444), name
            except FileNotFoundError:  # first blob of this directory: cheaper than a stat per blob
                self._ensure_dir(d, durable)
                return os.open(name, flags, 0o444), name
        except OSError as e:
            raise self._error(e, shown) from None

    @staticmethod
    def _drop_temp(tfd: int, tmpname: str, named: bool = False) -> None:
        """Close the temp file and remove it unless it became the blob (`named`)."""
        os.close(tfd)
        if not named:
            try:
                os.unlink(tmpname)
            except FileNotFoundError:
                pass

    def _publish(self, tfd: int, tmpname: str, final: str, size: int, durable: bool, shown: str) -> bool:
        """Give the finished temp file its final name; False when the blob already existed."""
        leaf = os.path.dirname(final)
        try:
            # created 0444 (the open descriptor stays writable): no chmod needed
            if durable:
                os.fsync(tfd)  # data on disk before any name refers to it
            if os.path.dirname(tmpname) != leaf:
                self._ensure_dir(leaf, durable)
            for _ in range(2):
                if not self._name(tmpname, final):
                    if self._existing(final, size):
                        return False
                    continue  # a damaged blob was set aside: name ours
                if durable:
                    self._sync_dir(leaf)
                return True
            return False
        except OSError as e:
            raise self._error(e, shown) from None

    def _name(self, tmpname: str, final: str) -> bool:
        """Atomically give `tmpname` the name `final` unless that exists; False if it does.
        renameat2(RENAME_NOREPLACE) does it in one directory operation; where it is missing,
        link + unlink."""
        if self._noreplace:
            rc = _renameat2(os.fsencode(tmpname), os.fsencode(final))
            if rc == 0:
                return True
            if rc == errno.EEXIST:
                return False
            if rc not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise OSError(rc, os.strerror(rc), final)
            self._noreplace = False
        try:
            os.link(tmpname, final)
        except FileExistsError:
            return False
        os.unlink(tmpname)
        return True

    def _ensure_dir(self, d: str, durable: bool) -> None:
        if d in self._dirs:
            return
        created = []
        p = d
        while not os.path.isdir(p):
            created.append(p)
            p = os.path.dirname(p)
        for p in reversed(created):
            try:
                os.mkdir(p, 0o700)
            except FileExistsError:
                pass
            if durable:
                self._sync_dir(os.path.dirname(p))
        self._dirs.add(d)

    @staticmethod
    def _sync_dir(d: str) -> None:
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _cas_dev(self) -> int:
        if self._dev is None:
            self._ensure_dir(self._blobs, False)
            self._dev = os.stat(self._blobs).st_dev
        return self._dev

    def _error(self, e: OSError, shown: str) -> CASError:
        if e.errno in _FULL:
            return CASError(f"CAS {self.root}: disk full while storing {shown}", fatal=True)
        return CASError(f"CAS {self.root}: cannot store {shown}: {e.strerror or e}", fatal=True)

    def _set_aside(self, path: str, reason: str) -> str | None:
        """Move a damaged blob into quarantine/ (kept for inspection, out of the store)."""
        try:
            self._durable.discard(bytes.fromhex(os.path.basename(path)))
        except ValueError:
            pass
        q = f"{os.fspath(self.root)}/quarantine"
        self._ensure_dir(q, False)
        dest = f"{q}/{os.path.basename(path)}.{reason}.{time.time_ns()}"
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return None
        return dest

    def sync(self) -> None:
        """Make every blob stored so far durable (one syncfs on the store's filesystem)."""
        if not os.path.isdir(self.root):
            return
        dfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(dfd)
        finally:
            os.close(dfd)

    def sync_blobs(self, digests) -> None:
        """Make these blobs, stored with `fsync=False`, durable with their names: each blob is
        fsynced, then its directory, then each directory above whose own name is not known to
        be durable yet (a new fan-out directory), deepest first.  What this instance made
        durable before is skipped: a blob stored again (a dedup hit — a rebuild's outputs) and
        the fan-out directories already synced into their parents.  Many at once are fsynced
        from a few threads, so the filesystem's journal commits them together.  Not `syncfs`:
        that flushes everything dirty on the filesystem — other processes' writes too — and
        under a busy disk cost more than a group of commits' own fsyncs (measured: 124 against
        448 commits/s in sync mode)."""
        todo = {d for d in map(parse_digest, digests) if d not in self._durable}
        if not todo:
            return
        hexes = sorted(d.hex() for d in todo)
        paths = [self._path(h) for h in hexes]
        leaves = {h[:4] for h in hexes}
        # a leaf holds a new name: always synced; its parent (and the top) only when the
        # directory below it may be new to it
        mids = {h[:2] for h in leaves if not self._dir_durable(h)}
        tops = [h for h in mids if not self._dir_durable(h)]
        levels = [paths, [f"{self._blobs}/{h[:2]}/{h[2:]}" for h in sorted(leaves)],
                  [f"{self._blobs}/{h}" for h in sorted(mids)], [self._blobs] if tops else []]
        for batch in levels:
            if len(batch) <= FEW_BLOBS:
                for p in batch:
                    _fsync_path(p)
            else:
                list(self._sync_pool().map(_fsync_path, batch))
        for h in (*(h for h in leaves if h[:2] in mids), *tops):
            self._mark_dir_durable(h)
        if len(self._durable) + len(todo) > DURABLE_MEMORY:
            self._durable.clear()
        self._durable.update(todo)

    def _sync_pool(self) -> ThreadPoolExecutor:
        """The threads of sync_blobs, kept: starting 8 threads for every commit group cost more
        CPU than the group's own work."""
        if self._pool is None:
            with _POOL_LOCK:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="cas-sync")
        return self._pool

    def _dir_bit(self, hexd: str) -> int:
        """Bit number of a fan-out directory, from its hex name: <hh> or <hh><hh>."""
        return int(hexd, 16) if len(hexd) == 2 else 256 + int(hexd, 16)

    def _dir_durable(self, hexd: str) -> bool:
        bit = self._dir_bit(hexd)
        return bool(self._durable_dirs[bit >> 3] & (1 << (bit & 7)))

    def _mark_dir_durable(self, hexd: str) -> None:
        bit = self._dir_bit(hexd)
        self._durable_dirs[bit >> 3] |= 1 << (bit & 7)

    # -- reading ------------------------------------------------------------------------
    def read_bytes(self, digest, verify: bool = True) -> bytes:
        """The blob's content; with `verify`, checked against its digest (BlobCorrupt, the
        blob quarantined, when it does not match)."""
        d = parse_digest(digest)
        src = self._path(d.hex())
        try:
            with open(src, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CASError(f"CAS {self.root}: no blob {d.hex()}") from None
        if verify and hash_bytes(data) != d:
            self._corrupt(src, d)
        return data

    def _corrupt(self, src: str, d: bytes):
        moved = self._set_aside(src, "bad")
        raise BlobCorrupt(f"CAS {self.root}: blob {d.hex()} is damaged (its content hashes to another digest)"
                          + (f"; moved to {moved}" if moved else ""))

    def materialize(self, digest, dest, mode: int | None = None, verify: bool = True) -> None:
        """Write a fresh, independent file at `dest` with the blob's content (reflink when the
        filesystem can, else a copy; never a hardlink, so the file can be edited freely).  The
        file appears atomically (temp + rename in dest's directory) with a fresh mtime; `mode`
        defaults to 0666 minus the umask.

        With `verify` (the default) the blob is hashed first: a blob damaged on disk (bit rot,
        a stray write through a hardlink) raises BlobCorrupt and is moved to quarantine/, and
        `dest` is left alone — a replay must never install bytes other than those recorded.
        BLAKE3 runs at GB/s, so this costs microseconds per object file."""
        d = parse_digest(digest)
        src = self._path(d.hex())
        dest = os.path.abspath(os.fsdecode(dest))
        try:
            sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CASError(f"CAS {self.root}: no blob {d.hex()}") from None
        if verify:
            try:
                actual, _ = _hash_fd(sfd)
            except OSError as e:
                os.close(sfd)
                raise CASError(f"CAS {self.root}: cannot read blob {d.hex()}: {e.strerror or e}") from None
            if actual != d:
                os.close(sfd)
                self._corrupt(src, d)
        tmp = f"{os.path.dirname(dest)}/.{os.path.basename(dest)}.vrift.{os.getpid()}.{next(_counter)}"
        tfd = -1
        try:
            tfd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            cloned = False
            src_dev = os.fstat(sfd).st_dev
            if self.link_strategy in ("auto", "reflink", "hardlink") and src_dev not in self._no_reflink:
                try:
                    fcntl.ioctl(tfd, FICLONE, sfd)
                    cloned = True
                except OSError as e:
                    if e.errno not in _NO_REFLINK:
                        raise
                    self._no_reflink.add(src_dev)
            if not cloned:
                _copy_fd(sfd, tfd)
            if mode is not None:
                os.fchmod(tfd, mode)
            os.close(tfd)
            tfd = -1
            os.rename(tmp, dest)
            tmp = None
        except OSError as e:
            if e.errno in _FULL:
                raise CASError(f"{dest}: disk full while materializing blob {d.hex()}", fatal=True) from None
            raise CASError(f"{dest}: cannot materialize blob {d.hex()}: {e.strerror or e}") from None
        finally:
            os.close(sfd)
            if tfd >= 0:
                os.close(tfd)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    # -- listing ------------------------------------------------------------------------
    def iter_blobs(self) -> Iterator[tuple[bytes, str, int, float]]:
        """(digest, path, size, mtime) of every blob; temporaries and strays are skipped."""
        for d2 in self._leaf_dirs():
            try:
                it = os.scandir(d2)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    name = e.name
                    if len(name) != 64:  # temporaries start with "."
                        continue
                    try:
                        digest = bytes.fromhex(name)
                        st = e.stat(follow_symlinks=False)
                    except (ValueError, FileNotFoundError):
                        continue
                    yield digest, e.path, st.st_size, st.st_mtime

    def iter_temps(self) -> Iterator[tuple[str, float]]:
        """(path, mtime) of temporaries: in use by a writer, or left behind by a crashed one."""
        for d in (self._tmp, *self._leaf_dirs()):
            try:
                it = os.scandir(d)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    if e.name.startswith(TEMP_PREFIX):
                        try:
                            yield e.path, e.stat(follow_symlinks=False).st_mtime
                        except FileNotFoundError:
                            pass

    def _leaf_dirs(self) -> Iterator[str]:
        try:
            top = sorted(e.path for e in os.scandir(self._blobs) if len(e.name) == 2 and e.is_dir())
        except FileNotFoundError:
            return
        for d1 in top:
            try:
                subs = sorted(e.path for e in os.scandir(d1) if len(e.name) == 2 and e.is_dir())
            except FileNotFoundError:
                continue
            yield from subs

    def stats(self) -> tuple[int, int]:
        """(blob count, content bytes), from a walk of the store; `usage` adds the disk bytes."""
        count, logical, _ = self.usage()
        return count, logical

    def usage(self) -> tuple[int, int, int]:
        """(blob count, logical bytes, bytes on disk: st_blocks * 512, what `du` counts)."""
        count = logical = disk = 0
        for d2 in self._leaf_dirs():
            try:
                it = os.scandir(d2)
            except FileNotFoundError:
                continue
            with it:
                for e in it:
                    if len(e.name) != 64:
                        continue
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    count += 1
                    logical += st.st_size
                    disk += st.st_blocks * 512
        return count, logical, disk

    def remove(self, digest) -> bool:
        d = parse_digest(digest)
        self._durable.discard(d)
        try:
            os.unlink(self._path(d.hex()))
            return True
        except FileNotFoundError:
            return False


def _read_head(fd: int, size: int) -> tuple[bytes, bool]:
    """Up to SMALL bytes; (data, True) when that was the whole file."""
    want = min(size, SMALL) + 1
    data = os.read(fd, want)
    if len(data) < want and len(data) == size:
        return data, True  # a short read of exactly the stat'ed size: the whole file
    parts = [data]
    total = len(data)
    while total <= SMALL:
        chunk = os.read(fd, SMALL + 1 - total)
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts), False


def _copy_fd(sfd: int, tfd: int) -> None:
    offset = 0
    try:
        while True:
            n = os.copy_file_range(sfd, tfd, CHUNK * 16, offset, offset)
            if not n:
                return
            offset += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    while True:
        chunk = os.pread(sfd, CHUNK, offset)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            n = os.pwrite(tfd, view, offset)
            view = view[n:]
            offset += n
