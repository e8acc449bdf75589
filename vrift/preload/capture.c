/*
 * capture.c — the action's stdout and stderr (docs/cache.md, "stdout and stderr").
 *
 * The root's stdout and stderr are redirected into two unlinked capture files for the whole
 * tree; at the root's end their content becomes 'O'/'E' records and is passed on to the
 * original fds.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define OUTPUT_MAX (512u * 1024u) /* the daemon stores no entry with more output than this */

/* The capture: originals of fd 1/2 and the two capture files, all close-on-exec except
 * across an exec of the root itself. */
static int cap_fds[4] = {-1, -1, -1, -1}; /* orig out, orig err, capture out, capture err */
static dev_t cap_dev[4];
static ino_t cap_ino[4];

void vrift_capture_cloexec(int on) {
    for (int i = 0; i < 4; i++) {
        if (cap_fds[i] < 0) continue;
        int fl = fcntl(cap_fds[i], F_GETFD);
        if (fl >= 0) fcntl(cap_fds[i], F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
    }
}

static int remember(int i, int fd) {
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) return -1;
    cap_fds[i] = fd;
    cap_dev[i] = st.st_dev;
    cap_ino[i] = st.st_ino;
    return 0;
}

static int still_ours(int i) {
    struct stat st;
    return cap_fds[i] >= 0 && fstat(cap_fds[i], &st) == 0 && st.st_dev == cap_dev[i] && st.st_ino == cap_ino[i];
}

int vrift_capture_start(const char *action_dir, size_t action_dir_len) {
    for (int stream = 1; stream <= 2; stream++) {
        char name[VRIFT_PATH_MAX];
        memcpy(name, action_dir, action_dir_len);
        memcpy(name + action_dir_len, stream == 1 ? "/capture.1" : "/capture.2", 11);
        int c = (int)syscall(SYS_openat, AT_FDCWD, name, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
        if (c < 0) return -1;
        syscall(SYS_unlinkat, AT_FDCWD, name, 0);
        int orig = fcntl(stream, F_DUPFD_CLOEXEC, 100);
        int cap = fcntl(c, F_DUPFD_CLOEXEC, 100);
        syscall(SYS_close, c);
        if (orig < 0 || cap < 0 || remember(stream - 1, orig) != 0 || remember(stream + 1, cap) != 0) return -1;
        if (syscall(SYS_dup2, cap, stream) != stream) return -1;
    }
    char v[80];
    int n = snprintf(v, sizeof v, "%d,%d,%d,%d", cap_fds[0], cap_fds[1], cap_fds[2], cap_fds[3]);
    if (n <= 0 || (size_t)n >= sizeof v) return -1;
    return setenv("VRIFT_ACTION_CAP", v, 1);
}

/* After an exec of the root: the capture fds came along. */
void vrift_capture_resume(void) {
    const char *v = getenv("VRIFT_ACTION_CAP");
    int f[4];
    if (!v || sscanf(v, "%d,%d,%d,%d", &f[0], &f[1], &f[2], &f[3]) != 4) return;
    for (int i = 0; i < 4; i++)
        if (remember(i, f[i]) != 0) cap_fds[i] = -1;
    vrift_capture_cloexec(1);
}

/* The tree's output: records for the daemon, and on to where it was going. */
void vrift_capture_drain(void) {
    if (cap_fds[0] < 0 && cap_fds[2] < 0) return;
    size_t total = 0;
    for (int s = 0; s < 2; s++) {
        int orig = cap_fds[s], cap = cap_fds[s + 2];
        if (!still_ours(s + 2) || !still_ours(s)) {
            vrift_rec_uncacheable("the captured output was lost (fds closed)", NULL);
            continue;
        }
        char chunk[16384];
        off_t off = 0;
        for (;;) {
            ssize_t r = pread(cap, chunk, sizeof chunk, off);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            off += r;
            total += (size_t)r;
            if (total <= OUTPUT_MAX) {
                vrift_rec_time();
                vrift_rec_bytes(s == 0 ? 'O' : 'E', chunk, (size_t)r);
            }
            if (vrift_write_all(orig, chunk, (size_t)r) != 0) vrift_rec_uncacheable("output could not be passed on", NULL);
        }
    }
    if (total > OUTPUT_MAX) vrift_rec_uncacheable("output too large", NULL);
    /* later writers (a process that outlives the root) go to the original fds */
    if (cap_fds[0] >= 0) syscall(SYS_dup2, cap_fds[0], 1);
    if (cap_fds[1] >= 0) syscall(SYS_dup2, cap_fds[1], 2);
    for (int i = 0; i < 4; i++)
        if (cap_fds[i] >= 0) syscall(SYS_close, cap_fds[i]);
    for (int i = 0; i < 4; i++) cap_fds[i] = -1;
}
