/*
 * stat.c — the read interposers: stat family, statx, access family.
 *
 * Three layers (SPEC §6): (1) not ours, not initialised, fallback, or DIRTY → real call;
 * (2) clean entry → answer from the VDir; (3) miss → real call, except under a directory
 * flagged COMPLETE_DIR, where a miss is a certain ENOENT.
 *
 * Hot path rules: no allocation, no lock, no syscall, no logging, async-signal-safe.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/stat.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

enum { Q_PASS = 0, Q_HIT = 1, Q_NOENT = 2 };

/* The whole read decision.  `nofollow`: lstat semantics for a final symlink.  `counting`:
 * a metadata call (counted); open() probes count only the answers they take from memory. */
static inline int query_counted(int dirfd, const char *path, int nofollow, vrift_entry *e, int counting) {
    if (!__atomic_load_n(&vrift_reads_on, __ATOMIC_RELAXED) || UNLIKELY(path == NULL || path[0] == '\0'))
        return Q_PASS;
    vrift_path p;
    int r = vrift_resolve_path(dirfd, path, &p);
    if (r != VRIFT_P_INSIDE) {
        if (counting) vrift_count(r == VRIFT_P_OUTSIDE ? VRIFT_C_STAT_OUTSIDE : VRIFT_C_STAT_PASSED);
        return Q_PASS;
    }
    int f = vrift_find(p.rel, p.rel_len, e);
    if (LIKELY(f == 1)) {
        uint32_t fl = e->flags;
        if (fl & VRIFT_F_DIRTY) {
            /* A file this very process has staged is published first, so its own stat
             * sees what it wrote (as it would without us). */
            if (UNLIKELY(vrift_staged_count() > 0)) vrift_publish_path(p.abs);
            goto pass;
        }
        if (fl & VRIFT_F_DELETED) goto noent;
        if ((fl & VRIFT_F_SYMLINK) && (!nofollow || p.need_dir)) goto pass; /* target unknown */
        if (p.need_dir && !(fl & VRIFT_F_DIR)) goto pass;                    /* kernel: ENOTDIR */
        if (S_ISCHR(e->mode) || S_ISBLK(e->mode)) goto pass;                 /* no rdev in the index */
        if (counting) vrift_count(VRIFT_C_STAT_SERVED);
        return Q_HIT;
    }
    if (f == 0 && p.rel_len > 0) {
        /* Miss: certain only when the parent says it lists every child. */
        size_t k = p.rel_len;
        while (k > 0 && p.rel[k - 1] != '/') k--;
        size_t plen = k ? k - 1 : 0;
        vrift_entry parent;
        if (vrift_find(p.rel, plen, &parent) == 1 &&
            (parent.flags & (VRIFT_F_DIR | VRIFT_F_COMPLETE_DIR | VRIFT_F_DIRTY | VRIFT_F_DELETED |
                             VRIFT_F_SYMLINK)) == (VRIFT_F_DIR | VRIFT_F_COMPLETE_DIR))
            goto noent;
    }
pass:
    if (counting) vrift_count(VRIFT_C_STAT_PASSED);
    return Q_PASS;
noent:
    vrift_count(VRIFT_C_STAT_SERVED);
    return Q_NOENT;
}

static inline int query(int dirfd, const char *path, int nofollow, vrift_entry *e) {
    return query_counted(dirfd, path, nofollow, e, 1);
}

static inline uint32_t blksize_now(void) {
    return ((const vrift_header *)__atomic_load_n(&vrift_cur, __ATOMIC_ACQUIRE)->base)->blksize;
}

/* atime is not indexed: report mtime (docs/preload.md). */
static inline void fill_stat(struct stat *st, const vrift_entry *e) {
    memset(st, 0, sizeof *st);
    st->st_dev = e->dev;
    st->st_ino = e->ino;
    st->st_mode = e->mode;
    st->st_nlink = e->nlink;
    st->st_uid = e->uid;
    st->st_gid = e->gid;
    st->st_size = e->size;
    st->st_blksize = blksize_now();
    st->st_blocks = e->blocks;
    st->st_mtim.tv_sec = e->mtime_sec;
    st->st_mtim.tv_nsec = e->mtime_nsec;
    st->st_ctim.tv_sec = e->ctime_sec;
    st->st_ctim.tv_nsec = e->ctime_nsec;
    st->st_atim = st->st_mtim;
}

_Static_assert(sizeof(struct stat) == sizeof(struct stat64), "stat64 is stat on this ABI");

static inline int answer(int q, const vrift_entry *e, void *buf) {
    if (q == Q_HIT) {
        fill_stat((struct stat *)buf, e);
        return 0;
    }
    errno = ENOENT;
    return -1;
}

/* Real calls; a raw syscall when the real function is not resolved yet (before our
 * constructor, or while dlsym is running). */
static int real_fstatat(int dirfd, const char *path, void *buf, int flags) {
    if (REAL(fstatat)) return vrift_real.fstatat(dirfd, path, (struct stat *)buf, flags);
    return (int)syscall(SYS_newfstatat, dirfd, path, buf, flags);
}

/* Recording an action (docs/cache.md): every answer is an input — absence ('A'), or the
 * existence, type, mode, size and mtime of what is there ('S'; HOW: 'f' follows, 'l' does
 * not, 'a' the access family).  Without VRIFT_CACHE this is the one extra branch of the
 * hot path. */
#define PROBED(DIRFD, PATH, R, HOW)                                              \
    ({                                                                           \
        int r_ = (R);                                                            \
        if (UNLIKELY(vrift_recording)) vrift_rec_probe(DIRFD, PATH, r_, HOW);    \
        r_;                                                                      \
    })

#define STAT_BODY(DIRFD, PATH, BUF, NOFOLLOW, REALCALL)                 \
    vrift_entry e;                                                       \
    int q = query(DIRFD, PATH, NOFOLLOW, &e);                            \
    return PROBED(DIRFD, PATH, q != Q_PASS ? answer(q, &e, BUF) : REALCALL, (NOFOLLOW) ? 'l' : 'f');

EXPORT int stat(const char *path, struct stat *buf) {
    STAT_BODY(AT_FDCWD, path, buf, 0,
              vrift_real.stat ? vrift_real.stat(path, buf) : real_fstatat(AT_FDCWD, path, buf, 0))
}

EXPORT int lstat(const char *path, struct stat *buf) {
    STAT_BODY(AT_FDCWD, path, buf, 1,
              vrift_real.lstat ? vrift_real.lstat(path, buf)
                               : real_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW))
}

EXPORT int stat64(const char *path, struct stat64 *buf) {
    STAT_BODY(AT_FDCWD, path, buf, 0,
              vrift_real.stat64 ? vrift_real.stat64(path, buf) : real_fstatat(AT_FDCWD, path, buf, 0))
}

EXPORT int lstat64(const char *path, struct stat64 *buf) {
    STAT_BODY(AT_FDCWD, path, buf, 1,
              vrift_real.lstat64 ? vrift_real.lstat64(path, buf)
                                 : real_fstatat(AT_FDCWD, path, buf, AT_SYMLINK_NOFOLLOW))
}

/* Only AT_SYMLINK_NOFOLLOW and AT_NO_AUTOMOUNT are understood; anything else (AT_EMPTY_PATH,
 * unknown bits the kernel may reject) goes to the kernel. */
static inline int at_flags_ok(int flags) {
    return (flags & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT)) == 0;
}

static inline int fstatat_(int dirfd, const char *path, struct stat *buf, int flags) {
    if (at_flags_ok(flags)) {
        vrift_entry e;
        int q = query(dirfd, path, flags & AT_SYMLINK_NOFOLLOW, &e);
        if (q != Q_PASS) return answer(q, &e, buf);
    }
    return real_fstatat(dirfd, path, buf, flags);
}

EXPORT int fstatat(int dirfd, const char *path, struct stat *buf, int flags) {
    return PROBED(dirfd, path, fstatat_(dirfd, path, buf, flags), (flags & AT_SYMLINK_NOFOLLOW) ? 'l' : 'f');
}

static inline int fstatat64_(int dirfd, const char *path, struct stat64 *buf, int flags) {
    if (at_flags_ok(flags)) {
        vrift_entry e;
        int q = query(dirfd, path, flags & AT_SYMLINK_NOFOLLOW, &e);
        if (q != Q_PASS) return answer(q, &e, buf);
    }
    if (REAL(fstatat64)) return vrift_real.fstatat64(dirfd, path, buf, flags);
    return real_fstatat(dirfd, path, buf, flags);
}

EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *buf, int flags) {
    return PROBED(dirfd, path, fstatat64_(dirfd, path, buf, flags), (flags & AT_SYMLINK_NOFOLLOW) ? 'l' : 'f');
}

/* newfstatat is the kernel's name; glibc does not export it, but a program may define a
 * call to it through syscall(), which we cannot see — nothing to interpose. */

/* Legacy glibc entry points (compat symbols, still imported by binaries built against
 * glibc < 2.33, e.g. GNU make on Debian 12).  _STAT_VER_LINUX is 1 on x86_64; on this
 * ABI struct stat is the kernel's, so the real call is the modern one. */
#define STAT_VER_LINUX 1

static inline int bad_ver(void) {
    errno = EINVAL;
    return -1;
}

EXPORT int __xstat(int ver, const char *path, struct stat *buf) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return stat(path, buf);
}

EXPORT int __lxstat(int ver, const char *path, struct stat *buf) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return lstat(path, buf);
}

EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *buf, int flags) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return fstatat(dirfd, path, buf, flags);
}

EXPORT int __xstat64(int ver, const char *path, struct stat64 *buf) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return stat64(path, buf);
}

EXPORT int __lxstat64(int ver, const char *path, struct stat64 *buf) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return lstat64(path, buf);
}

EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *buf, int flags) {
    if (ver != STAT_VER_LINUX) return bad_ver();
    return fstatat64(dirfd, path, buf, flags);
}

/* statx: only the basic fields the index holds, minus atime (not indexed).  A request
 * for anything else (btime, mount id, DIO alignment…) or a forced sync goes to the kernel. */
#define VOUCHED_MASK (STATX_BASIC_STATS & ~STATX_ATIME)

static inline int statx_(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx) {
    if ((mask & ~STATX_BASIC_STATS) == 0 &&
        (flags & ~(AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | AT_STATX_DONT_SYNC)) == 0) {
        vrift_entry e;
        int q = query(dirfd, path, flags & AT_SYMLINK_NOFOLLOW, &e);
        if (q == Q_NOENT) {
            errno = ENOENT;
            return -1;
        }
        if (q == Q_HIT) {
            memset(stx, 0, sizeof *stx);
            stx->stx_mask = VOUCHED_MASK;
            stx->stx_blksize = blksize_now();
            stx->stx_nlink = (uint32_t)e.nlink;
            stx->stx_uid = e.uid;
            stx->stx_gid = e.gid;
            stx->stx_mode = (uint16_t)e.mode;
            stx->stx_ino = e.ino;
            stx->stx_size = (uint64_t)e.size;
            stx->stx_blocks = (uint64_t)e.blocks;
            stx->stx_mtime.tv_sec = e.mtime_sec;
            stx->stx_mtime.tv_nsec = e.mtime_nsec;
            stx->stx_ctime.tv_sec = e.ctime_sec;
            stx->stx_ctime.tv_nsec = e.ctime_nsec;
            stx->stx_dev_major = major(e.dev);
            stx->stx_dev_minor = minor(e.dev);
            return 0;
        }
    }
    if (REAL(statx)) return vrift_real.statx(dirfd, path, flags, mask, stx);
    return (int)syscall(SYS_statx, dirfd, path, flags, mask, stx);
}

EXPORT int statx(int dirfd, const char *path, int flags, unsigned int mask, struct statx *stx) {
    return PROBED(dirfd, path, statx_(dirfd, path, flags, mask, stx), (flags & AT_SYMLINK_NOFOLLOW) ? 'l' : 'f');
}

/* access family: existence (F_OK) is answered from the index; permission bits are not —
 * they depend on the caller's ids, capabilities, ACLs and mount flags (docs/preload.md). */
static inline int access_query(int dirfd, const char *path, int mode, int nofollow) {
    if (mode != F_OK) return Q_PASS;
    vrift_entry e;
    return query(dirfd, path, nofollow, &e);
}

static inline int access_answer(int q) {
    if (q == Q_HIT) return 0;
    errno = ENOENT;
    return -1;
}

static inline int access_(const char *path, int mode) {
    int q = access_query(AT_FDCWD, path, mode, 0);
    if (q != Q_PASS) return access_answer(q);
    if (REAL(access)) return vrift_real.access(path, mode);
    return (int)syscall(SYS_faccessat, AT_FDCWD, path, mode);
}

EXPORT int access(const char *path, int mode) { return PROBED(AT_FDCWD, path, access_(path, mode), 'a'); }

static inline int faccessat_(int dirfd, const char *path, int mode, int flags) {
    if ((flags & ~(AT_EACCESS | AT_SYMLINK_NOFOLLOW)) == 0) {
        int q = access_query(dirfd, path, mode, flags & AT_SYMLINK_NOFOLLOW);
        if (q != Q_PASS) return access_answer(q);
    }
    if (REAL(faccessat)) return vrift_real.faccessat(dirfd, path, mode, flags);
    return (int)syscall(SYS_faccessat2, dirfd, path, mode, flags);
}

EXPORT int faccessat(int dirfd, const char *path, int mode, int flags) {
    return PROBED(dirfd, path, faccessat_(dirfd, path, mode, flags), (flags & AT_SYMLINK_NOFOLLOW) ? 'l' : 'a');
}

static inline int euidaccess_(const char *path, int mode) {
    int q = access_query(AT_FDCWD, path, mode, 0);
    if (q != Q_PASS) return access_answer(q);
    if (REAL(euidaccess)) return vrift_real.euidaccess(path, mode);
    return faccessat_(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT int euidaccess(const char *path, int mode) { return PROBED(AT_FDCWD, path, euidaccess_(path, mode), 'a'); }

static inline int eaccess_(const char *path, int mode) {
    int q = access_query(AT_FDCWD, path, mode, 0);
    if (q != Q_PASS) return access_answer(q);
    if (REAL(eaccess)) return vrift_real.eaccess(path, mode);
    return faccessat_(AT_FDCWD, path, mode, AT_EACCESS);
}

EXPORT int eaccess(const char *path, int mode) { return PROBED(AT_FDCWD, path, eaccess_(path, mode), 'a'); }

/* For open() of a path for reading: 1 when the index says with certainty that it does not
 * exist (DELETED, or a miss under a COMPLETE_DIR parent) — a compiler's failed include
 * probes are then answered without a syscall. */
int vrift_certain_absent(int dirfd, const char *path) {
    vrift_entry e;
    return query_counted(dirfd, path, 0, &e, 0) == Q_NOENT;
}
