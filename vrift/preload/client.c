/*
 * client.c — the preload library's side of the daemon protocol (docs/protocol.md).
 * Never on the read path.  One connection per process, opened on first use, close-on-exec;
 * a forked child opens its own, a vfork child uses a throw-away one (it shares our memory).
 * HELLO is sent only before the first request that waits for a reply: the write path's
 * one-way notifications need none (the daemon knows the peer's pid from SO_PEERCRED), so a
 * compiler that only writes never waits for the daemon.
 * Every failure (no socket, refused, timeout, error frame) returns -1: the callers then
 * keep the filesystem correct without the daemon.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int conn_fd = -1;
static pid_t conn_pid;
static int conn_greeted; /* HELLO answered on conn_fd */
static int daemon_gone; /* a timeout: do not make every later close wait again */
static vrift_spinlock conn_lock;


static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Wait for `events` until the deadline; 0 ready, -1 timeout or error. */
static int wait_fd(int fd, short events, long deadline) {
    for (;;) {
        long left = deadline - now_ms();
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        struct pollfd p = {fd, events, 0};
        int r = poll(&p, 1, (int)left);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return -1;
    }
}

int vrift_io_write(int fd, const void *buf, size_t n, long deadline) {
    const char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_fd(fd, POLLOUT, deadline) != 0) return -1;
            continue;
        }
        return -1;
    }
    return 0;
}

int vrift_io_read(int fd, void *buf, size_t n, long deadline) {
    char *p = buf;
    while (n) {
        ssize_t r = recv(fd, p, n, MSG_DONTWAIT);
        if (r > 0) {
            p += r;
            n -= (size_t)r;
            continue;
        }
        if (r == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (wait_fd(fd, POLLIN, deadline) != 0) return -1;
            continue;
        }
        return -1;
    }
    return 0;
}

long vrift_deadline(void) { return now_ms() + vrift_timeout_ms; }

static int connect_socket(long deadline) {
    if (!vrift_socket_path[0]) return -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -1;
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    memcpy(a.sun_path, vrift_socket_path, strnlen(vrift_socket_path, sizeof a.sun_path - 1));
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) goto fail;
        if (wait_fd(fd, POLLOUT, deadline) != 0) goto fail;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) goto fail;
    }
    return fd;
fail:
    if (REAL(close)) vrift_real.close(fd);
    return -1;
}

/* The protocol layer (proto.c) runs one request on a connected, greeted socket. */
extern int vrift_proto_hello(int fd, long deadline);

/* Borrow the connection: returns an fd (greeted when `greet`) and whether it is a throw-away
 * one. */
int vrift_conn_acquire(long deadline, int *temporary, int greet) {
    if (daemon_gone || !vrift_socket_path[0]) return -1;
    pid_t pid = vrift_raw_getpid();
    if (pid != vrift_pid) {
        *temporary = 1;
        int fd = connect_socket(deadline);
        if (fd >= 0 && greet && vrift_proto_hello(fd, deadline) != 0) {
            vrift_real.close(fd);
            fd = -1;
        }
        return fd;
    }
    *temporary = 0;
    vrift_spin_lock(&conn_lock);
    if (conn_fd >= 0 && conn_pid == pid && (conn_greeted || !greet)) return conn_fd; /* unlocked by release */
    if (conn_fd < 0 || conn_pid != pid) {
        conn_fd = connect_socket(deadline);
        conn_pid = pid;
        conn_greeted = 0;
    }
    if (conn_fd >= 0 && greet) {
        if (vrift_proto_hello(conn_fd, deadline) != 0) {
            REAL(close)(conn_fd);
            conn_fd = -1;
        } else {
            conn_greeted = 1;
        }
    }
    if (conn_fd < 0) {
        if (errno == ETIMEDOUT) daemon_gone = 1;
        vrift_count(VRIFT_C_DAEMON_ERRORS);
        vrift_spin_unlock(&conn_lock);
        return -1;
    }
    return conn_fd;
}

/* `broken`: the request failed mid-way; the connection cannot be trusted any more. */
void vrift_conn_release(int fd, int temporary, int broken) {
    if (broken) {
        vrift_count(VRIFT_C_DAEMON_ERRORS);
        if (errno == ETIMEDOUT) daemon_gone = 1;
    }
    if (temporary) {
        REAL(close)(fd);
        return;
    }
    if (broken) {
        REAL(close)(fd);
        conn_fd = -1;
    }
    vrift_spin_unlock(&conn_lock);
}

void vrift_daemon_atfork_child(void) {
    /* the parent's connection is the parent's: the child opens its own */
    if (conn_fd >= 0 && REAL(close)) vrift_real.close(conn_fd);
    conn_fd = -1;
    conn_greeted = 0;
    vrift_spin_reset(&conn_lock);
}
