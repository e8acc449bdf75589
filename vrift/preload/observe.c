/*
 * observe.c — the interposers that only matter while an action records (docs/cache.md,
 * "Recording in the preload library"): reads of stdin, sockets other than the daemon's,
 * randomness, directory listings, symlink reads, realpath and the mkstemp family.  Outside
 * recording each is one predictable branch in front of the real call.
 */
#include "vrift_preload.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

EXPORT ssize_t read(int fd, void *b, size_t n) {
    if (UNLIKELY(vrift_recording) && fd == 0) vrift_stdin_read();
    if (REAL(read)) return vrift_real.read(fd, b, n);
    return syscall(SYS_read, fd, b, n);
}

EXPORT ssize_t __read_chk(int fd, void *b, size_t n, size_t buflen) {
    if (UNLIKELY(vrift_recording) && fd == 0) vrift_stdin_read();
    if (REAL(__read_chk)) return vrift_real.__read_chk(fd, b, n, buflen);
    return syscall(SYS_read, fd, b, n);
}

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) {
    if (UNLIKELY(vrift_recording) && fd == 0) vrift_stdin_read();
    if (REAL(readv)) return vrift_real.readv(fd, iov, cnt);
    return syscall(SYS_readv, fd, iov, cnt);
}

EXPORT ssize_t pread(int fd, void *b, size_t n, off_t off) {
    if (UNLIKELY(vrift_recording) && fd == 0) vrift_stdin_read();
    if (REAL(pread)) return vrift_real.pread(fd, b, n, off);
    return syscall(SYS_pread64, fd, b, n, off);
}

EXPORT ssize_t pread64(int fd, void *b, size_t n, off_t off) {
    if (UNLIKELY(vrift_recording) && fd == 0) vrift_stdin_read();
    if (REAL(pread64)) return vrift_real.pread64(fd, b, n, off);
    return syscall(SYS_pread64, fd, b, n, off);
}

static int own_socket(const struct sockaddr *a, socklen_t len) {
    if (!a || a->sa_family != AF_UNIX || !vrift_socket_path[0]) return 0;
    const struct sockaddr_un *u = (const struct sockaddr_un *)a;
    size_t n = strnlen(vrift_socket_path, sizeof u->sun_path);
    return len >= offsetof(struct sockaddr_un, sun_path) + n && strncmp(u->sun_path, vrift_socket_path, n) == 0 &&
           (len == offsetof(struct sockaddr_un, sun_path) + n || u->sun_path[n] == '\0');
}

EXPORT int connect(int fd, const struct sockaddr *a, socklen_t len) {
    if (UNLIKELY(vrift_recording) && !own_socket(a, len)) vrift_rec_uncacheable("socket connect", NULL);
    if (REAL(connect)) return vrift_real.connect(fd, a, len);
    return (int)syscall(SYS_connect, fd, a, len);
}

EXPORT int bind(int fd, const struct sockaddr *a, socklen_t len) {
    if (UNLIKELY(vrift_recording)) vrift_rec_uncacheable("socket bind", NULL);
    if (REAL(bind)) return vrift_real.bind(fd, a, len);
    return (int)syscall(SYS_bind, fd, a, len);
}

EXPORT ssize_t sendto(int fd, const void *b, size_t n, int flags, const struct sockaddr *a, socklen_t len) {
    if (UNLIKELY(vrift_recording) && a) vrift_rec_uncacheable("socket sendto", NULL);
    if (REAL(sendto)) return vrift_real.sendto(fd, b, n, flags, a, len);
    return syscall(SYS_sendto, fd, b, n, flags, a, len);
}

EXPORT ssize_t getrandom(void *b, size_t n, unsigned int flags) {
    if (UNLIKELY(vrift_recording)) vrift_rec_uncacheable("getrandom", NULL);
    if (REAL(getrandom)) return vrift_real.getrandom(b, n, flags);
    return syscall(SYS_getrandom, b, n, flags);
}

EXPORT int getentropy(void *b, size_t n) {
    if (UNLIKELY(vrift_recording)) vrift_rec_uncacheable("getentropy", NULL);
    if (REAL(getentropy)) return vrift_real.getentropy(b, n);
    return syscall(SYS_getrandom, b, n, 0) == (long)n ? 0 : -1;
}

EXPORT DIR *opendir(const char *name) {
    DIR *d = REAL(opendir) ? vrift_real.opendir(name) : NULL;
    if (UNLIKELY(vrift_recording) && d) vrift_rec_path('D', AT_FDCWD, name);
    return d;
}

EXPORT DIR *fdopendir(int fd) {
    DIR *d = REAL(fdopendir) ? vrift_real.fdopendir(fd) : NULL;
    if (UNLIKELY(vrift_recording) && d) vrift_rec_fd('D', fd);
    return d;
}

/* A symlink's target is an input ('S' with flavour 'l': the daemon records the target); the
 * answer "not a symlink" (EINVAL) too. */
static void link_seen(int dirfd, const char *path, ssize_t r) {
    int e = errno;
    if (dirfd == AT_FDCWD) vrift_cwd_link(path); /* readlink("/proc/self/cwd") reads the cwd */
    if (r >= 0 || e == EINVAL || e == EACCES || e == ELOOP) vrift_rec_stat(dirfd, path, 'l');
    else if (e == ENOENT || e == ENOTDIR) vrift_rec_path('A', dirfd, path);
    errno = e;
}

EXPORT ssize_t readlink(const char *path, char *b, size_t n) {
    ssize_t r = REAL(readlink) ? vrift_real.readlink(path, b, n) : syscall(SYS_readlinkat, AT_FDCWD, path, b, n);
    if (UNLIKELY(vrift_recording)) link_seen(AT_FDCWD, path, r);
    return r;
}

EXPORT ssize_t readlinkat(int dirfd, const char *path, char *b, size_t n) {
    ssize_t r = REAL(readlinkat) ? vrift_real.readlinkat(dirfd, path, b, n) : syscall(SYS_readlinkat, dirfd, path, b, n);
    if (UNLIKELY(vrift_recording)) link_seen(dirfd, path, r);
    return r;
}

/* realpath() resolves through libc's internal lstat/readlink, which no interposer sees: its
 * answer hangs on every component of the name and of the result, so each is an 'S' ('l':
 * a symlink's target, a directory's type).  The library's own calls use REAL(realpath). */
static void realpath_seen(const char *path, const char *r) {
    int e = errno;
    vrift_cwd_realpath(path);
    if (!r) {
        /* a name that does not resolve: its absence is the input (its components may never
         * have existed, so none is an 'S') */
        if ((e == ENOENT || e == ENOTDIR) && path) vrift_rec_path('A', AT_FDCWD, path);
        errno = e;
        return;
    }
    char abs[VRIFT_PATH_MAX];
    const char *names[2] = {NULL, r};
    if (path && vrift_rec_absolute(AT_FDCWD, path, abs) == 0) names[0] = abs;
    else if (path) vrift_rec_uncacheable("path not resolvable:", path);
    for (int k = 0; k < 2; k++) {
        const char *n = names[k];
        if (!n || n[0] != '/') continue;
        char prefix[VRIFT_PATH_MAX];
        size_t len = strlen(n);
        if (len >= sizeof prefix) continue;
        for (size_t i = 1; i <= len; i++) {
            if (i < len && n[i] != '/') continue;
            memcpy(prefix, n, i);
            prefix[i] = '\0';
            vrift_rec_stat(AT_FDCWD, prefix, 'l');
        }
    }
    errno = e;
}

EXPORT char *realpath(const char *path, char *resolved) {
    char *r = REAL(realpath) ? vrift_real.realpath(path, resolved) : (errno = ENOSYS, NULL);
    if (UNLIKELY(vrift_recording)) realpath_seen(path, r);
    return r;
}

EXPORT char *canonicalize_file_name(const char *path) {
    /* glibc's own is realpath(path, NULL) through an internal alias */
    char *r = REAL(realpath) ? vrift_real.realpath(path, NULL) : (errno = ENOSYS, NULL);
    if (UNLIKELY(vrift_recording)) realpath_seen(path, r);
    return r;
}

/* mkstemp and friends open through libc's internal open(): the name they made is written
 * here, and its later unlink must not look like the removal of a file the action found. */
#define MKSTEMP(name, params, args)                                           \
    EXPORT int name params {                                                   \
        if (UNLIKELY(!REAL(name))) {                                          \
            errno = ENOSYS;                                                    \
            return -1;                                                         \
        }                                                                      \
        int fd = vrift_real.name args;                                             \
        if (UNLIKELY(vrift_recording) && fd >= 0) vrift_rec_path('W', AT_FDCWD, tmpl); \
        return fd;                                                             \
    }

MKSTEMP(mkstemp, (char *tmpl), (tmpl))
MKSTEMP(mkstemp64, (char *tmpl), (tmpl))
MKSTEMP(mkostemp, (char *tmpl, int flags), (tmpl, flags))
MKSTEMP(mkostemp64, (char *tmpl, int flags), (tmpl, flags))
MKSTEMP(mkstemps, (char *tmpl, int suffixlen), (tmpl, suffixlen))
MKSTEMP(mkstemps64, (char *tmpl, int suffixlen), (tmpl, suffixlen))
MKSTEMP(mkostemps, (char *tmpl, int suffixlen, int flags), (tmpl, suffixlen, flags))
MKSTEMP(mkostemps64, (char *tmpl, int suffixlen, int flags), (tmpl, suffixlen, flags))

EXPORT char *mkdtemp(char *tmpl) {
    char *r = REAL(mkdtemp) ? vrift_real.mkdtemp(tmpl) : NULL;
    if (UNLIKELY(vrift_recording) && r) vrift_rec_path('W', AT_FDCWD, r);
    return r;
}
