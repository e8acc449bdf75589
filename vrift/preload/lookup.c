/*
 * lookup.c — ACTION_LOOKUP at the root's start (docs/cache.md, "Replay at exec"): the
 * request (what decides a hit: program, cwd, argv, the listed environment, the streams'
 * shape, umask), the action table tried first (replay.c), then the daemon's answer — a hit
 * replays the recorded output and exits with its status before main; a miss records.
 * Also the field writer of the protocol's bodies, shared with ACTION_END (action.c).
 */
#include "vrift_preload.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int vrift_proto_call(uint16_t type, const void *req, uint32_t req_len, uint8_t **body, uint32_t *len);

#define TERMINAL_ENV "TERM:COLORTERM:COLUMNS:NO_COLOR:CLICOLOR:CLICOLOR_FORCE:GCC_COLORS:GCC_URLS:TERM_URLS"

extern char **environ;

void vrift_body_field(vrift_body *b, uint16_t tag, const void *v, size_t n) {
    if (b->len + 6 + n > b->cap) {
        b->len = b->cap + 1; /* overflow: the request is not sent */
        return;
    }
    uint8_t *h = b->p + b->len;
    h[0] = (uint8_t)tag;
    h[1] = (uint8_t)(tag >> 8);
    for (int i = 0; i < 4; i++) h[2 + i] = (uint8_t)(n >> (8 * i));
    if (n) memcpy(h + 6, v, n);
    b->len += 6 + n;
}

void vrift_body_u32(vrift_body *b, uint16_t tag, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    vrift_body_field(b, tag, x, 4);
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One ENV field for each name in the ':'-separated `list` that is set. */
static void put_env(vrift_body *b, const char *list) {
    for (const char *p = list; p && *p;) {
        const char *s = p;
        while (*p && *p != ':') p++;
        size_t n = (size_t)(p - s);
        if (*p) p++;
        if (n == 0 || n >= 256) continue;
        char name[256];
        memcpy(name, s, n);
        name[n] = '\0';
        const char *v = getenv(name);
        if (!v) continue;
        size_t vl = strlen(v);
        char *kv = (char *)b->p + b->cap - n - vl - 2; /* scratch at the end, copied right away */
        if (b->len + 2 * (n + vl + 8) > b->cap) break;
        memcpy(kv, name, n);
        kv[n] = '=';
        memcpy(kv + n + 1, v, vl);
        vrift_body_field(b, VRP_T_ENV, kv, n + 1 + vl);
    }
}

/* 1: HIT (replayed; does not return), 0: miss, 2: miss not worth recording, -1: no answer. */
int vrift_action_lookup(int argc, char **argv, const char *exe, const char *action_id) {
    vrift_body b;
    b.cap = 1u << 20;
    b.len = 0;
    void *m = mmap(NULL, b.cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    b.p = m;
    char cwd[VRIFT_PATH_MAX];
    size_t el = strlen(exe);
    if (el == 0 || !vrift_getcwd(cwd, sizeof cwd) || !argv) {
        munmap(m, b.cap);
        return -1;
    }
    vrift_body_u32(&b, VRP_T_PID, (uint32_t)vrift_pid);
    size_t ident_start = b.len; /* PATH .. UMASK: what decides a hit (replay.c, the action table) */
    vrift_body_field(&b, VRP_T_PATH, exe, el);
    vrift_body_field(&b, VRP_T_CWD, cwd, strlen(cwd));
    for (int i = 0; i < argc && argv[i]; i++) vrift_body_field(&b, VRP_T_ARG, argv[i], strlen(argv[i]));
    put_env(&b, getenv("VRIFT_CACHE_ENV"));
    if (getenv("VRIFT_ACTION_WALL"))
        for (char **e = environ; e && *e; e++)
            if (strncmp(*e, "VRIFT_", 6) != 0 && strncmp(*e, "LD_PRELOAD=", 11) != 0) vrift_body_field(&b, VRP_T_ENV, *e, strlen(*e));
    /* what a tool sees of a terminal: also these, which decide its colours and width */
    if (vrift_capture_terminal()) put_env(&b, TERMINAL_ENV);
    char shape[128];
    vrift_body_field(&b, VRP_T_STREAMS, shape, vrift_capture_describe(shape, sizeof shape));
    /* the modes of what the command creates: read (and put back) before main, one thread */
    mode_t mask = (mode_t)syscall(SYS_umask, 022);
    syscall(SYS_umask, mask);
    vrift_body_u32(&b, VRP_T_UMASK, (uint32_t)mask);
    size_t ident_end = b.len;
    char in[VRIFT_PATH_MAX];
    int il = vrift_stdin_path(in, sizeof in);
    if (il > 0) vrift_body_field(&b, VRP_T_STDIN, in, (size_t)il);
    vrift_body_field(&b, VRP_T_ACTION, action_id, 16);
    if (b.len <= b.cap) {
        int status = vrift_fast_replay(b.p + ident_start, ident_end - ident_start, exe, action_id);
        if (status >= 0) {
            vrift_log("action %s: hit from the action table, status %d", action_id, status);
            vrift_count(VRIFT_C_FAST_HITS);
            vrift_flush_counters();
            syscall(SYS_exit_group, status);
        }
    }
    int result = -1;
    uint8_t *rb;
    uint32_t rl;
    if (b.len <= b.cap && vrift_proto_call(VRP_M_ACTION_LOOKUP, b.p, (uint32_t)b.len, &rb, &rl) == 0) {
        uint32_t flags = 0, status = 0;
        int have_status = 0, bad = 0, seek = 0;
        unsigned long long stdin_end = 0;
        for (size_t off = 0; off < rl;) {
            if (rl - off < 6) {
                bad = 1;
                break;
            }
            uint16_t tag = (uint16_t)(rb[off] | rb[off + 1] << 8);
            uint32_t n = get32(rb + off + 2);
            if (n > rl - off - 6) {
                bad = 1;
                break;
            }
            const uint8_t *v = rb + off + 6;
            if ((tag == VRP_T_FLAGS || tag == VRP_T_STATUS) && n != 4) bad = 1;
            else if (tag == VRP_T_FLAGS) flags = get32(v);
            else if (tag == VRP_T_STATUS) status = get32(v), have_status = 1;
            else if (tag == VRP_T_STDIN_OFFSET && n == 8) stdin_end = get32(v) | (unsigned long long)get32(v + 4) << 32, seek = 1;
            off += 6 + n;
        }
        if (!bad && (flags & VRP_F_LOOKUP_HIT) && have_status && status <= 255) {
            /* the daemon has put every output in place: replay the streams in their order, and go */
            if (vrift_capture_replay(rb, rl, VRP_T_STDOUT, VRP_T_STDERR) != 0) {
                /* the output cannot be delivered: running the command is still right */
                vrift_log("action %s: replay output could not be written, running it", action_id);
            } else {
                vrift_log("action %s: hit, status %u", action_id, status);
                if (seek) vrift_stdin_seek(stdin_end); /* as if the command had read it */
                vrift_flush_counters();
                syscall(SYS_exit_group, (int)status);
            }
            result = -1;
        } else if (!bad && !(flags & VRP_F_LOOKUP_HIT)) {
            result = flags & VRP_F_LOOKUP_NO_RECORD ? 2 : 0; /* 2: the daemon will not cache it, do not record */
        }
        if (rb) munmap(rb, rl);
    }
    munmap(m, b.cap);
    return result;
}

