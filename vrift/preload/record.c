/*
 * record.c — the per-process action log (docs/cache.md, "Recording in the preload library").
 *
 * Every image of a recording action writes <root>/.vrift/actions/<id>/<pid>.<rand>.log:
 * records `u8 kind, u32 length, payload`, little-endian.  Records are copied into a static
 * buffer (no allocation, no syscall per event) and written when the buffer is full, before
 * exec and at exit.  The file is opened for each write and closed again: a program that
 * closes every fd it does not know (daemons, subprocess close_fds) cannot make us write into
 * one of its files.
 *
 * A vfork child shares our memory until it execs: it may add records (the parent is
 * suspended meanwhile) but never writes the file.  A forked child starts an empty buffer and
 * its own file.  A record that cannot be kept (re-entered from a signal handler, or the
 * buffer full in a vfork child) makes the action uncacheable: losing an input is never
 * allowed to produce a hit.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REC_BUF (64 * 1024)

int vrift_recording;

static uint8_t buf[REC_BUF];
static size_t used;
static vrift_spinlock lock_word;
static int lost;          /* a record was dropped: the action cannot be trusted */
static char dir[VRIFT_PATH_MAX];
static size_t dir_len;
static char file[VRIFT_PATH_MAX];
static pid_t file_pid;    /* `file` names this pid's log (0: not created yet) */
static __thread int inside;

/* 'S' records already written by this image: a compiler stats the same header many times.
 * Direct-mapped, 64-bit FNV-1a of the record (flavour + path): a slot holding another path
 * is overwritten, so a record is only ever skipped when the same one was written before. */
#define SEEN_SLOTS 512
static uint64_t seen[SEEN_SLOTS];


/* The whole buffer, retrying short writes and EINTR (the logs, replayed output). */
int vrift_write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Field 22 of /proc/self/stat (clock ticks after boot): the same across exec. */
static uint64_t start_time(void) {
    char b[1024];
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/stat", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return 0;
    long n = syscall(SYS_read, fd, b, sizeof b - 1);
    syscall(SYS_close, fd);
    if (n <= 0) return 0;
    b[n] = '\0';
    char *p = strrchr(b, ')');
    if (!p) return 0;
    int field = 2; /* p is at the end of field 2 (comm) */
    uint64_t v = 0;
    for (p++; *p; p++) {
        if (*p == ' ') {
            field++;
            continue;
        }
        if (field == 22) {
            if (*p < '0' || *p > '9') break;
            v = v * 10 + (uint64_t)(*p - '0');
        } else if (field > 22) {
            break;
        }
    }
    return v;
}

/* Called with the lock held, by the process that owns the buffer (not a vfork child). */
static void flush_locked(const void *extra, size_t extra_len) {
    if (used == 0 && extra_len == 0 && !lost) return;
    int saved = errno;
    pid_t pid = vrift_raw_getpid();
    int fd = -1;
    if (file_pid != pid) {
        /* One file per process, shared by the images an exec chains (each appends; the last
         * one's 'Z' ends it): <pid>.<start time>.log — the start time tells a reused pid. */
        size_t n = dir_len;
        memcpy(file, dir, n);
        file[n++] = '/';
        n += vrift_put_dec(file + n, (uint64_t)pid);
        file[n++] = '.';
        n += vrift_put_dec(file + n, start_time());
        memcpy(file + n, ".log", 5);
        file_pid = pid;
    }
    fd = (int)syscall(SYS_openat, AT_FDCWD, file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        if (lost) {
            /* an 'N' record, written ahead of what is buffered */
            static const char why[] = "a record of the action log was lost";
            uint8_t h[5] = {'N', (uint8_t)(sizeof why - 1), 0, 0, 0};
            if (vrift_write_all(fd, h, 5) == 0 && vrift_write_all(fd, why, sizeof why - 1) == 0) lost = 0;
        }
        vrift_write_all(fd, buf, used);
        if (extra_len) vrift_write_all(fd, extra, extra_len);
        syscall(SYS_close, fd);
    }
    /* A log that cannot be written leaves the action without this process's 'Z': the
     * daemon then refuses to cache it. */
    used = 0;
    errno = saved;
}

void vrift_rec_flush(void) {
    if (!vrift_recording || vrift_raw_getpid() != vrift_pid) return;
    vrift_spin_lock(&lock_word);
    flush_locked(NULL, 0);
    vrift_spin_unlock(&lock_word);
}

void vrift_rec_bytes(char kind, const void *payload, size_t len) {
    if (!vrift_recording) return;
    if (inside) { /* a signal handler interrupted a record of this thread */
        lost = 1;
        return;
    }
    inside = 1;
    uint8_t h[5] = {(uint8_t)kind, (uint8_t)len, (uint8_t)(len >> 8), (uint8_t)(len >> 16), (uint8_t)(len >> 24)};
    int vforked = vrift_raw_getpid() != vrift_pid;
    vrift_spin_lock(&lock_word);
    if (used + 5 + len > sizeof buf) {
        if (vforked) {
            lost = 1;
            goto out;
        }
        flush_locked(NULL, 0);
    }
    if (5 + len > sizeof buf) {
        /* one record larger than the buffer (a long output chunk): straight to the file */
        uint8_t *tmp = buf; /* empty after the flush above */
        memcpy(tmp, h, 5);
        used = 5;
        flush_locked(payload, len);
        goto out;
    }
    memcpy(buf + used, h, 5);
    memcpy(buf + used + 5, payload, len);
    used += 5 + len;
out:
    vrift_spin_unlock(&lock_word);
    inside = 0;
}

/* Library state, kernel views of the process and the two harmless devices are not inputs. */
static int ignored(const char *abs, size_t n) {
    if (n >= 6 && (memcmp(abs, "/proc/", 6) == 0 || memcmp(abs, "/sys/", 5) == 0)) return 1;
    if (n == 5 && (memcmp(abs, "/proc", 5) == 0)) return 1;
    if (n == 9 && (memcmp(abs, "/dev/null", 9) == 0 || memcmp(abs, "/dev/zero", 9) == 0)) return 1;
    size_t rl = vrift_root_len;
    if (rl && n >= rl + 7 && memcmp(abs, vrift_root, rl) == 0 && memcmp(abs + rl, "/.vrift", 7) == 0 &&
        (n == rl + 7 || abs[rl + 7] == '/'))
        return 1;
    return 0;
}

/* Absolute, without "." components, repeated or trailing slashes.  ".." is kept: removing it
 * lexically is wrong after a symlink, and the daemon resolves symlinks anyway. */
int vrift_rec_absolute(int dirfd, const char *path, char *out) {
    if (!path || !*path) return -1;
    char tmp[VRIFT_PATH_MAX];
    size_t n = 0;
    if (path[0] != '/') {
        long c = -1;
        if (dirfd == AT_FDCWD) {
            c = vrift_cwd_copy(tmp);
            if (c < 0 && vrift_getcwd(tmp, sizeof tmp)) c = (long)strlen(tmp);
        } else {
            char link[32] = "/proc/self/fd/";
            size_t k = 14;
            k += vrift_put_dec(link + k, (uint64_t)(unsigned)dirfd);
            link[k] = '\0';
            c = readlink(link, tmp, sizeof tmp - 1);
        }
        if (c < 0 || (c > 0 && tmp[0] != '/')) return -1;
        n = (size_t)c;
        if (n == 1) n = 0;
    }
    const char *p = path;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *s = p;
        while (*p && *p != '/') p++;
        size_t cl = (size_t)(p - s);
        if (cl == 1 && s[0] == '.') continue;
        if (n + 1 + cl >= sizeof tmp) return -1;
        tmp[n++] = '/';
        memcpy(tmp + n, s, cl);
        n += cl;
    }
    if (n == 0) tmp[n++] = '/';
    memcpy(out, tmp, n);
    out[n] = '\0';
    return 0;
}

void vrift_rec_abs(char kind, const char *abs) {
    size_t n = strlen(abs);
    if (ignored(abs, n)) return;
    vrift_rec_bytes(kind, abs, n);
}

void vrift_rec_path(char kind, int dirfd, const char *path) {
    int saved = errno;
    char abs[VRIFT_PATH_MAX];
    if (vrift_rec_absolute(dirfd, path, abs) == 0) {
        vrift_rec_abs(kind, abs);
    } else if (kind == 'R' || kind == 'W' || kind == 'D' || kind == 'U' || kind == 'S') {
        /* an input or output we cannot name: not seen whole */
        vrift_rec_uncacheable("path not resolvable:", path ? path : "(null)");
    }
    errno = saved;
}

void vrift_rec_fd(char kind, int fd) {
    int saved = errno;
    char link[32] = "/proc/self/fd/", abs[VRIFT_PATH_MAX];
    size_t k = 14;
    k += vrift_put_dec(link + k, (uint64_t)(unsigned)fd);
    link[k] = '\0';
    ssize_t r = readlink(link, abs, sizeof abs - 1);
    if (r > 0 && abs[0] == '/') {
        abs[r] = '\0';
        vrift_rec_abs(kind, abs);
    } else {
        vrift_rec_uncacheable("file descriptor without a path", NULL);
    }
    errno = saved;
}

void vrift_rec_uncacheable(const char *what, const char *detail) {
    char line[512];
    size_t n = strnlen(what, 200);
    memcpy(line, what, n);
    if (detail) {
        size_t d = strnlen(detail, sizeof line - n - 2);
        line[n++] = ' ';
        memcpy(line + n, detail, d);
        n += d;
    }
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r') line[i] = ' ';
    vrift_rec_bytes('N', line, n);
    vrift_action_wall();
}

void vrift_rec_time(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    uint8_t v[8];
    for (int i = 0; i < 8; i++) v[i] = (uint8_t)(ns >> (8 * i));
    vrift_rec_bytes('T', v, 8);
}

int vrift_rec_start(const char *action_dir, size_t len) {
    if (len + 40 >= sizeof dir) return -1;
    memcpy(dir, action_dir, len);
    dir[len] = '\0';
    dir_len = len;
    file_pid = 0;
    used = 0;
    vrift_recording = 1;
    return 0;
}

void vrift_rec_atfork_child(void) {
    /* what is buffered is the parent's to write */
    vrift_spin_reset(&lock_word);
    used = 0;
    file_pid = 0;
    inside = 0;
    memset(seen, 0, sizeof seen); /* what the parent wrote is in the parent's log */
}

void vrift_rec_done(int status) {
    if (!vrift_recording || vrift_raw_getpid() != vrift_pid) return;
    uint8_t v[4] = {(uint8_t)status, (uint8_t)(status >> 8), (uint8_t)(status >> 16), (uint8_t)(status >> 24)};
    vrift_rec_bytes('Z', v, 4);
    vrift_rec_flush();
    vrift_recording = 0; /* nothing after 'Z' */
}

/* ------------------------------------------------------------------ hooks */

static int harmless_device(const struct stat *st) {
    return S_ISCHR(st->st_mode) && major(st->st_rdev) == 1 && (minor(st->st_rdev) == 3 || minor(st->st_rdev) == 5);
}

/* Set by vrift_rec_open_before for the open that follows in this thread. */
static __thread int absent_before;

/* Before a write-open that keeps content (O_APPEND, or no O_TRUNC; not O_EXCL, which creates the
 * file fresh or fails): what is written lands after what was there.  When nothing was there,
 * that absence is an input ('B'): `echo run >> log` is replayed only where log is absent again
 * (an existing file is read-modify-write: 'R' in vrift_rec_open). */
void vrift_rec_open_before(int dirfd, const char *path, int flags) {
    absent_before = 0;
    if ((flags & O_ACCMODE) == O_RDONLY || (flags & (O_TRUNC | O_EXCL)) || !(flags & O_CREAT) || !path) return;
    int saved = errno;
    struct stat st;
    if (syscall(SYS_newfstatat, dirfd, path, &st, 0) != 0 && errno == ENOENT) {
        absent_before = 1;
        vrift_rec_path('B', dirfd, path);
    }
    errno = saved;
}

void vrift_rec_open(int dirfd, const char *path, int flags, int fd) {
    int saved = errno;
    int was_absent = absent_before;
    absent_before = 0;
    if (fd < 0) {
        if (saved == ENOENT || saved == ENOTDIR) vrift_rec_path('A', dirfd, path);
        errno = saved;
        return;
    }
    if (flags & O_PATH) goto out;
    struct stat st;
    if (fstat(fd, &st) != 0) goto out;
    int writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
    if (S_ISREG(st.st_mode)) {
        /* kept content (append, r+) is an input of what is written */
        if (!writing || (!(flags & (O_TRUNC | O_EXCL)) && (st.st_size > 0 || !was_absent)))
            vrift_rec_path('R', dirfd, path);
        if (writing) vrift_rec_path('W', dirfd, path);
    } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
        if (!harmless_device(&st)) vrift_rec_uncacheable("device", path);
    } else if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) {
        vrift_rec_uncacheable(S_ISFIFO(st.st_mode) ? "named pipe" : "socket", path);
    }
    /* directories: listing them is recorded by opendir/fdopendir */
out:
    errno = saved;
}

/* An answer about a path that exists (docs/cache.md, 'S'): the daemon records its type, mode,
 * size and mtime as the action left them.  `how`: 'f' stat (follows a final symlink), 'l'
 * lstat/readlink, 'a' the access family (permission bits asked), 'm' mkdir's EEXIST. */
void vrift_rec_stat(int dirfd, const char *path, char how) {
    if (!path || !*path) return; /* AT_EMPTY_PATH: the fd's own file, seen at its open */
    int saved = errno;
    char rec[VRIFT_PATH_MAX + 1];
    rec[0] = how;
    if (vrift_rec_absolute(dirfd, path, rec + 1) != 0) {
        vrift_rec_uncacheable("path not resolvable:", path);
        errno = saved;
        return;
    }
    size_t n = strlen(rec + 1);
    if (!ignored(rec + 1, n)) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i <= n; i++) h = (h ^ (uint8_t)rec[i]) * 1099511628211ull;
        h |= 1; /* 0 marks an empty slot */
        uint64_t *slot = &seen[h % SEEN_SLOTS];
        if (*slot != h) {
            *slot = h;
            vrift_rec_bytes('S', rec, n + 1);
        }
    }
    errno = saved;
}

void vrift_rec_probe(int dirfd, const char *path, int result, char how) {
    int e = errno;
    if (result == 0) {
        vrift_rec_stat(dirfd, path, how);
    } else if (e == ENOENT || e == ENOTDIR) {
        vrift_rec_path('A', dirfd, path);
    } else if (e == EACCES || e == EPERM || e == ELOOP || e == EROFS || e == ETXTBSY) {
        /* it exists, and the answer hangs on its mode (`[ -x tool ]` false): an observation */
        vrift_rec_stat(dirfd, path, how);
    }
    errno = e;
}
