/*
 * open.c — the write-opens (open, openat, creat, fopen, freopen and their 64-bit names):
 * for each call, the plan (pass through, write the file directly, or stage it) and its
 * registration in the fd table.  What happens at close, and the rest of the write path, is
 * in write.c (its header comment tells the whole story).
 */
#include "vrift_preload.h"
#include "vrift_write.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------ planning an open */

enum { P_PASS = 0, P_STAGED, P_DIRECT };

typedef struct write_plan {
    int kind;
    int existing;      /* the real file exists (regular) */
    struct stat st;    /* its stat when existing */
    uint64_t seq;
    char abs[VRIFT_PATH_MAX];
    char staging[VRIFT_PATH_MAX];
} write_plan;

static int wants_write(int flags) {
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Decide how to open a project path for writing and prepare for it.  Errors of the user's
 * call itself (no such file, no permission, is a directory…) are left to the real call. */
static void plan_write(int dirfd, const char *path, int flags, write_plan *p) {
    p->kind = P_PASS;
    if (!vrift_writes_on || (flags & (O_PATH | __O_TMPFILE)) == O_PATH || (flags & __O_TMPFILE) == __O_TMPFILE)
        return;
    if (!vrift_resolve_name(dirfd, path, p->abs)) return;
    if (vrift_tool_state(p->abs)) return;
    pid_t pid = vrift_raw_getpid();
    int saved = errno;
    struct stat lst;
    p->existing = 0;
    int have = REAL(fstatat)(AT_FDCWD, p->abs, &lst, AT_SYMLINK_NOFOLLOW) == 0;
    if (have && S_ISLNK(lst.st_mode)) {
        /* open follows the link: the target changes, in place */
        char target[PATH_MAX];
        if (REAL(realpath)(p->abs, target)) {
            const char *rel;
            size_t rl;
            if (vrift_rel_of(target, &rel, &rl)) vrift_mark_path(target, 0);
        }
        p->kind = P_DIRECT;
    } else if (have && !S_ISREG(lst.st_mode)) {
        errno = saved;
        return; /* directory, fifo, device: nothing the index tracks changes */
    } else if (!have && !(flags & O_CREAT)) {
        errno = saved;
        return; /* ENOENT from the real call */
    } else if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL) || pid != vrift_pid ||
               (flags & O_ACCMODE) == O_RDONLY) {
        /* exclusive creation must be decided on the real name; a vfork child shares our
         * memory and must not touch the fd table */
        p->kind = P_DIRECT;
    } else if (have && (lst.st_nlink > 1 || (!(flags & O_TRUNC) && lst.st_size > VRIFT_COPY_MAX))) {
        p->kind = P_DIRECT; /* keep hard links shared; do not copy huge files */
        if (lst.st_nlink > 1) vrift_mark_inode((uint64_t)lst.st_dev, (uint64_t)lst.st_ino);
    } else {
        /* permission problems are reported by the real call, not hidden by staging */
        int need = (flags & O_ACCMODE) == O_RDWR ? R_OK | W_OK : W_OK;
        char parent[VRIFT_PATH_MAX];
        vrift_parent_of(p->abs, parent);
        if (have ? REAL(faccessat)(AT_FDCWD, p->abs, need, AT_EACCESS) != 0
                 : REAL(faccessat)(AT_FDCWD, parent, W_OK | X_OK, AT_EACCESS) != 0) {
            errno = saved;
            return;
        }
        struct stat pst;
        dev_t staging_dev;
        if (vrift_ensure_staging_dir(&staging_dev) != 0 || REAL(fstatat)(AT_FDCWD, parent, &pst, 0) != 0 ||
            pst.st_dev != staging_dev) {
            p->kind = P_DIRECT; /* rename cannot cross filesystems */
        } else {
            p->kind = P_STAGED;
        }
    }
    p->existing = have && S_ISREG(lst.st_mode);
    if (p->existing) p->st = lst;
    vrift_mark_path(p->abs, 0);
    if (p->kind == P_DIRECT && !have) {
        /* a new file written in place is visible (and indexed by the watcher) while it is
         * written: only the daemon can put a DIRTY entry where there is none yet */
        const char *one[1] = {p->abs};
        vrift_daemon_begin_write(one, 1);
    }
    if (p->kind == P_STAGED || (p->kind == P_DIRECT && have)) {
        /* one-way: if this process dies before its close, the daemon re-reads the path */
        const char *one[1] = {p->abs};
        vrift_daemon_notify(VRIFT_N_WRITING, one, 1);
    }
    if (p->kind == P_STAGED) {
        p->seq = __atomic_fetch_add(&vrift_staging_seq, 1, __ATOMIC_RELAXED);
        vrift_staging_path(p->staging, pid, p->seq);
        if (p->existing) {
            /* the old content is kept unless truncated; the mode is set after the user's
             * open (a read-only mode must not make our own open fail) */
            int dst = vrift_open_raw(p->staging, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            int ok = dst >= 0;
            if (ok && !(flags & O_TRUNC)) {
                int src = vrift_open_raw(p->abs, O_RDONLY | O_CLOEXEC, 0);
                ok = src >= 0 && vrift_copy_content(src, dst) == 0;
                if (src >= 0) vrift_close_raw(src);
            }
            if (dst >= 0) vrift_close_raw(dst);
            if (!ok) {
                REAL(unlink)(p->staging);
                p->kind = P_DIRECT;
            }
        }
    }
    if (p->kind == P_DIRECT) vrift_count(VRIFT_C_DIRECT);
    errno = saved;
}

/* After the user's open of the staging file (or the real one) succeeded. */
static void register_fd(write_plan *p, int fd) {
    int saved = errno;
    if (p->kind == P_STAGED && p->existing) {
        fchmod(fd, p->st.st_mode & 07777);
        if (p->st.st_uid != geteuid() || p->st.st_gid != getegid()) {
            int r = fchown(fd, p->st.st_uid, p->st.st_gid);
            (void)r;
        }
    }
    flock(fd, LOCK_SH); /* the beacon (see the top of this file) */
    pid_t pid = vrift_raw_getpid();
    if (fd >= 0 && fd < VRIFT_FD_MAX && pid == vrift_pid) {
        vrift_spin_lock(&vrift_fds_lock);
        fd_slot *s = &vrift_fds[fd];
        if (s->state == S_STAGED && s->owner == pid) __atomic_fetch_sub(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
        s->state = p->kind == P_STAGED ? S_STAGED : S_DIRECT;
        if (fd > vrift_fds_high) __atomic_store_n(&vrift_fds_high, fd, __ATOMIC_RELEASE);
        s->owner = pid;
        s->seq = p->seq;
        strcpy(s->virt, p->abs);
        if (s->state == S_STAGED) __atomic_fetch_add(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
        vrift_spin_unlock(&vrift_fds_lock);
    } else {
        /* untracked: make the data visible under its real name now; the daemon re-reads
         * the path once the beacon is gone */
        if (p->kind == P_STAGED && vrift_place_staging(p->staging, p->abs) == 0) vrift_count(VRIFT_C_PUBLISHED);
        vrift_invalidate_path(p->abs);
    }
    errno = saved;
}

static void abandon(write_plan *p) {
    int saved = errno;
    if (p->kind == P_STAGED) REAL(unlink)(p->staging);
    vrift_invalidate_path(p->abs); /* DIRTY was set for nothing: let the daemon clear it */
    errno = saved;
}

/* ------------------------------------------------------------------ the open family */

static int open_plain(int dirfd, const char *path, int flags, mode_t mode,
                      int (*realf)(int, const char *, int, ...)) {
    if (UNLIKELY(!wants_write(flags))) {
        if (vrift_staged_count() > 0) {
            char abs[VRIFT_PATH_MAX];
            if (vrift_resolve_name(dirfd, path, abs)) vrift_publish_path(abs);
        }
        if (!(flags & (O_CREAT | O_PATH)) && vrift_certain_absent(dirfd, path)) {
            errno = ENOENT;
            return -1;
        }
        if (realf) return realf(dirfd, path, flags, mode);
        return (int)syscall(SYS_openat, dirfd, path, flags, mode);
    }
    write_plan p;
    plan_write(dirfd, path, flags, &p);
    if (p.kind == P_STAGED) {
        if (vrift_staged_count() > 0) vrift_publish_path(p.abs);
        int f = p.existing ? flags & ~(O_CREAT | O_EXCL | O_TRUNC) : (flags | O_CREAT | O_EXCL) & ~O_TRUNC;
        int fd = realf ? realf(AT_FDCWD, p.staging, f, mode) : (int)syscall(SYS_openat, AT_FDCWD, p.staging, f, mode);
        dev_t dev;
        if (fd < 0 && errno == ENOENT && vrift_staging_gone(&dev) == 0) /* removed under us: made again */
            fd = realf ? realf(AT_FDCWD, p.staging, f, mode) : (int)syscall(SYS_openat, AT_FDCWD, p.staging, f, mode);
        if (fd >= 0) {
            register_fd(&p, fd);
            return fd;
        }
        abandon(&p);
        return fd;
    }
    if (p.kind == P_DIRECT && vrift_staged_count() > 0) vrift_publish_path(p.abs);
    int fd = realf ? realf(dirfd, path, flags, mode) : (int)syscall(SYS_openat, dirfd, path, flags, mode);
    if (p.kind == P_DIRECT) {
        if (fd >= 0)
            register_fd(&p, fd);
        else
            abandon(&p);
    }
    return fd;
}

static int open_common(int dirfd, const char *path, int flags, mode_t mode,
                       int (*realf)(int, const char *, int, ...)) {
    if (UNLIKELY(vrift_recording)) vrift_rec_open_before(dirfd, path, flags);
    int fd = open_plain(dirfd, path, flags, mode, realf);
    if (UNLIKELY(vrift_recording)) vrift_rec_open(dirfd, path, flags, fd);
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

EXPORT int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags, mode, REAL(openat));
}

EXPORT int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags | O_LARGEFILE, mode, REAL(openat));
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags, mode, REAL(openat));
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags | O_LARGEFILE, mode, REAL(openat));
}

EXPORT int creat(const char *path, mode_t mode) {
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, REAL(openat));
}

EXPORT int creat64(const char *path, mode_t mode) {
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_LARGEFILE, mode, REAL(openat));
}

/* fopen modes → open flags (glibc's reading: first char, then '+', 'x', 'e' anywhere). */
static int fopen_flags(const char *mode) {
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *c = mode + 1; *c && *c != ','; c++) {
        if (*c == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*c == 'x') flags |= O_EXCL;
        else if (*c == 'e') flags |= O_CLOEXEC;
    }
    return flags;
}

typedef FILE *(*fopen_fn)(const char *, const char *);

static FILE *fopen_plain(const char *path, const char *mode, FILE *(*realf)(const char *, const char *)) {
    int flags = mode ? fopen_flags(mode) : -1;
    if (flags < 0 || !wants_write(flags)) {
        if (vrift_staged_count() > 0 && path) {
            char abs[VRIFT_PATH_MAX];
            if (vrift_resolve_name(AT_FDCWD, path, abs)) vrift_publish_path(abs);
        }
        return realf(path, mode);
    }
    write_plan p;
    plan_write(AT_FDCWD, path, flags, &p);
    if (p.kind == P_PASS) return realf(path, mode);
    if (vrift_staged_count() > 0) vrift_publish_path(p.abs);
    FILE *f;
    if (p.kind == P_STAGED) {
        char m[16];
        size_t k = 0;
        for (const char *c = mode; *c && k < sizeof m - 1; c++)
            if (*c != 'x') m[k++] = *c; /* we created the staging name ourselves */
        m[k] = '\0';
        f = realf(p.staging, m);
    } else {
        f = realf(path, mode);
    }
    if (f)
        register_fd(&p, fileno(f));
    else
        abandon(&p);
    return f;
}

static FILE *fopen_common(const char *path, const char *mode, FILE *(*realf)(const char *, const char *)) {
    if (UNLIKELY(vrift_recording) && mode && fopen_flags(mode) >= 0) vrift_rec_open_before(AT_FDCWD, path, fopen_flags(mode));
    FILE *f = fopen_plain(path, mode, realf);
    if (UNLIKELY(vrift_recording) && mode && fopen_flags(mode) >= 0)
        vrift_rec_open(AT_FDCWD, path, fopen_flags(mode), f ? fileno(f) : -1);
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return fopen_common(path, mode, REAL(fopen)); }
EXPORT FILE *fopen64(const char *path, const char *mode) { return fopen_common(path, mode, REAL(fopen64)); }

static FILE *freopen_common(const char *path, const char *mode, FILE *fp,
                            FILE *(*realf)(const char *, const char *, FILE *)) {
    int oldfd = fp ? fileno(fp) : -1;
    fd_slot snap;
    int mine = path ? vrift_take_slot(oldfd, &snap) : 0;
    int flags = mode ? fopen_flags(mode) : -1;
    if (UNLIKELY(vrift_recording) && path && flags >= 0) vrift_rec_open_before(AT_FDCWD, path, flags);
    write_plan p;
    p.kind = P_PASS;
    if (path && flags >= 0 && wants_write(flags)) plan_write(AT_FDCWD, path, flags, &p);
    FILE *f;
    if (p.kind == P_STAGED) {
        char m[16];
        size_t k = 0;
        for (const char *c = mode; *c && k < sizeof m - 1; c++)
            if (*c != 'x') m[k++] = *c;
        m[k] = '\0';
        f = realf(p.staging, m, fp);
    } else {
        f = realf(path, mode, fp);
    }
    int saved = errno;
    if (mine) vrift_finish_slot(&snap);
    if (UNLIKELY(vrift_recording) && path && flags >= 0) vrift_rec_open(AT_FDCWD, path, flags, f ? fileno(f) : -1);
    errno = saved;
    if (p.kind != P_PASS) {
        if (f)
            register_fd(&p, fileno(f));
        else
            abandon(&p);
    }
    return f;
}

EXPORT FILE *freopen(const char *path, const char *mode, FILE *fp) {
    return freopen_common(path, mode, fp, REAL(freopen));
}

EXPORT FILE *freopen64(const char *path, const char *mode, FILE *fp) {
    return freopen_common(path, mode, fp, REAL(freopen64));
}
