/*
 * proto.c — the requests of docs/protocol.md that the preload library sends: the one-way
 * notifications of the write path (WRITING at an open for writing, WRITTEN once a staged file
 * is in place, CHANGED after an early publish or an in-place write), HELLO before the first
 * request that waits for its reply, INVALIDATE after a mutating call, BEGIN_WRITE.
 *
 * Off the read path, but still inside arbitrary programs' close() and rename(): no malloc,
 * no stdio.  A request is gathered from small stack pieces and sent with one sendmsg(); the
 * reply is read through a 2 KiB stack window and only the fields we use are kept (paths
 * are compared as they stream by, never copied).  Every call is bounded by
 * VRIFT_SOCKET_TIMEOUT_MS.  A failed exchange (I/O error, timeout, malformed or mismatched
 * reply, an error the protocol says closes the connection) drops the connection; an
 * in-band error answer (path rejected, not found, I/O error on the daemon's side) keeps it.
 * Either way the caller gets -1 and keeps the filesystem correct on its own.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

/* client.c */
int vrift_conn_acquire(long deadline, int *temporary, int greet);
void vrift_conn_release(int fd, int temporary, int broken);
int vrift_io_write(int fd, const void *buf, size_t n, long deadline);
int vrift_io_read(int fd, void *buf, size_t n, long deadline);
long vrift_deadline(void);

/* Paths per INVALIDATE frame: a mutating call sends a handful; more are split over frames. */
#define BATCH 64

static uint32_t next_id;
static int proto_off;     /* the daemon serves another project or speaks another version */

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* ------------------------------------------------------------------ requests */

typedef struct request {
    uint8_t head[VRP_HEADER_SIZE];
    uint8_t fh[BATCH + 2][VRP_FIELD_SIZE + 4]; /* field header, then an inline u32 value if any */
    struct iovec iov[1 + 2 * (BATCH + 2)];
    int niov, nfields;
    uint32_t body, id;
    uint16_t type;
} request;

static void req_init(request *r, uint16_t type) {
    r->type = type;
    r->niov = 1;
    r->nfields = 0;
    r->body = 0;
    r->id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
    r->iov[0].iov_base = r->head;
    r->iov[0].iov_len = VRP_HEADER_SIZE;
}

static void req_bytes(request *r, uint16_t tag, const void *value, size_t len) {
    uint8_t *fh = r->fh[r->nfields++];
    put16(fh, tag);
    put32(fh + 2, (uint32_t)len);
    r->iov[r->niov].iov_base = fh;
    r->iov[r->niov++].iov_len = VRP_FIELD_SIZE;
    if (len) {
        r->iov[r->niov].iov_base = (void *)value;
        r->iov[r->niov++].iov_len = len;
    }
    r->body += VRP_FIELD_SIZE + (uint32_t)len;
}

static void req_u32(request *r, uint16_t tag, uint32_t v) {
    uint8_t *fh = r->fh[r->nfields++];
    put16(fh, tag);
    put32(fh + 2, 4);
    put32(fh + VRP_FIELD_SIZE, v);
    r->iov[r->niov].iov_base = fh;
    r->iov[r->niov++].iov_len = VRP_FIELD_SIZE + 4;
    r->body += VRP_FIELD_SIZE + 4;
}

/* One sendmsg in the normal case; whatever the socket did not take is finished with the
 * deadline-bound writer of client.c. */
static int req_send(int fd, request *r, long deadline) {
    put32(r->head, VRP_MAGIC);
    put16(r->head + 4, VRP_VERSION);
    put16(r->head + 6, r->type);
    put32(r->head + 8, r->id);
    put32(r->head + 12, r->body);
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = r->iov;
    m.msg_iovlen = (size_t)r->niov;
    ssize_t w;
    do w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        w = 0;
    }
    size_t sent = (size_t)w;
    for (int i = 0; i < r->niov; i++) {
        size_t len = r->iov[i].iov_len;
        if (sent >= len) {
            sent -= len;
            continue;
        }
        if (vrift_io_write(fd, (const char *)r->iov[i].iov_base + sent, len - sent, deadline) != 0) return -1;
        sent = 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ replies */

typedef struct reader {
    int fd;
    long deadline;
    uint32_t left; /* body bytes not yet received */
    size_t pos, len;
    uint8_t buf[2048];
} reader;

/* Copy (dst) or skip (dst NULL) n bytes of the body. */
static int rd_take(reader *r, void *dst, size_t n) {
    uint8_t *d = dst;
    while (n) {
        if (r->pos == r->len) {
            if (r->left == 0) return -1;
            size_t want = r->left < sizeof r->buf ? r->left : sizeof r->buf;
            if (vrift_io_read(r->fd, r->buf, want, r->deadline) != 0) return -1;
            r->left -= (uint32_t)want;
            r->pos = 0;
            r->len = want;
        }
        size_t k = r->len - r->pos < n ? r->len - r->pos : n;
        if (d) {
            memcpy(d, r->buf + r->pos, k);
            d += k;
        }
        r->pos += k;
        n -= k;
    }
    return 0;
}

/* Compare the next n bytes with `want` (wlen bytes): 1 equal, 0 different, -1 I/O. */
static int rd_equal(reader *r, size_t n, const char *want, size_t wlen) {
    int same = n == wlen;
    while (n) {
        uint8_t chunk[128];
        size_t k = n < sizeof chunk ? n : sizeof chunk;
        if (rd_take(r, chunk, k) != 0) return -1;
        if (same && memcmp(chunk, want, k) != 0) same = 0;
        want += same ? k : 0;
        n -= k;
    }
    return same;
}

typedef struct reply {
    int error;          /* an ERROR frame */
    uint32_t code;      /* its ERROR_CODE */
    uint32_t flags;
    uint64_t generation;
    int root_ok;        /* ROOT field: -1 absent, 0 another root, 1 ours */
    int staging_ok;     /* STAGING_DIR field, likewise */
    char text[200];
} reply;

/* Read the answer to `q`: 0 parsed (a reply or an error frame), -1 the connection is unusable. */
static int read_reply(int fd, const request *q, long deadline, reply *out) {
    uint8_t h[VRP_HEADER_SIZE];
    memset(out, 0, sizeof *out);
    out->root_ok = out->staging_ok = -1;
    if (vrift_io_read(fd, h, sizeof h, deadline) != 0) return -1;
    uint16_t type = get16(h + 6);
    uint32_t id = get32(h + 8), body = get32(h + 12);
    if (get32(h) != VRP_MAGIC || get16(h + 4) != VRP_VERSION || body > VRP_MAX_BODY) {
        if (get32(h) == VRP_MAGIC && get16(h + 4) != VRP_VERSION) proto_off = 1; /* will not change */
        errno = EPROTO;
        return -1;
    }
    out->error = type == VRP_M_ERROR;
    /* errors about the frame itself are sent before its request id is known */
    if (out->error ? id != q->id && id != 0 : id != q->id || type != (q->type | VRP_REPLY_BIT)) {
        errno = EPROTO;
        return -1;
    }
    reader r;
    r.fd = fd;
    r.deadline = deadline;
    r.left = body;
    r.pos = r.len = 0;
    for (uint32_t n = 0; r.left || r.pos < r.len; n++) {
        uint8_t fh[VRP_FIELD_SIZE], v[8];
        if (n >= VRP_MAX_FIELDS || rd_take(&r, fh, sizeof fh) != 0) goto bad;
        uint16_t tag = get16(fh);
        uint32_t len = get32(fh + 2);
        if (len > r.left + (r.len - r.pos)) goto bad;
        int eq;
        switch (tag) {
        case VRP_T_ERROR_CODE:
        case VRP_T_FLAGS:
            if (len != 4 || rd_take(&r, v, 4) != 0) goto bad;
            if (tag == VRP_T_ERROR_CODE)
                out->code = get32(v);
            else
                out->flags = get32(v);
            break;
        case VRP_T_GENERATION:
            if (len != 8 || rd_take(&r, v, 8) != 0) goto bad;
            out->generation = get64(v);
            break;
        case VRP_T_TEXT: {
            size_t keep = len < sizeof out->text - 1 ? len : sizeof out->text - 1;
            if (rd_take(&r, out->text, keep) != 0 || rd_take(&r, NULL, len - keep) != 0) goto bad;
            out->text[keep] = '\0';
            break;
        }
        case VRP_T_ROOT:
        case VRP_T_STAGING_DIR:
            eq = tag == VRP_T_ROOT ? rd_equal(&r, len, vrift_root, vrift_root_len)
                               : rd_equal(&r, len, vrift_staging, vrift_staging_len);
            if (eq < 0) goto bad;
            *(tag == VRP_T_ROOT ? &out->root_ok : &out->staging_ok) = eq;
            break;
        default: /* fields we do not use, and tags newer than us */
            if (rd_take(&r, NULL, len) != 0) goto bad;
        }
    }
    return 0;
bad:
    errno = EPROTO;
    return -1;
}

/* Errors after which the daemon closes the connection (docs/protocol.md, error codes); a code
 * we do not know is taken as one. */
static int closes_connection(uint32_t code) {
    switch (code) {
#define CLOSES(name, value, closes) case value: return closes;
        VRP_ERRORS(CLOSES)
#undef CLOSES
    default: return 1;
    }
}

static const char *name_of(uint16_t type) {
    switch (type) {
#define NAME(name, value, one_way) case value: return #name;
        VRP_MESSAGES(NAME)
#undef NAME
    default: return "request";
    }
}

/* Send `q` on fd and read its answer.  0: a reply; 1: an error frame on a connection that
 * stays usable (*out says which); -1: the connection is broken. */
static int exchange(int fd, request *q, long deadline, reply *out) {
    if (req_send(fd, q, deadline) != 0 || read_reply(fd, q, deadline, out) != 0) {
        int saved = errno; /* client.c tells a timeout (daemon gone) from other failures */
        vrift_log("daemon %s failed: %s", name_of(q->type), strerror(saved));
        errno = saved;
        return -1;
    }
    if (!out->error) return 0;
    vrift_log("daemon refused %s (code %u): %s", name_of(q->type), out->code, out->text);
    if (out->code == VRP_E_BAD_VERSION) proto_off = 1;
    if (closes_connection(out->code)) {
        errno = ECONNRESET;
        return -1;
    }
    return 1;
}

/* ------------------------------------------------------------------ the library's calls */

/* On a fresh connection (client.c): who we are, and is this daemon ours? */
int vrift_proto_hello(int fd, long deadline) {
    if (proto_off) return -1;
    request q;
    reply a;
    req_init(&q, VRP_M_HELLO);
    req_u32(&q, VRP_T_PID, (uint32_t)vrift_raw_getpid());
    req_bytes(&q, VRP_T_ROOT, vrift_root, vrift_root_len);
    int r = exchange(fd, &q, deadline, &a);
    if (r == 1 && a.code == VRP_E_BAD_REQUEST) {
        /* the only field it can dislike is ROOT: this daemon serves another project */
        proto_off = 1;
    }
    if (r != 0) return -1;
    if (a.root_ok == 0) {
        vrift_log("daemon on %s serves another project than %s: not used", vrift_socket_path, vrift_root);
        proto_off = 1;
        return -1;
    }
    return 0;
}

/* Paths split into frames of BATCH (with FLAGS when `flags`); 0 when every frame was accepted. */
static int send_paths(uint16_t type, const char *const *paths, int n, uint32_t flags) {
    if (proto_off) return -1;
    if (n <= 0) return 0;
    long deadline = vrift_deadline();
    int temporary, fd = vrift_conn_acquire(deadline, &temporary, 1);
    if (fd < 0) return -1;
    int result = 0, broken = 0;
    for (int i = 0; i < n && !broken;) {
        request q;
        reply a;
        req_init(&q, type);
        if (flags) req_u32(&q, VRP_T_FLAGS, flags);
        for (; i < n && q.nfields < BATCH; i++) {
            size_t len = strlen(paths[i]);
            if (q.body + VRP_FIELD_SIZE + len > VRP_MAX_BODY) break;
            req_bytes(&q, VRP_T_PATH, paths[i], len);
        }
        if (q.nfields == 0) { /* one path longer than a frame: not a path the daemon takes */
            i++;
            result = -1;
            continue;
        }
        int r = exchange(fd, &q, deadline, &a);
        if (r != 0) result = -1;
        if (r < 0) broken = 1;
        if (r > 0) vrift_count(VRIFT_C_DAEMON_ERRORS);
    }
    vrift_conn_release(fd, temporary, broken);
    return result;
}

int vrift_daemon_invalidate(const char *const *paths, int n) { return send_paths(VRP_M_INVALIDATE, paths, n, 0); }

/* A one-way notification (docs/protocol.md "Writes"): sent, never answered, so nobody waits.
 * A send that fails on a kept connection is tried once more on a fresh one (the daemon may
 * have restarted since).  0 sent, -1 not (the DIRTY bits then stay: readers ask the kernel). */
static int notify(int type, const char *const *paths, int n, uint32_t flags) {
    if (proto_off || n <= 0) return proto_off ? -1 : 0;
    request q;
    req_init(&q, (uint16_t)type);
    if (flags) req_u32(&q, VRP_T_FLAGS, flags);
    for (int i = 0; i < n && q.nfields < BATCH; i++) {
        size_t len = strlen(paths[i]);
        if (q.body + VRP_FIELD_SIZE + len > VRP_MAX_BODY) return -1;
        req_bytes(&q, VRP_T_PATH, paths[i], len);
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        long deadline = vrift_deadline();
        int temporary, fd = vrift_conn_acquire(deadline, &temporary, 0);
        if (fd < 0) return -1;
        int r = req_send(fd, &q, deadline), err = errno;
        vrift_conn_release(fd, temporary, r != 0);
        if (r == 0) return 0;
        errno = err;
        if (temporary || err == ETIMEDOUT) break;
    }
    vrift_log("daemon %s not sent: %s", name_of((uint16_t)type), strerror(errno));
    return -1;
}

int vrift_daemon_notify(int type, const char *const *paths, int n) { return notify(type, paths, n, 0); }

/* After a mutating call: re-read `paths`, waiting for the answer (INVALIDATE) or not (CHANGED);
 * `shallow`: only their own entries changed, not what is under a directory. */
int vrift_daemon_reread(const char *const *paths, int n, int wait, int shallow) {
    uint32_t flags = shallow ? VRP_F_CHANGED_SHALLOW : 0;
    return wait ? send_paths(VRP_M_INVALIDATE, paths, n, flags) : notify(VRP_M_CHANGED, paths, n, flags);
}

int vrift_daemon_begin_write(const char *const *paths, int n) { return send_paths(VRP_M_BEGIN_WRITE, paths, n, 0); }

int vrift_daemon_vdir_bad(const char *detail) {
    if (proto_off) return -1;
    long deadline = vrift_deadline();
    int temporary, fd = vrift_conn_acquire(deadline, &temporary, 1);
    if (fd < 0) return -1;
    request q;
    reply a;
    req_init(&q, VRP_M_VDIR_BAD);
    req_bytes(&q, VRP_T_TEXT, detail, strlen(detail));
    int r = exchange(fd, &q, deadline, &a);
    vrift_conn_release(fd, temporary, r < 0);
    return r;
}

/* ------------------------------------------------------------------ action cache */

/* A one-way frame whose body the caller laid out (ACTION_REPLAYED): sent, never answered. */
int vrift_daemon_send(uint16_t type, const void *body, uint32_t len) {
    if (proto_off || len > VRP_MAX_BODY) return -1;
    long deadline = vrift_deadline();
    int temporary, fd = vrift_conn_acquire(deadline, &temporary, 0);
    if (fd < 0) return -1;
    uint8_t h[VRP_HEADER_SIZE];
    put32(h, VRP_MAGIC);
    put16(h + 4, VRP_VERSION);
    put16(h + 6, type);
    put32(h + 8, __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED));
    put32(h + 12, len);
    int r = vrift_io_write(fd, h, sizeof h, deadline) == 0 && (len == 0 || vrift_io_write(fd, body, len, deadline) == 0) ? 0 : -1;
    vrift_conn_release(fd, temporary, r != 0);
    return r;
}

/* One request whose body the caller has already laid out (ACTION_LOOKUP with its argv and
 * environment does not fit the small field table above).  The reply's body is read whole
 * into an anonymous mapping (*body, *len; munmap by the caller) — a HIT carries the
 * action's stdout and stderr, up to 512 KiB.  0: a reply; 1: an error frame; -1: unusable. */
int vrift_proto_call(uint16_t type, const void *req, uint32_t req_len, uint8_t **body, uint32_t *len) {
    *body = NULL;
    *len = 0;
    if (proto_off || req_len > VRP_MAX_BODY) return -1;
    long deadline = vrift_deadline();
    int temporary, fd = vrift_conn_acquire(deadline, &temporary, 1);
    if (fd < 0) return -1;
    uint8_t h[VRP_HEADER_SIZE];
    uint32_t id = __atomic_add_fetch(&next_id, 1, __ATOMIC_RELAXED);
    put32(h, VRP_MAGIC);
    put16(h + 4, VRP_VERSION);
    put16(h + 6, type);
    put32(h + 8, id);
    put32(h + 12, req_len);
    int result = -1;
    if (vrift_io_write(fd, h, sizeof h, deadline) != 0 || vrift_io_write(fd, req, req_len, deadline) != 0 ||
        vrift_io_read(fd, h, sizeof h, deadline) != 0)
        goto done;
    uint16_t rtype = get16(h + 6);
    uint32_t rlen = get32(h + 12);
    if (get32(h) != VRP_MAGIC || get16(h + 4) != VRP_VERSION || rlen > VRP_MAX_BODY ||
        (rtype != VRP_M_ERROR && (get32(h + 8) != id || rtype != (type | VRP_REPLY_BIT))))
        goto done;
    uint8_t *b = NULL;
    if (rlen) {
        void *m = mmap(NULL, rlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) goto done;
        b = m;
        if (vrift_io_read(fd, b, rlen, deadline) != 0) {
            munmap(b, rlen);
            goto done;
        }
    }
    *body = b;
    *len = rlen;
    result = rtype == VRP_M_ERROR ? 1 : 0;
done:
    vrift_conn_release(fd, temporary, result < 0);
    if (result < 0) vrift_log("daemon action request 0x%x failed", type);
    return result;
}
