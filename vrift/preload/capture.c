/*
 * capture.c — the action's stdout and stderr (docs/cache.md, "stdout and stderr").
 *
 * printf and friends write through libc's internal write(), which no interposer sees, so
 * the root puts a channel between the tree and the destination instead: a pseudo-terminal
 * where fd 1/2 is a terminal (isatty, line buffering and colours stay as they were), a pipe
 * otherwise.  When fd 1 and 2 are one destination (a terminal, `2>&1`) they share ONE
 * channel, so the kernel keeps the order of the writes across them.  A relay process (an
 * orphan nobody in the tree can wait for, in its own session, holding nothing else) copies what arrives to
 * the original destination at once and appends it, framed by stream, to a record file.  At
 * the root's end the root hands its fds 1/2 back to the destination, asks the relay to read
 * what is left (a read of an empty pty or pipe returns only once the kernel has delivered
 * every byte written before), and turns the record file into 'O'/'E' records.
 *
 * The relay runs only raw system calls on memory it owns; it ends when every writer of its
 * channels has gone (a process left in the background keeps it, and its output, alive).
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTPUT_MAX (512u * 1024u) /* the daemon stores no entry with more output than this */
#define FRAME_OVER 0xff           /* record file: the output exceeded OUTPUT_MAX, recording stopped */
#define FRAME_LOST 0x00           /* record file: a destination refused the output */
#define DRAIN_READS 64            /* reads per channel at the root's end: a background writer
                                     that never stops must not hold the root */

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

/* The shape of fd 0/1/2 seen at the root's start (part of the key: what the tool sees). */
static struct shape {
    int known;
    int open[2];              /* fd 1, fd 2 */
    int tty[2];
    int merged;               /* fd 1 and 2 are one destination */
    struct termios term[2];
    struct winsize ws[2];
    int in_tty;
    struct winsize in_ws;
} shape;

/* The root's side: the original fd 1/2, the control socket to the relay, the record file;
 * close-on-exec except across an exec of the root itself. */
enum { ORIG_OUT, ORIG_ERR, CTL, REC, NFDS };
static int cap_fds[NFDS] = {-1, -1, -1, -1};
static dev_t cap_dev[NFDS];
static ino_t cap_ino[NFDS];

static int raw_fstat(int fd, struct stat *st) {
    return (int)syscall(SYS_fstat, fd, st);
}

static void raw_close(int fd) {
    if (fd >= 0) syscall(SYS_close, fd);
}

/* ------------------------------------------------------------------ the shape */

static void learn_shape(void) {
    if (shape.known) return;
    shape.known = 1;
    struct stat st[2];
    for (int i = 0; i < 2; i++) {
        shape.open[i] = raw_fstat(i + 1, &st[i]) == 0;
        shape.tty[i] = tcgetattr(i + 1, &shape.term[i]) == 0;
        if (shape.tty[i] && ioctl(i + 1, TIOCGWINSZ, &shape.ws[i]) != 0) memset(&shape.ws[i], 0, sizeof shape.ws[i]);
    }
    shape.merged = shape.open[0] && shape.open[1] && st[0].st_dev == st[1].st_dev && st[0].st_ino == st[1].st_ino &&
                   st[0].st_rdev == st[1].st_rdev;
    struct termios t;
    shape.in_tty = tcgetattr(0, &t) == 0; /* programs size their output by stdin's terminal too (cc1 does) */
    if (shape.in_tty && ioctl(0, TIOCGWINSZ, &shape.in_ws) != 0) memset(&shape.in_ws, 0, sizeof shape.in_ws);
}

static size_t put_tty(char *p, const struct winsize *ws) {
    size_t n = 0;
    memcpy(p, "tty,", 4);
    n += 4;
    n += vrift_put_dec(p + n, ws->ws_col);
    p[n++] = 'x';
    n += vrift_put_dec(p + n, ws->ws_row);
    return n;
}

/* "tty,COLSxROWS", "pipe" (what the tool sees of any other destination) or "none" (closed). */
static size_t put_dest(char *p, int i) {
    if (!shape.open[i]) return memcpy(p, "none", 4), 4;
    if (!shape.tty[i]) return memcpy(p, "pipe", 4), 4;
    return put_tty(p, &shape.ws[i]);
}

size_t vrift_capture_describe(char *out, size_t cap) {
    learn_shape();
    if (cap < 128) return 0;
    size_t n = 0;
    memcpy(out, "out=", 4);
    n = 4;
    n += put_dest(out + n, 0);
    memcpy(out + n, " err=", 5);
    n += 5;
    if (shape.merged) memcpy(out + n, "out", 3), n += 3;
    else n += put_dest(out + n, 1);
    if (shape.in_tty) {
        memcpy(out + n, " in=", 4);
        n += 4;
        n += put_tty(out + n, &shape.in_ws);
    }
    return n;
}

int vrift_capture_terminal(void) {
    learn_shape();
    return shape.tty[0] || shape.tty[1] || shape.in_tty;
}

/* ------------------------------------------------------------------ replay (a hit) */

int vrift_capture_replay(const uint8_t *body, size_t len, uint16_t out_tag, uint16_t err_tag) {
    for (size_t off = 0; off + 6 <= len;) {
        uint16_t tag = (uint16_t)(body[off] | body[off + 1] << 8);
        uint32_t n = (uint32_t)body[off + 2] | (uint32_t)body[off + 3] << 8 | (uint32_t)body[off + 4] << 16 |
                     (uint32_t)body[off + 5] << 24;
        if (n > len - off - 6) return -1;
        if ((tag == out_tag || tag == err_tag) && n && vrift_write_all(tag == out_tag ? 1 : 2, body + off + 6, n) != 0)
            return -1;
        off += 6 + n;
    }
    return 0;
}

/* ------------------------------------------------------------------ the relay */

static uint8_t relay_buf[65536];

static int relay_write(int fd, const uint8_t *p, size_t n) {
    while (n) {
        long w = syscall(SYS_write, fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { /* a non-blocking destination: wait, as the writer would have */
            struct pollfd pf = {fd, POLLOUT, 0};
            syscall(SYS_ppoll, &pf, 1, NULL, NULL, 0);
            continue;
        }
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void relay_frame(int rec, int stream, const uint8_t *p, size_t n) {
    uint8_t h[5] = {(uint8_t)stream, (uint8_t)n, (uint8_t)(n >> 8), (uint8_t)(n >> 16), (uint8_t)(n >> 24)};
    struct iovec iov[2] = {{h, sizeof h}, {(void *)p, n}};
    long w; /* a short write of a local file: the root sees a torn frame and does not cache */
    do w = syscall(SYS_writev, rec, iov, n ? 2 : 1);
    while (w < 0 && errno == EINTR);
}

struct relay {
    int in[2];       /* channel read ends (in[1] = -1 when merged) */
    int dest[2];     /* 1, 2 */
    int ctl, rec;
    int recording;
    size_t recorded;
};

/* One read of channel i; 0 when it is empty for now, -1 when it has ended. */
static int relay_once(struct relay *r, int i) {
    long n = syscall(SYS_read, r->in[i], relay_buf, sizeof relay_buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
    if (n <= 0) { /* EOF (pipe) or EIO (pty): no writer is left */
        raw_close(r->in[i]);
        r->in[i] = -1;
        return -1;
    }
    if (relay_write(r->dest[i], relay_buf, (size_t)n) != 0) {
        /* the destination refuses (its reader is gone): so does the channel now, as the
           destination would have for the writers */
        if (r->recording) relay_frame(r->rec, FRAME_LOST, NULL, 0);
        raw_close(r->in[i]);
        r->in[i] = -1;
        return -1;
    }
    if (r->recording) {
        if (r->recorded + (size_t)n > OUTPUT_MAX) {
            relay_frame(r->rec, FRAME_OVER, NULL, 0);
            r->recording = 0;
        } else {
            relay_frame(r->rec, i + 1, relay_buf, (size_t)n);
            r->recorded += (size_t)n;
        }
    }
    return 1;
}

static void relay_close_others(const int *keep, int nkeep) {
    int k[8];
    int n = 0;
    for (int i = 0; i < nkeep; i++)
        if (keep[i] >= 0) k[n++] = keep[i];
    for (int i = 1; i < n; i++) /* insertion sort: a handful of fds */
        for (int j = i; j > 0 && k[j - 1] > k[j]; j--) {
            int t = k[j];
            k[j] = k[j - 1];
            k[j - 1] = t;
        }
    unsigned lo = 0;
    for (int i = 0; i <= n; i++) {
        unsigned hi = i < n ? (unsigned)k[i] : ~0u;
        if (hi > lo && syscall(SYS_close_range, lo, hi - 1, 0) != 0)
            for (unsigned fd = lo; fd < hi && fd < 65536; fd++) syscall(SYS_close, fd);
        if (i < n) lo = (unsigned)k[i] + 1;
    }
}

static void relay_run(struct relay *r) __attribute__((noreturn));
static void relay_run(struct relay *r) {
    syscall(SYS_setsid); /* no terminal signals: it ends when its writers have gone */
    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    static const int sigs[] = {SIGPIPE, SIGHUP, SIGINT, SIGQUIT, SIGTSTP, SIGTTOU, SIGTTIN};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) syscall(SYS_rt_sigaction, sigs[i], &ign, NULL, 8);
    int keep[] = {r->in[0], r->in[1], r->dest[0], r->dest[1], r->ctl, r->rec};
    relay_close_others(keep, 6);
    for (int i = 0; i < 2; i++)
        if (r->in[i] >= 0) {
            long fl = syscall(SYS_fcntl, r->in[i], F_GETFL);
            syscall(SYS_fcntl, r->in[i], F_SETFL, fl | O_NONBLOCK);
        }
    /* until every writer has gone and the root has had its answer (a program may close its
       fds 1/2 before the root ends, as coreutils do at exit) */
    while (r->in[0] >= 0 || r->in[1] >= 0 || r->ctl >= 0) {
        struct pollfd pf[3];
        int map[3], n = 0;
        for (int i = 0; i < 2; i++)
            if (r->in[i] >= 0) pf[n] = (struct pollfd){r->in[i], POLLIN, 0}, map[n++] = i;
        if (r->ctl >= 0) pf[n] = (struct pollfd){r->ctl, POLLIN, 0}, map[n++] = -1;
        if (syscall(SYS_ppoll, pf, n, NULL, NULL, 0) < 0) continue;
        for (int j = 0; j < n; j++) {
            if (!pf[j].revents) continue;
            if (map[j] >= 0) {
                while (r->in[map[j]] >= 0 && relay_once(r, map[j]) > 0) {
                }
                continue;
            }
            char c;
            long got = syscall(SYS_read, r->ctl, &c, 1);
            if (got < 0 && errno == EINTR) continue;
            if (got == 1) {
                /* the root ends: whatever its finished processes wrote is in the channels now,
                   and a channel that still has a writer has a process of the tree alive */
                int alive = 0;
                for (int i = 0; i < 2; i++) {
                    int budget = DRAIN_READS, got1 = 1;
                    while (r->in[i] >= 0 && budget-- && (got1 = relay_once(r, i)) > 0) {
                    }
                    alive |= r->in[i] >= 0 && got1 >= 0;
                }
                r->recording = 0;
                c = alive ? 'B' : 'A';
                syscall(SYS_sendto, r->ctl, &c, 1, MSG_NOSIGNAL, NULL, 0);
            }
            raw_close(r->ctl); /* one drain per action; EOF: the root is gone */
            r->ctl = -1;
        }
    }
    syscall(SYS_exit_group, 0);
    __builtin_unreachable();
}

/* ------------------------------------------------------------------ start */

static int remember(int i, int fd) {
    struct stat st;
    if (fd < 0 || raw_fstat(fd, &st) != 0) return -1;
    cap_fds[i] = fd;
    cap_dev[i] = st.st_dev;
    cap_ino[i] = st.st_ino;
    return 0;
}

static int still_ours(int i) {
    struct stat st;
    return cap_fds[i] >= 0 && raw_fstat(cap_fds[i], &st) == 0 && st.st_dev == cap_dev[i] && st.st_ino == cap_ino[i];
}

/* A pseudo-terminal like the destination `i`: its settings with output processing off (the
 * real terminal applies it once, when the relay writes) and its window size. */
static int open_pty(int i, int *master, int *slave) {
    *master = (int)syscall(SYS_openat, AT_FDCWD, "/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
    if (*master < 0) return -1;
    int unlock = 0;
    if (ioctl(*master, TIOCSPTLCK, &unlock) != 0) return -1;
    *slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*slave < 0) {
        unsigned n;
        char name[40] = "/dev/pts/";
        if (ioctl(*master, TIOCGPTN, &n) != 0) return -1;
        name[9 + vrift_put_dec(name + 9, n)] = '\0';
        *slave = (int)syscall(SYS_openat, AT_FDCWD, name, O_RDWR | O_NOCTTY | O_CLOEXEC, 0);
        if (*slave < 0) return -1;
    }
    struct termios t = shape.term[i];
    t.c_oflag &= ~(tcflag_t)OPOST;
    if (tcsetattr(*slave, TCSANOW, &t) != 0) return -1;
    if (shape.ws[i].ws_col || shape.ws[i].ws_row) ioctl(*slave, TIOCSWINSZ, &shape.ws[i]);
    return 0;
}

static int above(int fd) {
    if (fd < 0) return -1;
    int n = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, 100);
    raw_close(fd);
    return n;
}

int vrift_capture_start(const char *action_dir, size_t action_dir_len) {
    learn_shape();
    int rd[2] = {-1, -1}, wr[2] = {-1, -1}, ctl[2] = {-1, -1}, rec = -1, orig[2] = {-1, -1};
    int ok = 0;
    char name[VRIFT_PATH_MAX];
    if (action_dir_len + 16 > sizeof name) return -1;
    for (int i = 0; i < (shape.merged ? 1 : 2); i++) {
        if (!shape.open[i]) goto out;
        if (shape.tty[i]) {
            if (open_pty(i, &rd[i], &wr[i]) != 0) goto out;
        } else {
            int p[2];
            if (syscall(SYS_pipe2, p, O_CLOEXEC) != 0) goto out;
            rd[i] = p[0];
            wr[i] = p[1];
        }
    }
    memcpy(name, action_dir, action_dir_len);
    memcpy(name + action_dir_len, "/streams", 9);
    rec = (int)syscall(SYS_openat, AT_FDCWD, name, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (rec < 0) goto out;
    syscall(SYS_unlinkat, AT_FDCWD, name, 0);
    if (syscall(SYS_socketpair, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0) goto out;
    orig[0] = (int)syscall(SYS_fcntl, 1, F_DUPFD_CLOEXEC, 100);
    orig[1] = (int)syscall(SYS_fcntl, 2, F_DUPFD_CLOEXEC, 100);
    if (orig[0] < 0 || orig[1] < 0) goto out;

    /* The relay: nobody's child in the tree.  A go-between (a clone that signals nothing when
       it ends, so no wait() of the program's can take it) starts the relay and exits at once;
       the orphaned relay is adopted, and reaped, by init or the nearest subreaper.  Were the
       relay the root's own child, a root that waits for every child with __WALL (strace -f,
       gdb) would wait for it while it waits for the root to close its output. */
    long mid = syscall(SYS_clone, 0, 0, 0, 0, 0);
    if (mid < 0) goto out;
    if (mid == 0) {
        long relay = syscall(SYS_clone, 0, 0, 0, 0, 0);
        if (relay == 0) {
            struct relay r = {{rd[0], rd[1]}, {1, shape.merged ? 1 : 2}, ctl[1], rec, 1, 0};
            relay_run(&r);
        }
        syscall(SYS_exit_group, relay < 0 ? 1 : 0);
    }
    int mid_status = 0;
    long waited;
    do waited = syscall(SYS_wait4, mid, &mid_status, __WALL, 0);
    while (waited < 0 && errno == EINTR);
    if (waited != mid || !WIFEXITED(mid_status) || WEXITSTATUS(mid_status) != 0) goto out;

    /* The tree writes into the channels from now on. */
    if (syscall(SYS_dup2, wr[0], 1) != 1 || syscall(SYS_dup2, shape.merged ? wr[0] : wr[1], 2) != 2) {
        syscall(SYS_dup2, orig[0], 1);
        syscall(SYS_dup2, orig[1], 2);
        goto out;
    }
    ctl[0] = above(ctl[0]);
    rec = above(rec);
    if (remember(ORIG_OUT, orig[0]) != 0 || remember(ORIG_ERR, orig[1]) != 0 || remember(CTL, ctl[0]) != 0 ||
        remember(REC, rec) != 0)
        ok = -1;
    orig[0] = orig[1] = ctl[0] = rec = -1; /* kept */
    char v[80];
    int n = snprintf(v, sizeof v, "%d,%d,%d,%d", cap_fds[0], cap_fds[1], cap_fds[2], cap_fds[3]);
    if (ok == 0 && (n <= 0 || (size_t)n >= sizeof v || setenv("VRIFT_ACTION_CAP", v, 1) != 0)) ok = -1;
    goto done;
out:
    ok = -1;
done:
    for (int i = 0; i < 2; i++) {
        raw_close(rd[i]);
        raw_close(wr[i]);
        raw_close(orig[i]);
    }
    raw_close(ctl[0]);
    raw_close(ctl[1]);
    raw_close(rec);
    return ok;
}

void vrift_capture_cloexec(int on) {
    for (int i = 0; i < NFDS; i++) {
        if (cap_fds[i] < 0) continue;
        int fl = (int)syscall(SYS_fcntl, cap_fds[i], F_GETFD);
        if (fl >= 0) syscall(SYS_fcntl, cap_fds[i], F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
    }
}

/* After an exec of the root: the capture fds came along. */
void vrift_capture_resume(void) {
    const char *v = getenv("VRIFT_ACTION_CAP");
    int f[NFDS];
    if (!v || sscanf(v, "%d,%d,%d,%d", &f[0], &f[1], &f[2], &f[3]) != NFDS) return;
    for (int i = 0; i < NFDS; i++)
        if (remember(i, f[i]) != 0) cap_fds[i] = -1;
    vrift_capture_cloexec(1);
}

/* ------------------------------------------------------------------ the root's end */

static void drain_records(int rec) {
    uint8_t chunk[16384];
    off_t off = 0;
    int over = 0;
    vrift_rec_time();
    for (;;) {
        uint8_t h[5];
        long r = syscall(SYS_pread64, rec, h, sizeof h, off);
        if (r == 0) break;
        if (r != (long)sizeof h) {
            vrift_rec_uncacheable("the captured output was lost (a torn record)", NULL);
            return;
        }
        off += 5;
        size_t n = (size_t)h[1] | (size_t)h[2] << 8 | (size_t)h[3] << 16 | (size_t)h[4] << 24;
        if (h[0] == FRAME_OVER) over = 1;
        if (h[0] == FRAME_LOST) vrift_rec_uncacheable("output could not be passed on", NULL);
        if (h[0] != 1 && h[0] != 2) continue;
        while (n) {
            size_t want = n < sizeof chunk ? n : sizeof chunk;
            r = syscall(SYS_pread64, rec, chunk, want, off);
            if (r <= 0) {
                vrift_rec_uncacheable("the captured output was lost (a torn record)", NULL);
                return;
            }
            vrift_rec_bytes(h[0] == 1 ? 'O' : 'E', chunk, (size_t)r);
            off += r;
            n -= (size_t)r;
        }
    }
    if (over) vrift_rec_uncacheable("output too large", NULL);
}

void vrift_capture_drain(void) {
    if (cap_fds[CTL] < 0 && cap_fds[REC] < 0 && cap_fds[ORIG_OUT] < 0) return;
    int whole = 1;
    for (int i = 0; i < NFDS; i++) whole &= still_ours(i);
    if (!whole) {
        vrift_rec_uncacheable("the captured output was lost (fds closed)", NULL);
    } else {
        /* the root's own references to the channels go: the destination is fd 1/2 again */
        syscall(SYS_dup2, cap_fds[ORIG_OUT], 1);
        syscall(SYS_dup2, cap_fds[ORIG_ERR], 2);
        char c = 'D';
        long r;
        do r = syscall(SYS_sendto, cap_fds[CTL], &c, 1, MSG_NOSIGNAL, NULL, 0);
        while (r < 0 && errno == EINTR);
        do r = syscall(SYS_read, cap_fds[CTL], &c, 1);
        while (r < 0 && errno == EINTR);
        if (r != 1 || (c != 'A' && c != 'B')) {
            vrift_rec_uncacheable("the captured output was lost (the relay ended)", NULL);
        } else {
            /* a process that outlives the root (left in the background) may still write */
            if (c == 'B')
                vrift_rec_uncacheable("a process of the action did not finish:", "it held stdout/stderr after the root ended");
            drain_records(cap_fds[REC]);
        }
    }
    for (int i = 0; i < NFDS; i++) {
        raw_close(cap_fds[i]);
        cap_fds[i] = -1;
    }
}
