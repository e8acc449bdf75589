/*
 * replay.c — hits decided and replayed by the library itself, from the action table the
 * daemon publishes (docs/cache.md, "The action table"; layout: vrift/native/vrift_actions.h).
 *
 * The root's constructor calls vrift_fast_replay() with the identity bytes of the
 * ACTION_LOOKUP it is about to send.  When the table has a record with exactly those bytes
 * and every check of the record passes, the outputs are staged from the CAS (reflink, else an
 * in-kernel copy), each verified against its checksum, then renamed into place under the
 * directory's shared flock with DIRTY set (as write.c's vrift_place_staging()); the streams are replayed;
 * the daemon is told afterwards with one-way messages (WRITTEN per output, ACTION_REPLAYED);
 * and the process exits with the recorded status.  Anything else — no table, no record, a
 * check that fails, a damaged record or blob, an error midway — returns, and the caller asks
 * the daemon as before: a fast-path miss is never "run", so the table can only be stricter
 * than the daemon.  Nothing half-written is ever at a real path: a file is renamed only after
 * its staged copy was verified, and every output is staged before the first rename.
 *
 * Only raw system calls touch files here: the library's own interposers (staging of writes,
 * recording) must not see the replay.
 */
#include "vrift_preload.h"
#include "vrift_actions.h"

#include <errno.h>
#include <stdlib.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_OUTPUTS 512

static int sys_stat(const char *p, struct stat *st, int nofollow) {
    return (int)syscall(SYS_newfstatat, AT_FDCWD, p, st, nofollow ? AT_SYMLINK_NOFOLLOW : 0);
}

static int64_t ns_of(const struct timespec *t) { return (int64_t)t->tv_sec * 1000000000ll + t->tv_nsec; }

static int table_path(char *out, size_t cap) {
    const char *v = vrift_vdir_path();
    const char *slash = v ? strrchr(v, '/') : NULL;
    size_t pl = sizeof VRIFT_VDIR_NAME_PREFIX - 1, al = sizeof VRIFT_ACTIONS_NAME_PREFIX - 1;
    if (!slash || strncmp(slash + 1, VRIFT_VDIR_NAME_PREFIX, pl) != 0) return -1;
    const char *id = slash + 1 + pl;
    size_t dl = (size_t)(slash - v) + 1, il = strlen(id);
    if (dl + al + il + 1 > cap) return -1;
    memcpy(out, v, dl);
    memcpy(out + dl, VRIFT_ACTIONS_NAME_PREFIX, al);
    memcpy(out + dl + al, id, il + 1);
    return 0;
}

/* ------------------------------------------------------------------ finding the record */

typedef struct table {
    const uint8_t *base;
    uint64_t size;
    const char *cas;
    size_t cas_len;
} table;

static int map_table(table *t) {
    char path[VRIFT_PATH_MAX];
    if (table_path(path, sizeof path) != 0) return -1;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct stat st;
    void *m = MAP_FAILED;
    if (syscall(SYS_fstat, fd, &st) == 0 && vrift_shm_file_ok(&st, geteuid()) &&
        (uint64_t)st.st_size >= VRIFT_ACTIONS_HEADER_SIZE)
        m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    syscall(SYS_close, fd);
    if (m == MAP_FAILED) return -1;
    t->base = m;
    t->size = (uint64_t)st.st_size;
    vrift_actions_header h;
    memcpy(&h, m, sizeof h);
    const char *cas = (const char *)t->base + VRIFT_ACTIONS_CAS_OFFSET;
    if (h.magic != VRIFT_ACTIONS_MAGIC || h.version != VRIFT_ACTIONS_VERSION || h.file_size != t->size ||
        h.slot_count == 0 || (h.slot_count & (h.slot_count - 1)) || h.cas_len == 0 ||
        h.cas_len >= VRIFT_ACTIONS_CAS_MAX ||
        !vrift_span_ok(h.slots_offset, (uint64_t)h.slot_count * VRIFT_ACTIONS_SLOT_SIZE, t->size) ||
        !vrift_span_ok(h.records_offset, h.records_size, t->size) ||
        (vrift_act_sum32(&h, 60) ^ vrift_act_sum32(cas, h.cas_len)) != h.header_sum) {
        munmap(m, t->size);
        return -1;
    }
    t->cas = cas;
    t->cas_len = h.cas_len;
    return 0;
}

/* The record whose identity is exactly `ident`, checksum verified; NULL if none. */
static const vrift_actions_record *find(const table *t, const uint8_t *ident, size_t len) {
    const vrift_actions_header *h = (const vrift_actions_header *)t->base;
    const vrift_actions_slot *slots = (const vrift_actions_slot *)(t->base + h->slots_offset);
    const uint8_t *recs = t->base + h->records_offset;
    uint64_t hash = vrift_act_hash(ident, len);
    uint32_t mask = h->slot_count - 1;
    for (uint32_t i = (uint32_t)hash & mask, probes = 0; probes < h->slot_count; probes++, i = (i + 1) & mask) {
        vrift_actions_slot s;
        memcpy(&s, &slots[i], sizeof s);
        if (s.length == 0) break;
        if (s.hash != hash || s.length < VRIFT_ACTIONS_RECORD_HEAD || (s.length & 7u) ||
            !vrift_span_ok(s.offset, s.length, h->records_size))
            continue;
        const vrift_actions_record *r = (const vrift_actions_record *)(recs + s.offset);
        if (r->length != s.length || r->hash != hash || r->ident_len != len) continue;
        if (vrift_act_sum32((const uint8_t *)r + 8, r->length - 8) != r->sum) {
            vrift_log("action table: a record failed its checksum (ignored)");
            continue;
        }
        if (memcmp((const uint8_t *)r + VRIFT_ACTIONS_RECORD_HEAD, ident, len) == 0) return r;
    }
    return NULL;
}

/* A cursor over the variable part of a record, bounds-checked. */
typedef struct cursor {
    const uint8_t *p, *end;
} cursor;

static const void *take(cursor *c, uint64_t n) {
    if ((uint64_t)(c->end - c->p) < n) return NULL;
    const void *r = c->p;
    c->p += n;
    return r;
}

/* path and extra strings after a fixed part: both NUL terminated inside the record */
static int strings(cursor *c, uint32_t a_len, uint32_t b_len, const char **a, const char **b) {
    uint64_t n = vrift_act_pad8((uint64_t)a_len + b_len + 2);
    const char *s = take(c, n);
    if (!s || s[a_len] != '\0' || s[a_len + 1 + b_len] != '\0') return -1;
    *a = s;
    *b = s + a_len + 1;
    return 0;
}

/* ------------------------------------------------------------------ checks */

/* 1: the project's index has a clean entry for `abs` (copied into *e); 0: none; -1: DIRTY. */
static int indexed(const char *abs, vrift_entry *e) {
    const char *rel;
    size_t rl;
    if (!vrift_reads_on || !vrift_rel_of(abs, &rel, &rl)) return 0;
    int r = vrift_find(rel, rl, e);
    if (r != 1) return 0;
    if (e->flags & VRIFT_F_DIRTY) return -1;
    return e->flags & VRIFT_F_DELETED ? 0 : 1;
}

static int same_as_entry(const vrift_entry *e, const struct stat *st) {
    return e->size == st->st_size && e->mtime_sec == st->st_mtim.tv_sec && e->mtime_nsec == (uint32_t)st->st_mtim.tv_nsec &&
           e->ctime_sec == st->st_ctim.tv_sec && e->ctime_nsec == (uint32_t)st->st_ctim.tv_nsec && e->ino == st->st_ino &&
           e->dev == st->st_dev && e->mode == st->st_mode;
}

static int check_one(const vrift_actions_check *c, const char *path, const char *extra) {
    struct stat st;
    vrift_entry e;
    int in = indexed(path, &e);
    if (in < 0) return -1; /* being written: ask the daemon */
    switch (c->kind) {
    case VRIFT_CK_FILE:
        if (sys_stat(path, &st, 0) != 0 || !S_ISREG(st.st_mode)) return -1;
        if (st.st_dev == c->dev && st.st_ino == c->ino && st.st_size == c->size && ns_of(&st.st_mtim) == c->mtime_ns &&
            ns_of(&st.st_ctim) == c->ctime_ns && st.st_mode == c->mode)
            return 0; /* the identity the daemon's digest was taken of */
        /* an indexed file whose entry describes it and carries the digest (an object a
         * replay just put in place, indexed since) */
        if (in == 1 && same_as_entry(&e, &st) && memcmp(e.digest, c->digest, 32) == 0 &&
            (!(c->mask & VRIFT_CM_X) || (st.st_mode & 0111) == (c->mode & 0111)))
            return 0;
        return -1;
    case VRIFT_CK_ABSENT:
        if (sys_stat(path, &st, c->how == 'l') == 0) return -1;
        return errno == ENOENT || errno == ENOTDIR ? 0 : -1;
    case VRIFT_CK_STAT:
        if (sys_stat(path, &st, c->how == 'l') != 0) return -1;
        if ((c->mask & VRIFT_CM_TYPE) && (st.st_mode & S_IFMT) != (c->mode & S_IFMT)) return -1;
        if ((c->mask & VRIFT_CM_PERM) && (st.st_mode & 07777) != (c->mode & 07777)) return -1;
        if ((c->mask & VRIFT_CM_X) && (st.st_mode & 0111) != (c->mode & 0111)) return -1;
        if ((c->mask & VRIFT_CM_SIZE) && st.st_size != c->size) return -1;
        if ((c->mask & VRIFT_CM_MTIME) && ns_of(&st.st_mtim) != c->mtime_ns) return -1;
        if (c->mask & VRIFT_CM_TARGET) {
            char t[VRIFT_PATH_MAX];
            long n = syscall(SYS_readlinkat, AT_FDCWD, path, t, sizeof t);
            if (n < 0 || (size_t)n != c->extra_len || memcmp(t, extra, (size_t)n) != 0) return -1;
        }
        return 0;
    case VRIFT_CK_FOUND: {
        if (sys_stat(path, &st, 0) != 0 || !S_ISREG(st.st_mode)) return -1;
        if (syscall(SYS_faccessat, AT_FDCWD, path, X_OK) != 0) return -1;
        char real[VRIFT_PATH_MAX];
        if (!REAL(realpath) || !vrift_real.realpath(path, real)) return -1;
        return strcmp(real, extra) == 0 ? 0 : -1;
    }
    default:
        return -1;
    }
}

/* ------------------------------------------------------------------ outputs */

static void staging_file(char *out, size_t i) {
    size_t n = vrift_staging_len;
    memcpy(out, vrift_staging, n);
    out[n++] = '/';
    n += vrift_put_dec(out + n, (uint64_t)vrift_raw_getpid());
    out[n++] = '.';
    out[n++] = 'r'; /* write.c's names are <pid>.<number> */
    n += vrift_put_dec(out + n, i);
    out[n] = '\0';
}

/* <root>/.vrift/staging by default: the first write of the project may not have made it */
static int ensure_staging(void) {
    char d[VRIFT_PATH_MAX];
    if (vrift_staging_len == 0 || vrift_staging_len + 48 > sizeof d) return -1;
    memcpy(d, vrift_staging, vrift_staging_len + 1);
    for (size_t i = 1; i <= vrift_staging_len; i++) {
        if (d[i] != '/' && d[i] != '\0') continue;
        char c = d[i];
        d[i] = '\0';
        if (i > vrift_root_len && syscall(SYS_mkdirat, AT_FDCWD, d, 0700) != 0 && errno != EEXIST) return -1;
        d[i] = c;
    }
    return 0;
}

static int copy_blob(int src, int dst, uint64_t size) {
    if (ioctl(dst, FICLONE, src) == 0) return 0;
    uint64_t done = 0;
    while (done < size) {
        ssize_t r = copy_file_range(src, NULL, dst, NULL, (size_t)(size - done), 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        done += (uint64_t)r;
    }
    if (done == size) return 0;
    /* a filesystem without either: plain reads and writes from where the copy stopped */
    char buf[65536];
    while (done < size) {
        ssize_t r = pread(src, buf, sizeof buf, (off_t)done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        for (ssize_t w = 0; w < r;) {
            ssize_t k = pwrite(dst, buf + w, (size_t)(r - w), (off_t)(done + (uint64_t)w));
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return -1;
            w += k;
        }
        done += (uint64_t)r;
    }
    return 0;
}

/* Stage output `i` from its blob; 0 when the staged copy has the recorded size and checksum
 * (its fd, kept open for the identity sent afterwards, in *fd_out). */
static int stage(const table *t, const vrift_actions_output *o, const char *blob, size_t i, int *fd_out) {
    char src_path[VRIFT_PATH_MAX], dst_path[VRIFT_PATH_MAX];
    if (t->cas_len + 1 + o->blob_len + 1 > sizeof src_path) return -1;
    memcpy(src_path, t->cas, t->cas_len);
    src_path[t->cas_len] = '/';
    memcpy(src_path + t->cas_len + 1, blob, o->blob_len + 1);
    staging_file(dst_path, i);
    int src = (int)syscall(SYS_openat, AT_FDCWD, src_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (src < 0) return -1; /* evicted or collected: the daemon decides */
    int dst = (int)syscall(SYS_openat, AT_FDCWD, dst_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (dst < 0 && errno == ENOENT && ensure_staging() == 0) /* made once, by whoever writes first */
        dst = (int)syscall(SYS_openat, AT_FDCWD, dst_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    struct stat st;
    int ok = dst >= 0 && syscall(SYS_fstat, src, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == o->size &&
             copy_blob(src, dst, o->size) == 0;
    if (ok) {
        /* verify what was installed, not the blob: a damaged blob never reaches the path */
        uint64_t sum;
        if (o->size == 0) {
            sum = vrift_act_sum64("", 0);
        } else {
            void *m = mmap(NULL, (size_t)o->size, PROT_READ, MAP_SHARED, dst, 0);
            if (m == MAP_FAILED) {
                ok = 0;
                sum = 0;
            } else {
                sum = vrift_act_sum64(m, (size_t)o->size);
                munmap(m, (size_t)o->size);
            }
        }
        ok = ok && sum == o->sum && syscall(SYS_fstat, dst, &st) == 0 && (uint64_t)st.st_size == o->size &&
             syscall(SYS_fchmod, dst, (mode_t)(o->mode & 07777)) == 0;
    }
    syscall(SYS_close, src);
    if (ok) {
        *fd_out = dst;
        return 0;
    }
    if (dst >= 0) syscall(SYS_close, dst);
    vrift_log("fast replay: output %zu could not be staged from %s", i, src_path);
    return -1;
}

/* mkdir -p of `path`'s missing directories inside the project; each new one under its
 * parent's lock with DIRTY set, and the daemon told to re-read it. */
static int make_dirs(const char *path, int include_last) {
    char d[VRIFT_PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof d || n <= vrift_root_len) return -1;
    memcpy(d, path, n + 1);
    if (!include_last) {
        while (n > vrift_root_len && d[n - 1] != '/') n--;
        if (n <= vrift_root_len + 1) return 0; /* directly in the root */
        d[--n] = '\0';
    }
    struct stat st;
    if (sys_stat(d, &st, 0) == 0) return S_ISDIR(st.st_mode) ? 0 : -1;
    if (make_dirs(d, 0) != 0) return -1;
    int dfd = vrift_lock_dir_of(d);
    vrift_mark_path(d, 0);
    int r = (int)syscall(SYS_mkdirat, AT_FDCWD, d, 0777); /* the umask applies, as for the command's mkdir */
    int e = errno;
    vrift_unlock_dir(dfd);
    if (r != 0 && e != EEXIST) return -1;
    const char *paths[1] = {d};
    vrift_daemon_notify(VRIFT_N_CHANGED, paths, 1);
    return 0;
}

static void unstage(size_t n, int *fds) {
    char p[VRIFT_PATH_MAX];
    for (size_t i = 0; i < n; i++) {
        staging_file(p, i);
        syscall(SYS_unlinkat, AT_FDCWD, p, 0);
        if (fds[i] >= 0) syscall(SYS_close, fds[i]);
        fds[i] = -1;
    }
}

static size_t put_tlv(uint8_t *m, uint16_t tag, const void *v, size_t n) {
    m[0] = (uint8_t)tag;
    m[1] = (uint8_t)(tag >> 8);
    for (int i = 0; i < 4; i++) m[2 + i] = (uint8_t)(n >> (8 * i));
    memcpy(m + 6, v, n);
    return 6 + n;
}

static size_t put_signed(char *out, int64_t v) {
    if (v < 0) {
        out[0] = '-';
        return 1 + vrift_put_dec(out + 1, (uint64_t)(-v));
    }
    return vrift_put_dec(out, (uint64_t)v);
}

/* ------------------------------------------------------------------ the replay */

/* Why the table was not used, for VRIFT_DEBUG; the daemon decides instead. */
#define MISS(why)                                  \
    do {                                           \
        vrift_log("action table: %s", why);        \
        goto done;                                 \
    } while (0)

int vrift_fast_replay(const uint8_t *ident, size_t len, const char *exe, const char *action_id) {
    if (!vrift_writes_on || vrift_root_len == 0) return -1;
    const char *off = getenv("VRIFT_CACHE_TABLE"); /* 0: every lookup asks the daemon (measuring) */
    if (off && vrift_onoff(off) == 0) return -1;
    table t;
    if (map_table(&t) != 0) {
        vrift_log("action table: none usable");
        return -1;
    }
    int result = -1;
    size_t staged = 0;
    int fds[MAX_OUTPUTS];
    uint8_t *msg = MAP_FAILED;
    size_t msg_cap = 0, msg_len = 0;
    const vrift_actions_record *r = find(&t, ident, len);
    if (!r) {
        vrift_log("action table: no record for this command (identity hash %016llx, %u records)",
                  (unsigned long long)vrift_act_hash(ident, len), ((const vrift_actions_header *)t.base)->record_count);
        goto done;
    }
    struct stat st;
    if (sys_stat(exe, &st, 0) != 0 || st.st_dev != r->exe_dev || st.st_ino != r->exe_ino || st.st_size != r->exe_size ||
        ns_of(&st.st_mtim) != r->exe_mtime_ns || ns_of(&st.st_ctim) != r->exe_ctime_ns || r->status > 255 ||
        r->n_outputs > MAX_OUTPUTS)
        MISS("the executable changed");
    cursor c = {(const uint8_t *)r + VRIFT_ACTIONS_RECORD_HEAD, (const uint8_t *)r + r->length};
    if (!take(&c, vrift_act_pad8(r->ident_len))) goto done;
    for (uint32_t i = 0; i < r->n_checks; i++) {
        const vrift_actions_check *k = take(&c, VRIFT_ACTIONS_CHECK_HEAD);
        const char *path, *extra;
        if (!k || strings(&c, k->path_len, k->extra_len, &path, &extra) != 0) goto done;
        if (check_one(k, path, extra) != 0) {
            vrift_log("action table: %s differs (check %c)", path, k->kind);
            goto done;
        }
    }
    /* every input is as recorded: stage every output before the first one is put in place */
    cursor outs = c;
    for (uint32_t i = 0; i < r->n_outputs; i++) {
        const vrift_actions_output *o = take(&c, VRIFT_ACTIONS_OUTPUT_HEAD);
        const char *path, *blob;
        if (!o || strings(&c, o->path_len, o->blob_len, &path, &blob) != 0) goto done;
        if (strncmp(path, vrift_root, vrift_root_len) != 0 || path[vrift_root_len] != '/') goto done;
        fds[i] = -1;
        if (o->type == VRIFT_OUT_FILE) {
            staged = i + 1;
            if (stage(&t, o, blob, i, &fds[i]) != 0) MISS("an output could not be staged");
        } else if (o->type != VRIFT_OUT_DIR) {
            goto done;
        }
    }
    const uint8_t *streams = take(&c, vrift_act_pad8(r->streams_len));
    if (!streams) goto done;
    /* ACTION_REPLAYED: ACTION, SIZE (the record's key hash), and per file PATH + TEXT (the
     * stat identity of the inode put there, from its fd: the daemon publishes the recorded
     * digest only while the path still holds exactly that) */
    msg_cap = 64 + (size_t)r->n_outputs * (VRIFT_PATH_MAX + 128);
    msg = mmap(NULL, msg_cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (msg == MAP_FAILED) MISS("no memory");
    {
        uint8_t h8[8];
        for (int i = 0; i < 8; i++) h8[i] = (uint8_t)(r->hash >> (8 * i));
        msg_len += put_tlv(msg + msg_len, VRP_T_ACTION, action_id, 16);
        msg_len += put_tlv(msg + msg_len, VRP_T_KEY_HASH, h8, 8);
    }
    c = outs;
    for (uint32_t i = 0; i < r->n_outputs; i++) {
        const vrift_actions_output *o = take(&c, VRIFT_ACTIONS_OUTPUT_HEAD);
        const char *path, *blob;
        strings(&c, o->path_len, o->blob_len, &path, &blob);
        if (o->type == VRIFT_OUT_DIR) {
            if (make_dirs(path, 1) != 0) goto done;
            continue;
        }
        char sp[VRIFT_PATH_MAX];
        staging_file(sp, i);
        if (make_dirs(path, 0) != 0) goto done;
        /* as write.c's vrift_place_staging(): marks and rename under the directory's shared lock */
        int dfd = vrift_lock_dir_of(path);
        vrift_mark_path(path, 0);
        long rr = syscall(SYS_renameat, AT_FDCWD, sp, AT_FDCWD, path);
        vrift_unlock_dir(dfd);
        if (rr != 0) goto done; /* whole files only so far; the daemon runs or replays it */
        if (syscall(SYS_fstat, fds[i], &st) == 0 && o->path_len < VRIFT_PATH_MAX) {
            char id[128];
            size_t n = 0;
            n += vrift_put_dec(id + n, (uint64_t)st.st_dev), id[n++] = ' ';
            n += vrift_put_dec(id + n, (uint64_t)st.st_ino), id[n++] = ' ';
            n += put_signed(id + n, (int64_t)st.st_size), id[n++] = ' ';
            n += put_signed(id + n, ns_of(&st.st_mtim)), id[n++] = ' ';
            n += put_signed(id + n, ns_of(&st.st_ctim));
            msg_len += put_tlv(msg + msg_len, VRP_T_PATH, path, o->path_len);
            msg_len += put_tlv(msg + msg_len, VRP_T_IDENTITY, id, n);
        }
        syscall(SYS_close, fds[i]);
        fds[i] = -1;
    }
    staged = 0;
    if (vrift_capture_replay(streams, r->streams_len, VRP_T_STDOUT, VRP_T_STDERR) != 0) {
        vrift_log("fast replay: output could not be written, asking the daemon");
        goto done;
    }
    /* not sent (no daemon): the outputs stay DIRTY, readers ask the kernel */
    vrift_daemon_send(VRP_M_ACTION_REPLAYED, msg, (uint32_t)msg_len);
    result = (int)r->status;
done:
    if (staged) unstage(staged, fds);
    if (msg != MAP_FAILED) munmap(msg, msg_cap);
    munmap((void *)t.base, t.size);
    return result;
}
