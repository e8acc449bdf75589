/*
 * walk.c — the tree walk of a re-ingest in C, and what it shares with the reconcile's settle
 * (settle.c): the snapshot of the index's paths, the results, the helpers.
 *
 * Confirming that an indexed path is unchanged is one lstat and a 112-byte compare; in Python
 * the objects made around that cost more than the syscall.  The walks here list directories
 * relative to directory fds (fdopendir/readdir, fstatat with AT_SYMLINK_NOFOLLOW, openat with
 * O_NOFOLLOW), never follow a symlink, skip the always-ignored names the caller passes, and hand
 * back only what Python must handle itself: paths that differ or are new, what could not be
 * read (kind, errno, path), and which indexed paths were seen (a byte per path of the snapshot).
 *
 * vrift_walk_ingest compares the whole tree with the index's records (vrift/ingest_native.py):
 * equal to Entry.stat_record(lstat, flags, digest) means unchanged.  The time is the kernel's
 * (fstatat, getdents: ~90% system time), so up to `threads` threads walk: a thread about to
 * enter a directory hands it to an idle one instead.
 *
 * Loaded with ctypes: every call runs without the GIL.  Memory the results hold is malloc'd
 * here and released by vrift_walk_free; the snapshot refers to the caller's buffers, which the
 * caller keeps alive while the snapshot lives.
 */
#define _GNU_SOURCE
#include "walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_QUEUE 64 /* directories handed over and not yet taken (each holds an fd) */

/* ------------------------------------------------------------------ growable buffers */
static int wb_put(wbuf *b, const void *s, size_t n) {
    if (n > SIZE_MAX / 2 - b->len) return -1;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    return 0;
}

/* ------------------------------------------------------------------ the index snapshot */
EXPORT void vrift_snap_free(vrift_snap *s) {
    if (!s) return;
    free(s->off);
    free(s->len);
    free(s->table);
    free(s->state);
    free(s);
}

/* A snapshot of `n` paths (`paths`: n names joined by NUL, `paths_len` bytes) with their
 * records (`records_len` bytes, or NULL); NULL when the input does not hold exactly n names and
 * n records, or memory is short. */
EXPORT vrift_snap *vrift_snap_new(const char *paths, size_t paths_len, const uint8_t *records, size_t records_len,
                                  uint32_t n) {
    if (n == 0 || n > UINT32_MAX / 4 || paths_len >= UINT32_MAX) return NULL;
    if (records && records_len != (size_t)n * VRIFT_RECORD_SIZE) return NULL;
    vrift_snap *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    uint32_t cap = 16;
    while (cap < n * 2u) cap *= 2;
    s->paths = paths;
    s->records = records;
    s->n = n;
    s->mask = cap - 1;
    s->off = malloc(sizeof *s->off * n);
    s->len = malloc(sizeof *s->len * n);
    s->table = calloc(cap, sizeof *s->table);
    s->state = calloc(n, 1);
    if (!s->off || !s->len || !s->table || !s->state) goto fail;
    size_t at = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (at > paths_len) goto fail; /* fewer names than records */
        const char *end = memchr(paths + at, 0, paths_len - at);
        size_t l = end ? (size_t)(end - (paths + at)) : paths_len - at;
        if (!end && i + 1 != n) goto fail;
        s->off[i] = (uint32_t)at;
        s->len[i] = (uint32_t)l;
        at += l + 1;
        uint32_t j = (uint32_t)vrift_fnv1a64(paths + s->off[i], l) & s->mask;
        while (s->table[j]) j = (j + 1) & s->mask;
        s->table[j] = i + 1;
    }
    if (at != paths_len + 1) goto fail; /* more names than records */
    return s;
fail:
    vrift_snap_free(s);
    return NULL;
}

/* The snapshot index of path p (l bytes, FNV-1a `hash`), or -1. */
int64_t walk_snap_find(const vrift_snap *s, const char *p, size_t l, uint64_t hash) {
    uint32_t j = (uint32_t)hash & s->mask;
    for (uint32_t probes = 0; probes <= s->mask; probes++, j = (j + 1) & s->mask) {
        uint32_t e = s->table[j];
        if (!e) return -1;
        if (s->len[e - 1] == l && memcmp(s->paths + s->off[e - 1], p, l) == 0) return e - 1;
    }
    return -1;
}

/* The snapshot's paths not SEEN (NUL-terminated, into out->changed); with `listed_parents`
 * only those whose parent directory was LISTED (a settle: the others were not looked at). */
EXPORT int vrift_snap_unseen(vrift_snap *s, int listed_parents, vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    wbuf b = {0};
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->state[i] & SEEN) continue;
        const char *p = s->paths + s->off[i];
        uint32_t l = s->len[i];
        if (listed_parents) {
            if (l == 0) continue; /* the root has no parent */
            const char *slash = memrchr(p, '/', l);
            size_t pl = slash ? (size_t)(slash - p) : 0;
            int64_t parent = walk_snap_find(s, p, pl, vrift_fnv1a64(p, pl));
            if (parent < 0 || !(s->state[parent] & LISTED)) continue;
        }
        if (wb_put(&b, p, l) || wb_put(&b, "", 1)) {
            free(b.p);
            return -ENOMEM;
        }
    }
    out->changed = b.p;
    out->changed_len = b.len;
    return 0;
}

/* ------------------------------------------------------------------ results and helpers */
EXPORT void vrift_walk_free(vrift_walk_out *o) {
    free(o->changed);
    free(o->skipped);
    free(o->dirs);
    free(o->refresh);
    memset(o, 0, sizeof *o);
}

int walk_ignored(const walker *w, const char *name, size_t n) {
    for (size_t at = 0; at < w->ign_len;) {
        const char *end = memchr(w->ign + at, 0, w->ign_len - at);
        size_t l = end ? (size_t)(end - (w->ign + at)) : w->ign_len - at;
        if (l == n && memcmp(w->ign + at, name, n) == 0) return 1;
        at += l + 1;
    }
    return 0;
}

void walk_put_path(walker *w, wbuf *b, size_t len) {
    if (wb_put(b, w->path, len) || wb_put(b, "", 1)) w->err = -ENOMEM;
}

void walk_put_skip(walker *w, char kind, int err, size_t len) {
    char head[16];
    int n = snprintf(head, sizeof head, "%c%d:", kind, err);
    if (n < 0 || (size_t)n >= sizeof head || wb_put(&w->skipped, head, (size_t)n)) {
        w->err = -ENOMEM;
        return;
    }
    walk_put_path(w, &w->skipped, len);
}

/* w->path becomes <dir of length plen>/<name>; returns its length, or 0 with w->err set when
 * it does not fit (the Python walk would get ENAMETOOLONG: it walks instead). */
size_t walk_child_path(walker *w, size_t plen, const char *name, size_t n) {
    size_t len = plen + (plen ? 1 : 0) + n;
    if (len > w->room) {
        w->err = -ENAMETOOLONG;
        return 0;
    }
    if (plen) w->path[plen] = '/';
    memcpy(w->path + len - n, name, n);
    w->path[len] = 0;
    return len;
}

void walk_init(walker *w, vrift_snap *s, const char *root, const char *ign, size_t ign_len) {
    memset(w, 0, sizeof *w);
    w->s = s;
    w->ign = ign;
    w->ign_len = ign_len;
    size_t r = strlen(root);
    w->room = r + 2 < WALK_PATH_MAX ? WALK_PATH_MAX - r - 2 : 0;
}

int walk_threads(int wanted) { return wanted < 1 ? 1 : wanted > WALK_THREADS_MAX ? WALK_THREADS_MAX : wanted; }

static int append(wbuf *to, wbuf *from) {
    int rc = from->len ? wb_put(to, from->p, from->len) : 0;
    free(from->p);
    memset(from, 0, sizeof *from);
    return rc;
}

/* The threads' results as one, into *out (0), or every buffer freed and the first error. */
int walk_finish(walker *ws, int n, vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    int err = 0;
    for (int i = 0; i < n && !err; i++) err = ws[i].err;
    for (int i = 1; i < n; i++) {
        if (!err && (append(&ws[0].changed, &ws[i].changed) || append(&ws[0].skipped, &ws[i].skipped) ||
                     append(&ws[0].dirs, &ws[i].dirs) || append(&ws[0].refresh, &ws[i].refresh)))
            err = -ENOMEM;
        ws[0].files += ws[i].files, ws[0].subdirs += ws[i].subdirs, ws[0].symlinks += ws[i].symlinks;
        ws[0].confirmed += ws[i].confirmed;
    }
    if (err) {
        for (int i = 0; i < n; i++) {
            free(ws[i].changed.p);
            free(ws[i].skipped.p);
            free(ws[i].dirs.p);
            free(ws[i].refresh.p);
        }
        return err;
    }
    out->changed = ws[0].changed.p, out->changed_len = ws[0].changed.len;
    out->skipped = ws[0].skipped.p, out->skipped_len = ws[0].skipped.len;
    out->dirs = ws[0].dirs.p, out->dirs_len = ws[0].dirs.len;
    out->refresh = ws[0].refresh.p, out->refresh_len = ws[0].refresh.len;
    out->files = ws[0].files, out->subdirs = ws[0].subdirs, out->symlinks = ws[0].symlinks;
    out->confirmed = ws[0].confirmed;
    return 0;
}

/* ------------------------------------------------------------------ the threads of an ingest */
typedef struct pool_item {
    int fd, depth;
    size_t plen;
    char *path;
} pool_item;

typedef struct walk_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pool_item items[POOL_QUEUE];
    int n, idle, threads, finished;
} walk_pool;

/* Hand the directory open as `fd` (path w->path[0, plen)) to an idle thread; 0 when none waits. */
static int pool_give(walker *w, int fd, size_t plen, int depth) {
    walk_pool *p = w->pool;
    if (!p || __atomic_load_n(&p->idle, __ATOMIC_RELAXED) == 0) return 0;
    char *copy = malloc(plen + 1);
    if (!copy) return 0;
    memcpy(copy, w->path, plen + 1);
    int given = 0;
    pthread_mutex_lock(&p->mu);
    if (p->idle > p->n && p->n < POOL_QUEUE) {
        p->items[p->n++] = (pool_item){fd, depth, plen, copy};
        pthread_cond_signal(&p->cv);
        given = 1;
    }
    pthread_mutex_unlock(&p->mu);
    if (!given) free(copy);
    return given;
}

static void ingest_dir(walker *w, int dfd, size_t plen, int depth);

static void *pool_run(void *arg) {
    walker *w = arg;
    walk_pool *p = w->pool;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        __atomic_add_fetch(&p->idle, 1, __ATOMIC_RELAXED);
        while (p->n == 0 && !p->finished) {
            if (p->idle == p->threads) { /* nobody walks and nothing waits: done */
                p->finished = 1;
                pthread_cond_broadcast(&p->cv);
                break;
            }
            pthread_cond_wait(&p->cv, &p->mu);
        }
        if (p->n == 0) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        pool_item it = p->items[--p->n];
        __atomic_sub_fetch(&p->idle, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&p->mu);
        memcpy(w->path, it.path, it.plen + 1);
        free(it.path);
        if (w->err) close(it.fd); /* this thread failed: it only drains the queue */
        else ingest_dir(w, it.fd, it.plen, it.depth);
    }
}

/* ------------------------------------------------------------------ ingest */
/* One path against its indexed record: unchanged ones are SEEN and counted, the rest listed
 * for Python (new, changed, or not a kind the index keeps). */
static void ingest_one(walker *w, size_t len, const struct stat *st) {
    vrift_snap *s = w->s;
    int64_t i = walk_snap_find(s, w->path, len, vrift_fnv1a64(w->path, len));
    unsigned kind = st->st_mode & S_IFMT;
    if (i >= 0 && (kind == S_IFREG || kind == S_IFDIR || kind == S_IFLNK)) {
        const uint8_t *rec = s->records + (size_t)i * VRIFT_RECORD_SIZE;
        const uint8_t *digest = rec + VRIFT_RECORD_SIZE - 32;
        uint8_t want[VRIFT_RECORD_SIZE];
        int ok = 0;
        if (kind == S_IFREG) {
            if (!walk_zero_digest(digest)) { /* an unhashed file is hashed by Python */
                vrift_record_from_stat(want, st, 0, digest);
                ok = memcmp(want, rec, sizeof want) == 0;
            }
        } else {
            vrift_record_from_stat(want, st, kind == S_IFDIR ? VRIFT_F_DIR : VRIFT_F_SYMLINK, NULL);
            ok = memcmp(want, rec, sizeof want) == 0;
        }
        if (ok) {
            s->state[i] |= SEEN;
            if (kind == S_IFREG) w->files++;
            else if (kind == S_IFDIR) w->subdirs++;
            else w->symlinks++;
            return;
        }
    }
    walk_put_path(w, &w->changed, len);
}

/* Every name below the directory open as `dfd` (its relative path is w->path[0, plen));
 * takes ownership of dfd. */
static void ingest_dir(walker *w, int dfd, size_t plen, int depth) {
    DIR *d = fdopendir(dfd);
    if (!d) {
        walk_put_skip(w, 'L', errno, plen);
        close(dfd);
        return;
    }
    wbuf subs = {0};
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) walk_put_skip(w, 'L', errno, plen); /* what was listed so far stands */
            break;
        }
        const char *name = de->d_name;
        size_t n = strlen(name);
        if (walk_is_dot(name) || walk_ignored(w, name, n)) continue;
        size_t len = walk_child_path(w, plen, name, n);
        if (!len) break;
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno != ENOENT) walk_put_skip(w, 'S', errno, len); /* gone meanwhile: as if never listed */
            continue;
        }
        ingest_one(w, len, &st);
        if (S_ISDIR(st.st_mode) && wb_put(&subs, name, n + 1)) w->err = -ENOMEM;
        if (w->err) break;
    }
    for (size_t at = 0; at < subs.len && !w->err; at += strlen(subs.p + at) + 1) {
        const char *name = subs.p + at;
        size_t len = walk_child_path(w, plen, name, strlen(name));
        if (!len) break;
        if (depth + 1 > WALK_DEPTH_MAX) {
            w->err = -ELOOP;
            break;
        }
        int cfd = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE) w->err = -errno;
            else walk_put_skip(w, 'L', errno, len);
            continue;
        }
        if (!pool_give(w, cfd, len, depth + 1)) ingest_dir(w, cfd, len, depth + 1);
    }
    free(subs.p);
    closedir(d);
}

/* The whole tree under `root` against the snapshot's records, on up to `threads` threads.
 * Returns 0 (results in *out), 1 when the root itself is gone (ENOENT, ENOTDIR: nothing to
 * walk), or a negative errno when the tree must be walked in Python (too deep, a path too
 * long, out of fds or memory). */
EXPORT int vrift_walk_ingest(vrift_snap *s, const char *root, const char *ign, size_t ign_len, int threads,
                             vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    if (!s || !s->records) return -EINVAL;
    threads = walk_threads(threads);
    walker *ws = calloc((size_t)threads, sizeof *ws);
    if (!ws) return -ENOMEM;
    for (int i = 0; i < threads; i++) walk_init(&ws[i], s, root, ign, ign_len);
    struct stat st;
    if (lstat(root, &st) != 0) {
        int rc = errno == ENOENT || errno == ENOTDIR ? 1 : -errno;
        free(ws);
        return rc;
    }
    ingest_one(&ws[0], 0, &st);
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        walk_put_skip(&ws[0], 'L', errno, 0);
    } else if (threads == 1) {
        ingest_dir(&ws[0], fd, 0, 0);
    } else {
        walk_pool p = {.threads = threads};
        pthread_mutex_init(&p.mu, NULL);
        pthread_cond_init(&p.cv, NULL);
        char *top = calloc(1, 1);
        pthread_t tids[WALK_THREADS_MAX];
        int started = 1;
        if (!top) {
            close(fd);
            ws[0].err = -ENOMEM;
        } else {
            p.items[p.n++] = (pool_item){fd, 0, 0, top};
            for (int i = 0; i < threads; i++) ws[i].pool = &p;
            for (int i = 1; i < threads; i++) {
                if (pthread_create(&tids[i], NULL, pool_run, &ws[i]) != 0) break;
                started++;
            }
            pthread_mutex_lock(&p.mu);
            p.threads = started; /* fewer if a thread could not be made */
            pthread_mutex_unlock(&p.mu);
            pool_run(&ws[0]);
            for (int i = 1; i < started; i++) pthread_join(tids[i], NULL);
        }
        pthread_mutex_destroy(&p.mu);
        pthread_cond_destroy(&p.cv);
    }
    int rc = walk_finish(ws, threads, out);
    free(ws);
    return rc;
}
