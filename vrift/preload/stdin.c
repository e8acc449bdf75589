/*
 * stdin.c — what an action reads on fd 0 (docs/cache.md, "stdin").
 *
 * A regular file behind fd 0 (`vrift wrap make < f`, `cmd < in` in a recipe) is an input like
 * any file: its path and digest.  The offset matters too: the action must have read it from
 * the start (else what it read depends on who read before it), and a replay leaves the shared
 * offset where the recorded run left it (the daemon gets the end offset with ACTION_END and
 * answers it with a hit).  A terminal or a socket is data from outside the file system:
 * uncacheable.  /dev/null and /dev/zero are nothing.
 *
 * A pipe is fine when both of its ends belong to the action (`echo 1.2.3 | tr . _`, a make
 * `$(shell …)` probe): what flows through it was produced inside, and is seen there.  A pipe
 * from outside (the build tool's stdin, `echo x | vrift wrap make`) can only reach a process of
 * the action through the root, which inherited it (fds come from the parent; a FIFO opened by
 * name or a socket is uncacheable by itself).  So the root lists the pipes it holds at its start
 * (dev:ino of every FIFO among its fds; pipe inodes are unique while the pipe is alive, and it is
 * alive while the root holds it) in VRIFT_ACTION_PIPES, and a read of fd 0 from a pipe on that
 * list is uncacheable; any other pipe was made inside the action.
 */
#include "vrift_preload.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/sendfile.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static off_t start_offset = -1; /* of fd 0 when this image started recording (a file), else -1 */
static int seen;

void vrift_stdin_start(void) {
    struct stat st;
    seen = 0;
    start_offset = -1;
    if (fstat(0, &st) == 0 && S_ISREG(st.st_mode)) start_offset = (off_t)syscall(SYS_lseek, 0, 0, SEEK_CUR);
}

/* The action's root, at its start: the pipes it inherited, as VRIFT_ACTION_PIPES
 * ("dev:ino,dev:ino", or "*" when they do not fit: every pipe counts as from outside). */
void vrift_stdin_outer_pipes(void) {
    char list[1024];
    size_t n = 0;
    int full = 0;
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (dfd < 0) {
        full = 1;
    } else {
        char d[4096];
        long got;
        while (!full && (got = syscall(SYS_getdents64, dfd, d, sizeof d)) > 0) {
            for (long off = 0; off < got;) {
                struct dirent64 *e = (struct dirent64 *)(d + off);
                off += e->d_reclen;
                if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
                int fd = atoi(e->d_name);
                struct stat st;
                if (fd == dfd || syscall(SYS_fstat, fd, &st) != 0 || !S_ISFIFO(st.st_mode)) continue;
                if (n + 48 >= sizeof list) {
                    full = 1;
                    break;
                }
                if (n) list[n++] = ',';
                n += vrift_put_dec(list + n, (uint64_t)st.st_dev);
                list[n++] = ':';
                n += vrift_put_dec(list + n, (uint64_t)st.st_ino);
            }
        }
        syscall(SYS_close, dfd);
    }
    if (full) n = 0, list[n++] = '*';
    list[n] = '\0';
    setenv("VRIFT_ACTION_PIPES", list, 1);
}

/* Did this pipe come from outside the action (on the root's list, or no list)? */
static int outer_pipe(const struct stat *st) {
    const char *p = getenv("VRIFT_ACTION_PIPES");
    if (!p || strchr(p, '*')) return 1;
    char me[48];
    size_t n = vrift_put_dec(me, (uint64_t)st->st_dev);
    me[n++] = ':';
    n += vrift_put_dec(me + n, (uint64_t)st->st_ino);
    while (*p) {
        size_t l = strcspn(p, ",");
        if (l == n && memcmp(p, me, n) == 0) return 1;
        p += l;
        if (*p) p++;
    }
    return 0;
}

/* fd 0 was read (by read/pread/readv, or by stdio: seen at exit). */
void vrift_stdin_read(void) {
    if (seen) return;
    seen = 1;
    int saved = errno;
    struct stat st;
    if (fstat(0, &st) != 0) {
        /* closed: the read failed */
    } else if (S_ISREG(st.st_mode)) {
        if (start_offset != 0)
            vrift_rec_uncacheable("read from stdin", "(a file, not from its start)");
        else
            vrift_rec_fd('R', 0);
    } else if (S_ISFIFO(st.st_mode) && !outer_pipe(&st)) {
        /* a pipe made inside the action: its writer is a process of the action */
    } else if (!(S_ISCHR(st.st_mode) && major(st.st_rdev) == 1)) {
        vrift_rec_uncacheable("read from stdin", S_ISFIFO(st.st_mode)  ? "(pipe)"
                                                 : S_ISCHR(st.st_mode) ? "(terminal or device)"
                                                                       : "(socket)");
    }
    errno = saved;
}

/* For ACTION_LOOKUP: the path behind fd 0 when it is a regular file at its start. */
int vrift_stdin_path(char *out, size_t cap) {
    struct stat st;
    if (fstat(0, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink == 0) return -1;
    if (syscall(SYS_lseek, 0, 0, SEEK_CUR) != 0) return -1;
    ssize_t n = readlink("/proc/self/fd/0", out, cap - 1);
    if (n <= 0 || out[0] != '/') return -1;
    out[n] = '\0';
    return (int)n;
}

/* For ACTION_END: where the action left the offset of its stdin file (-1: not a file). */
long long vrift_stdin_offset(void) {
    struct stat st;
    if (fstat(0, &st) != 0 || !S_ISREG(st.st_mode)) return -1;
    return (long long)syscall(SYS_lseek, 0, 0, SEEK_CUR);
}

/* After a hit: the offset as the recorded run left it, for whoever reads fd 0 next. */
void vrift_stdin_seek(unsigned long long offset) {
    struct stat st;
    if (fstat(0, &st) == 0 && S_ISREG(st.st_mode)) syscall(SYS_lseek, 0, (off_t)offset, SEEK_SET);
}

/* Copies in the kernel read their source too (coreutils' cat copies stdin with
 * copy_file_range when its output is a file). */
EXPORT ssize_t copy_file_range(int in, loff_t *in_off, int out, loff_t *out_off, size_t n, unsigned int flags) {
    if (UNLIKELY(vrift_recording) && in == 0) vrift_stdin_read();
    if (REAL(copy_file_range)) return vrift_real.copy_file_range(in, in_off, out, out_off, n, flags);
    return syscall(SYS_copy_file_range, in, in_off, out, out_off, n, flags);
}

EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t n) {
    if (UNLIKELY(vrift_recording) && in == 0) vrift_stdin_read();
    if (REAL(sendfile)) return vrift_real.sendfile(out, in, off, n);
    return syscall(SYS_sendfile, out, in, off, n);
}

EXPORT ssize_t sendfile64(int out, int in, off_t *off, size_t n) {
    if (UNLIKELY(vrift_recording) && in == 0) vrift_stdin_read();
    if (REAL(sendfile64)) return vrift_real.sendfile64(out, in, off, n);
    return syscall(SYS_sendfile, out, in, off, n);
}

EXPORT ssize_t splice(int in, loff_t *in_off, int out, loff_t *out_off, size_t n, unsigned int flags) {
    if (UNLIKELY(vrift_recording) && in == 0) vrift_stdin_read();
    if (REAL(splice)) return vrift_real.splice(in, in_off, out, out_off, n, flags);
    return syscall(SYS_splice, in, in_off, out, out_off, n, flags);
}
