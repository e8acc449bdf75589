/*
 * mutate.c — calls that change names or metadata of project paths (SPEC §5.4):
 * mark DIRTY first (the path, its directory, a directory's whole subtree, the other names
 * of a hard-linked inode), do the real call, then tell the daemon to re-read.  Marks and call
 * happen under a shared flock of each touched path's directory (write.c, vrift_lock_dir_of),
 * so the re-read can be a one-way CHANGED that nobody waits for.  A call that also changes
 * names elsewhere — a directory's subtree, the other names of a hard link — is not covered by
 * those locks: it waits for a synchronous INVALIDATE, as before.  Without a daemon the DIRTY
 * bits stay set and readers keep asking the kernel: correct.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <utime.h>


#define MAX_TOUCHED 4

typedef struct touched {
    int n;
    int wait;  /* names change beyond the locked directories: INVALIDATE, synchronously */
    int deep;  /* a directory's subtree is marked: it is re-read whole */
    int lock[MAX_TOUCHED];
    char abs[MAX_TOUCHED][VRIFT_PATH_MAX];
} touched;

static void touch_abs(touched *t, const char *abs, int subtree) {
    if (t->n >= MAX_TOUCHED) return;
    if (vrift_staged_count() > 0) vrift_publish_path(abs);
    t->lock[t->n] = vrift_lock_dir_of(abs);
    if (t->lock[t->n] < 0) t->wait = 1;
    struct stat st;
    if (REAL(fstatat)(AT_FDCWD, abs, &st, AT_SYMLINK_NOFOLLOW) == 0) {
        if (S_ISDIR(st.st_mode)) t->wait = 1;
        if (!S_ISDIR(st.st_mode) && st.st_nlink > 1) {
            t->wait = 1;
            vrift_mark_inode((uint64_t)st.st_dev, (uint64_t)st.st_ino);
        }
    }
    vrift_mark_path(abs, subtree);
    if (subtree) t->deep = 1;
    strcpy(t->abs[t->n++], abs);
}

/* `follow`: the call acts on a final symlink's target, which changes too. */
static void touch(touched *t, int dirfd, const char *path, int follow, int subtree) {
    if (!vrift_writes_on || t->n >= MAX_TOUCHED) return;
    int saved = errno;
    char abs[VRIFT_PATH_MAX];
    if (vrift_resolve_name(dirfd, path, abs)) {
        touch_abs(t, abs, subtree);
        struct stat st;
        char target[PATH_MAX];
        const char *rel;
        size_t rl;
        if (follow && REAL(fstatat)(AT_FDCWD, abs, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode) &&
            REAL(realpath)(abs, target) && vrift_rel_of(target, &rel, &rl))
            touch_abs(t, target, subtree);
    } else if (follow && path && REAL(realpath)(path, abs)) {
        /* a name outside the project may still lead into it */
        const char *rel;
        size_t rl;
        if (vrift_rel_of(abs, &rel, &rl)) touch_abs(t, abs, subtree);
    }
    errno = saved;
}

static void touch_fd(touched *t, int fd) {
    if (!vrift_writes_on || fd < 0) return;
    int saved = errno;
    char link[64], abs[VRIFT_PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t r = readlink(link, abs, sizeof abs - 1);
    if (r > 0 && abs[0] == '/') {
        abs[r] = '\0';
        const char *rel;
        size_t rl;
        if (vrift_rel_of(abs, &rel, &rl)) touch_abs(t, abs, 0);
    }
    errno = saved;
}

/* Re-read requests for every touched path and its directory, in one message. */
static int done(touched *t, int r) {
    if (t->n == 0) return r;
    int saved = errno;
    for (int i = 0; i < t->n; i++) vrift_unlock_dir(t->lock[i]);
    const char *paths[2 * MAX_TOUCHED];
    char parents[MAX_TOUCHED][VRIFT_PATH_MAX];
    int n = 0;
    for (int i = 0; i < t->n; i++) {
        paths[n++] = t->abs[i];
        size_t k = strlen(t->abs[i]);
        while (k > 1 && t->abs[i][k - 1] != '/') k--;
        if (k > 1) k--;
        memcpy(parents[i], t->abs[i], k);
        parents[i][k] = '\0';
        paths[n++] = parents[i];
    }
    /* A failed call changed nothing (each of these is atomic): the re-read only clears our
     * marks, and nobody needs to wait for that (`mkdir -p` over existing directories made a
     * compile wait for three INVALIDATEs, each re-reading the directory's whole subtree).  A
     * path marked without its subtree needs only its own entry re-read. */
    int failed = r < 0;
    if (vrift_daemon_reread(paths, n, t->wait && !failed, !t->deep) == 0)
        __atomic_fetch_add(&vrift_counts[VRIFT_C_INVALIDATED], (uint64_t)t->n, __ATOMIC_RELAXED);
    errno = saved;
    return r;
}

#define T touched t; t.n = 0; t.wait = 0; t.deep = 0

EXPORT int rename(const char *a, const char *b) {
    T;
    touch(&t, AT_FDCWD, a, 0, 1);
    touch(&t, AT_FDCWD, b, 0, 1);
    int r = REAL(rename)(a, b);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('U', AT_FDCWD, a);
        vrift_rec_path('W', AT_FDCWD, b);
    }
    return done(&t, r);
}

EXPORT int renameat(int da, const char *a, int db, const char *b) {
    T;
    touch(&t, da, a, 0, 1);
    touch(&t, db, b, 0, 1);
    int r = REAL(renameat)(da, a, db, b);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('U', da, a);
        vrift_rec_path('W', db, b);
    }
    return done(&t, r);
}

EXPORT int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
    T;
    touch(&t, da, a, 0, 1);
    touch(&t, db, b, 0, 1);
    int r = REAL(renameat2) ? vrift_real.renameat2(da, a, db, b, flags)
                            : (int)syscall(SYS_renameat2, da, a, db, b, flags);
    if (UNLIKELY(vrift_recording) && r == 0) {
        /* RENAME_EXCHANGE: both names now hold new content */
        vrift_rec_path((flags & RENAME_EXCHANGE) ? 'W' : 'U', da, a);
        vrift_rec_path('W', db, b);
    }
    return done(&t, r);
}

EXPORT int unlink(const char *a) {
    T;
    touch(&t, AT_FDCWD, a, 0, 0);
    int r = REAL(unlink)(a);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('U', AT_FDCWD, a);
    }
    return done(&t, r);
}

EXPORT int unlinkat(int d, const char *a, int flags) {
    T;
    touch(&t, d, a, 0, (flags & AT_REMOVEDIR) != 0);
    int r = REAL(unlinkat)(d, a, flags);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('U', d, a);
    }
    return done(&t, r);
}

EXPORT int mkdir(const char *a, mode_t mode) {
    T;
    touch(&t, AT_FDCWD, a, 0, 0);
    int r = REAL(mkdir)(a, mode);
    if (UNLIKELY(vrift_recording)) {
        if (r == 0) vrift_rec_path('W', AT_FDCWD, a);
        /* `mkdir -p out` over an existing out/: a directory it makes sure of (docs/cache.md) */
        else if (errno == EEXIST) vrift_rec_stat(AT_FDCWD, a, 'm');
    }
    return done(&t, r);
}

EXPORT int mkdirat(int d, const char *a, mode_t mode) {
    T;
    touch(&t, d, a, 0, 0);
    int r = REAL(mkdirat)(d, a, mode);
    if (UNLIKELY(vrift_recording)) {
        if (r == 0) vrift_rec_path('W', d, a);
        /* `mkdir -p out` over an existing out/: a directory it makes sure of (docs/cache.md) */
        else if (errno == EEXIST) vrift_rec_stat(d, a, 'm');
    }
    return done(&t, r);
}

EXPORT int rmdir(const char *a) {
    T;
    touch(&t, AT_FDCWD, a, 0, 1);
    int r = REAL(rmdir)(a);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('U', AT_FDCWD, a);
    }
    return done(&t, r);
}

/* A replay puts each output in place as a file of its own: a second name of a file (link count
 * 2, an in-place edit of one seen through the other) cannot be replayed. */
static void hard_link(const char *b) { vrift_rec_uncacheable("creates a hard link:", b); }

/* A replayed output gets a fresh mtime (make and ninja must see it as new): times set on
 * purpose (`cp -p`, `touch -d`/`-r`, `tar x`, `install -p`) would be lost.  NULL times or
 * UTIME_NOW are "now", which a replay gives too. */
static int explicit_times(const struct timespec *times) {
    if (!times) return 0;
    for (int i = 0; i < 2; i++)
        if (times[i].tv_nsec != UTIME_NOW && times[i].tv_nsec != UTIME_OMIT) return 1;
    return 0;
}

static void sets_times(const char *what) { vrift_rec_uncacheable("sets file times:", what); }

EXPORT int link(const char *a, const char *b) {
    T;
    touch(&t, AT_FDCWD, a, 0, 0);
    touch(&t, AT_FDCWD, b, 0, 0);
    int r = REAL(link)(a, b);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', AT_FDCWD, b);
        hard_link(b);
    }
    return done(&t, r);
}

EXPORT int linkat(int da, const char *a, int db, const char *b, int flags) {
    T;
    if (flags & AT_EMPTY_PATH)
        touch_fd(&t, da);
    else
        touch(&t, da, a, (flags & AT_SYMLINK_FOLLOW) != 0, 0);
    touch(&t, db, b, 0, 0);
    int r = REAL(linkat)(da, a, db, b, flags);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', db, b);
        hard_link(b);
    }
    return done(&t, r);
}

EXPORT int symlink(const char *target, const char *b) {
    T;
    touch(&t, AT_FDCWD, b, 0, 0);
    int r = REAL(symlink)(target, b);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', AT_FDCWD, b);
    }
    return done(&t, r);
}

EXPORT int symlinkat(const char *target, int d, const char *b) {
    T;
    touch(&t, d, b, 0, 0);
    int r = REAL(symlinkat)(target, d, b);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', d, b);
    }
    return done(&t, r);
}

EXPORT int truncate(const char *a, off_t len) {
    T;
    touch(&t, AT_FDCWD, a, 1, 0);
    int r = REAL(truncate)(a, len);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', AT_FDCWD, a);
    }
    return done(&t, r);
}

EXPORT int truncate64(const char *a, off64_t len) {
    T;
    touch(&t, AT_FDCWD, a, 1, 0);
    int r = REAL(truncate64)(a, len);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', AT_FDCWD, a);
    }
    return done(&t, r);
}

/* A directory's mode decides whether its descendants can be reached: subtree. */
EXPORT int chmod(const char *a, mode_t mode) {
    T;
    touch(&t, AT_FDCWD, a, 1, 1);
    int r = REAL(chmod)(a, mode);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', AT_FDCWD, a);
    }
    return done(&t, r);
}

EXPORT int fchmodat(int d, const char *a, mode_t mode, int flags) {
    T;
    touch(&t, d, a, !(flags & AT_SYMLINK_NOFOLLOW), 1);
    int r = REAL(fchmodat)(d, a, mode, flags);
    if (UNLIKELY(vrift_recording) && r == 0) {
        vrift_rec_path('W', d, a);
    }
    return done(&t, r);
}

#pragma GCC diagnostic ignored "-Wnonnull-compare" /* utimensat: declared nonnull, the kernel takes NULL */
EXPORT int utimensat(int d, const char *a, const struct timespec times[2], int flags) {
    T;
    if (a == NULL)
        touch_fd(&t, d); /* futimens() is utimensat(fd, NULL, …) in the kernel */
    else
        touch(&t, d, a, !(flags & AT_SYMLINK_NOFOLLOW), 0);
    int r = REAL(utimensat)(d, a, times, flags);
    if (UNLIKELY(vrift_recording) && r == 0) {
        if (explicit_times(times)) sets_times(a ? a : "(fd)");
        if (a == NULL)
            vrift_rec_fd('W', d);
        else
            vrift_rec_path('W', d, a);
    }
    return done(&t, r);
}

EXPORT int futimens(int fd, const struct timespec times[2]) {
    T;
    touch_fd(&t, fd);
    int r = REAL(futimens)(fd, times);
    if (UNLIKELY(vrift_recording) && r == 0) {
        if (explicit_times(times)) sets_times("(fd)");
        vrift_rec_fd('W', fd);
    }
    return done(&t, r);
}

EXPORT int utimes(const char *a, const struct timeval times[2]) {
    T;
    touch(&t, AT_FDCWD, a, 1, 0);
    int r = REAL(utimes)(a, times);
    if (UNLIKELY(vrift_recording) && r == 0) {
        if (times) sets_times(a);
        vrift_rec_path('W', AT_FDCWD, a);
    }
    return done(&t, r);
}

EXPORT int utime(const char *a, const struct utimbuf *times) {
    T;
    touch(&t, AT_FDCWD, a, 1, 0);
    int r = REAL(utime)(a, times);
    if (UNLIKELY(vrift_recording) && r == 0) {
        if (times) sets_times(a);
        vrift_rec_path('W', AT_FDCWD, a);
    }
    return done(&t, r);
}
