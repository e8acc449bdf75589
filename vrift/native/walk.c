/*
 * walk.c — the tree walk of a re-ingest and of a restarted daemon's reconcile, in C.
 *
 * Confirming that an indexed path is unchanged is one lstat and a 112-byte compare; in Python
 * the objects made around that cost ten times the syscall.  Both walks here list directories
 * relative to directory fds (fdopendir/readdir, fstatat with AT_SYMLINK_NOFOLLOW, openat with
 * O_NOFOLLOW), never follow a symlink, skip the always-ignored names the caller passes, and hand
 * back only what Python must handle itself: paths that differ or are new, what could not be
 * read (kind, errno, path), and which indexed paths were seen (a byte per path of a snapshot).
 *
 *  - vrift_walk_ingest: the whole tree against the index's records (vrift/vdir/native_walk.py);
 *    equal to Entry.stat_record(lstat, flags, digest) means unchanged.
 *  - vrift_walk_settle: a few directories against the published VDir entries, each under an
 *    exclusive non-blocking flock of the directory, clearing DIRTY while it is held
 *    (vrift/daemon/commit.py settle(): a client renames into a directory under a shared flock).
 *
 * Loaded with ctypes: every call runs without the GIL.  Memory the results hold is malloc'd
 * here and released by vrift_walk_free; the snapshot refers to the caller's buffers, which
 * the caller keeps alive while the snapshot lives.
 */
#define _GNU_SOURCE
#include "vrift_vdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

#define WALK_DEPTH_MAX 256 /* deeper: the caller walks in Python (one fd per level is open here) */
#define WALK_PATH_MAX 4096 /* root + "/" + relative path, with the NUL: longer fails in Python too */

#define SEEN 1u   /* the path was listed (and, in an ingest, found unchanged) */
#define LISTED 2u /* the directory was listed: its indexed children that were not seen are gone */

/* vdir_native.c */
vrift_entry *vrift_entry_at(void *base, uint64_t size, uint32_t index);
int64_t vrift_locate(void *base, uint64_t size, const char *rel, size_t len, uint64_t hash, uint32_t *slot_out);
uint32_t vrift_flags_clear(void *base, uint64_t size, uint32_t index, uint32_t bits);

/* ------------------------------------------------------------------ growable buffers */
typedef struct wbuf {
    char *p;
    size_t len, cap;
} wbuf;

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
typedef struct vrift_snap {
    const char *paths;      /* the caller's: NUL-separated */
    const uint8_t *records; /* the caller's: n records of VRIFT_RECORD_SIZE, or NULL */
    uint32_t n, mask;
    uint32_t *off, *len;
    uint32_t *table; /* index + 1, 0 empty */
    uint8_t *state;  /* SEEN | LISTED per path */
} vrift_snap;

EXPORT void vrift_snap_free(vrift_snap *s) {
    if (!s) return;
    free(s->off);
    free(s->len);
    free(s->table);
    free(s->state);
    free(s);
}

/* A snapshot of `n` paths (`paths`: n names joined by NUL, `paths_len` bytes) with their
 * records (or NULL); NULL when the input does not hold exactly n names or memory is short. */
EXPORT vrift_snap *vrift_snap_new(const char *paths, size_t paths_len, const uint8_t *records, uint32_t n) {
    if (n == 0 || n > UINT32_MAX / 4 || paths_len > UINT32_MAX) return NULL;
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
        if (at > paths_len) goto fail;
        const char *end = memchr(paths + at, 0, paths_len - at);
        size_t l = end ? (size_t)(end - (paths + at)) : paths_len - at;
        if (!end && i + 1 != n) goto fail; /* fewer names than records */
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

static int64_t snap_find(const vrift_snap *s, const char *p, size_t l) {
    uint32_t j = (uint32_t)vrift_fnv1a64(p, l) & s->mask;
    for (uint32_t probes = 0; probes <= s->mask; probes++, j = (j + 1) & s->mask) {
        uint32_t e = s->table[j];
        if (!e) return -1;
        if (s->len[e - 1] == l && memcmp(s->paths + s->off[e - 1], p, l) == 0) return e - 1;
    }
    return -1;
}

/* ------------------------------------------------------------------ results */
typedef struct vrift_walk_out {
    char *changed; /* NUL-terminated paths: differ, are new, or (settle) need a re-read */
    uint64_t changed_len;
    char *skipped; /* "<kind><errno>:<path>\0": L could not list, S could not lstat */
    uint64_t skipped_len;
    char *dirs; /* settle: directories to settle next (indexed, listed here) */
    uint64_t dirs_len;
    char *refresh; /* settle: directories whose own entry was not confirmed */
    uint64_t refresh_len;
    uint64_t files, subdirs, symlinks; /* ingest: unchanged paths by kind */
    uint64_t confirmed;                /* settle: entries whose DIRTY was cleared */
    uint64_t dirs_done;                /* settle: directories of the request handled */
} vrift_walk_out;

EXPORT void vrift_walk_free(vrift_walk_out *o) {
    free(o->changed);
    free(o->skipped);
    free(o->dirs);
    free(o->refresh);
    memset(o, 0, sizeof *o);
}

typedef struct walker {
    vrift_snap *s;
    const char *ign; /* names joined by NUL */
    size_t ign_len;
    wbuf changed, skipped, dirs, refresh;
    char path[WALK_PATH_MAX]; /* the current relative path */
    size_t room;              /* longest relative path, in bytes: WALK_PATH_MAX - root - "/" - NUL */
    int err;                  /* fatal: negative errno, the caller walks in Python */
    void *base;               /* settle: the VDir mapping */
    uint64_t size;
    uint64_t files, subdirs, symlinks, confirmed;
} walker;

static int ignored(const walker *w, const char *name, size_t n) {
    size_t at = 0;
    while (at <= w->ign_len && w->ign_len) {
        const char *end = memchr(w->ign + at, 0, w->ign_len - at);
        size_t l = end ? (size_t)(end - (w->ign + at)) : w->ign_len - at;
        if (l == n && memcmp(w->ign + at, name, n) == 0) return 1;
        at += l + 1;
    }
    return 0;
}

static void put_path(walker *w, wbuf *b, size_t len) {
    if (wb_put(b, w->path, len) || wb_put(b, "", 1)) w->err = -ENOMEM;
}

static void put_skip(walker *w, char kind, int err, size_t len) {
    char head[16];
    int n = snprintf(head, sizeof head, "%c%d:", kind, err);
    if (n < 0 || (size_t)n >= sizeof head || wb_put(&w->skipped, head, (size_t)n)) {
        w->err = -ENOMEM;
        return;
    }
    put_path(w, &w->skipped, len);
}

/* w->path becomes <dir of length plen>/<name>; returns its length, or 0 with w->err set when
 * it does not fit (the Python walk would get ENAMETOOLONG: it walks instead). */
static size_t child_path(walker *w, size_t plen, const char *name, size_t n) {
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

static int is_dot(const char *name) { return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])); }

static int zero_digest(const uint8_t *d) {
    for (int i = 0; i < 32; i++)
        if (d[i]) return 0;
    return 1;
}

/* ------------------------------------------------------------------ ingest */
/* One path against its indexed record: unchanged ones are SEEN and counted, the rest listed
 * for Python (new, changed, or not a kind the index keeps). */
static void ingest_one(walker *w, size_t len, const struct stat *st) {
    vrift_snap *s = w->s;
    int64_t i = snap_find(s, w->path, len);
    unsigned kind = st->st_mode & S_IFMT;
    if (i >= 0 && (kind == S_IFREG || kind == S_IFDIR || kind == S_IFLNK)) {
        const uint8_t *rec = s->records + (size_t)i * VRIFT_RECORD_SIZE;
        const uint8_t *digest = rec + VRIFT_RECORD_SIZE - 32;
        uint8_t want[VRIFT_RECORD_SIZE];
        int ok = 0;
        if (kind == S_IFREG) {
            if (!zero_digest(digest)) {
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
    put_path(w, &w->changed, len);
}

/* Every name below the directory open as `dfd` (its relative path is w->path[0, plen));
 * takes ownership of dfd. */
static void ingest_dir(walker *w, int dfd, size_t plen, int depth) {
    DIR *d = fdopendir(dfd);
    if (!d) {
        put_skip(w, 'L', errno, plen);
        close(dfd);
        return;
    }
    wbuf subs = {0};
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) put_skip(w, 'L', errno, plen);
            break;
        }
        const char *name = de->d_name;
        size_t n = strlen(name);
        if (is_dot(name) || ignored(w, name, n)) continue;
        size_t len = child_path(w, plen, name, n);
        if (!len) break;
        struct stat st;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno != ENOENT) put_skip(w, 'S', errno, len); /* gone meanwhile: as if never listed */
            continue;
        }
        ingest_one(w, len, &st);
        if (S_ISDIR(st.st_mode) && wb_put(&subs, name, n + 1)) w->err = -ENOMEM;
        if (w->err) break;
    }
    for (size_t at = 0; at < subs.len && !w->err; at += strlen(subs.p + at) + 1) {
        const char *name = subs.p + at;
        size_t len = child_path(w, plen, name, strlen(name));
        if (!len) break;
        if (depth + 1 > WALK_DEPTH_MAX) {
            w->err = -ELOOP;
            break;
        }
        int cfd = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (cfd < 0) {
            if (errno == EMFILE || errno == ENFILE) w->err = -errno;
            else put_skip(w, 'L', errno, len);
            continue;
        }
        ingest_dir(w, cfd, len, depth + 1);
    }
    free(subs.p);
    closedir(d);
}

static void walk_init(walker *w, vrift_snap *s, const char *root, const char *ign, size_t ign_len) {
    memset(w, 0, sizeof *w);
    w->s = s;
    w->ign = ign;
    w->ign_len = ign_len;
    size_t r = strlen(root);
    w->room = r + 2 < WALK_PATH_MAX ? WALK_PATH_MAX - r - 2 : 0;
}

static int walk_finish(walker *w, vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    if (w->err) {
        free(w->changed.p);
        free(w->skipped.p);
        free(w->dirs.p);
        free(w->refresh.p);
        return w->err;
    }
    out->changed = w->changed.p, out->changed_len = w->changed.len;
    out->skipped = w->skipped.p, out->skipped_len = w->skipped.len;
    out->dirs = w->dirs.p, out->dirs_len = w->dirs.len;
    out->refresh = w->refresh.p, out->refresh_len = w->refresh.len;
    out->files = w->files, out->subdirs = w->subdirs, out->symlinks = w->symlinks;
    out->confirmed = w->confirmed;
    return 0;
}

/* The whole tree under `root` against the snapshot's records.  Returns 0 (results in *out),
 * 1 when the root itself is gone (ENOENT, ENOTDIR: nothing to walk), or a negative errno when
 * the tree must be walked in Python (too deep, a path too long, out of fds or memory). */
EXPORT int vrift_walk_ingest(vrift_snap *s, const char *root, const char *ign, size_t ign_len,
                             vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    if (!s || !s->records) return -EINVAL;
    walker w;
    walk_init(&w, s, root, ign, ign_len);
    struct stat st;
    if (lstat(root, &st) != 0) return errno == ENOENT || errno == ENOTDIR ? 1 : -errno;
    ingest_one(&w, 0, &st);
    int fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) put_skip(&w, 'L', errno, 0);
    else ingest_dir(&w, fd, 0, 0);
    return walk_finish(&w, out);
}

/* ------------------------------------------------------------------ settle (reconcile) */
/* 1 when the published entry `e` describes `st` (DIRTY and COMPLETE_DIR aside). */
static int entry_matches(const vrift_entry *e, const struct stat *st) {
    vrift_entry cur;
    memcpy(&cur, e, sizeof cur); /* one value of every field; DIRTY may change meanwhile */
    unsigned kind = st->st_mode & S_IFMT;
    uint32_t flags = cur.flags & ~(VRIFT_F_DIRTY | VRIFT_F_COMPLETE_DIR);
    uint32_t want_flags = kind == S_IFDIR ? VRIFT_F_DIR : kind == S_IFLNK ? VRIFT_F_SYMLINK : 0;
    if (flags != want_flags || (kind != S_IFREG && kind != S_IFDIR && kind != S_IFLNK)) return 0;
    if (kind == S_IFREG && zero_digest(cur.digest)) return 0;
    uint8_t want[VRIFT_RECORD_SIZE];
    vrift_record_from_stat(want, st, cur.flags, kind == S_IFREG ? cur.digest : NULL);
    cur.checksum = 0; /* sealed in the VDir, zero in a record */
    return memcmp(want, (const uint8_t *)&cur + VRIFT_RECORD_OFFSET, sizeof want) == 0;
}

/* The published entry of w->path[0, len) (tombstones included), or NULL. */
static vrift_entry *published(walker *w, size_t len, int64_t *index) {
    uint32_t slot;
    int64_t i = vrift_locate(w->base, w->size, w->path, len, vrift_fnv1a64(w->path, len), &slot);
    if (i < -1) w->err = -EIO; /* the header no longer checks: the caller rebuilds */
    *index = i;
    return i >= 0 ? vrift_entry_at(w->base, w->size, (uint32_t)i) : NULL;
}

static void clear_dirty(walker *w, int64_t index) {
    vrift_flags_clear(w->base, w->size, (uint32_t)index, VRIFT_F_DIRTY);
    w->confirmed++;
}

/* One directory (relative path in w->path[0, plen)): its own entry and its non-directory
 * children are compared and cleared under its exclusive flock; its indexed subdirectories go
 * to `dirs`, new ones (and everything not confirmed) to `changed`.  Returns the names listed. */
static size_t settle_dir(walker *w, int rootfd, size_t plen, const char *exempt) {
    int fd = plen ? openat(rootfd, w->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                  : openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        put_skip(w, 'L', errno, plen); /* its entries keep asking the kernel; the watcher re-reads it */
        return 0;
    }
    int locked = flock(fd, LOCK_EX | LOCK_NB) == 0; /* busy: a client is between its mark and its rename */
    int64_t own_i, si = snap_find(w->s, w->path, plen);
    if (si >= 0) w->s->state[si] |= LISTED;
    vrift_entry *own = published(w, plen, &own_i);
    struct stat st;
    int own_ok = locked && own && fstat(fd, &st) == 0 && entry_matches(own, &st);
    int complete = own && (own->flags & VRIFT_F_COMPLETE_DIR);
    DIR *d = fdopendir(fd);
    if (!d) {
        put_skip(w, 'L', errno, plen);
        close(fd);
        return 0;
    }
    size_t names = 0;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) own_ok = 0;
            break;
        }
        const char *name = de->d_name;
        size_t n = strlen(name);
        if (is_dot(name)) continue;
        size_t len = child_path(w, plen, name, n);
        if (!len) break;
        int64_t ci;
        vrift_entry *e = published(w, len, &ci);
        if (w->err) break;
        int live = e && !(e->flags & VRIFT_F_DELETED);
        if (complete && !live && !(plen == 0 && strcmp(name, exempt) == 0)) own_ok = 0; /* see _on_disk */
        if (ignored(w, name, n)) continue;
        names++;
        si = snap_find(w->s, w->path, len);
        if (si >= 0) w->s->state[si] |= SEEN;
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            put_path(w, &w->changed, len);
            continue;
        }
        if (S_ISDIR(st.st_mode)) {
            /* settled when it is listed itself, under its own flock; a new one is re-read whole */
            put_path(w, live && (e->flags & VRIFT_F_DIR) ? &w->dirs : &w->changed, len);
        } else if (locked && live && entry_matches(e, &st)) {
            clear_dirty(w, ci);
        } else {
            put_path(w, &w->changed, len);
        }
        if (w->err) break;
    }
    w->path[plen] = 0;
    if (own_ok && !w->err) clear_dirty(w, own_i); /* still under the flock */
    else put_path(w, &w->refresh, plen);
    closedir(d); /* releases the flock */
    return names + 1;
}

/* Settle the directories `dirs` (relative paths, each NUL-terminated, `dirs_len` bytes) against
 * the VDir mapped at base/size, marking what is listed in the snapshot; stops once `max_names`
 * names were handled (out->dirs_done says how many directories).  Returns 0, or a negative
 * errno (-EIO: the mapping's header no longer checks). */
EXPORT int vrift_walk_settle(vrift_snap *s, const char *root, const char *ign, size_t ign_len, const char *exempt,
                             const char *dirs, size_t dirs_len, void *base, uint64_t size, uint64_t max_names,
                             vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    if (!s) return -EINVAL;
    walker w;
    walk_init(&w, s, root, ign, ign_len);
    w.base = base;
    w.size = size;
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) return -errno;
    uint64_t names = 0, done = 0;
    for (size_t at = 0; at < dirs_len && names < max_names && !w.err;) {
        const char *end = memchr(dirs + at, 0, dirs_len - at);
        if (!end) break;
        size_t l = (size_t)(end - (dirs + at));
        if (l > w.room) {
            w.err = -ENAMETOOLONG;
            break;
        }
        memcpy(w.path, dirs + at, l);
        w.path[l] = 0;
        names += settle_dir(&w, rootfd, l, exempt);
        done++;
        at += l + 1;
    }
    close(rootfd);
    int rc = walk_finish(&w, out);
    out->dirs_done = done;
    return rc;
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
            int64_t parent = snap_find(s, p, slash ? (size_t)(slash - p) : 0);
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
