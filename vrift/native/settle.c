/*
 * settle.c — a restarted daemon's reconcile in C (vrift/daemon/reconcile.py _walk_native).
 *
 * A few directories at a time, each under an exclusive non-blocking flock of the directory:
 * every name is lstat-ed relative to the directory's fd and compared with its published VDir
 * entry, and DIRTY is cleared where they agree, before the flock is released — the protocol of
 * vrift/daemon/commit.py settle(): a client renames into a directory, and marks the name DIRTY
 * just before, under a shared flock of it, so its rename is either seen by the comparison or
 * marks the name again after the clear.  A busy flock confirms nothing in that directory.
 *
 * The caller holds the VDir writer's lock (no publish, no remap meanwhile); clients only OR
 * DIRTY in, atomically, outside the checksum.  Directories are independent: up to `threads`
 * threads take them in order from the request.
 */
#define _GNU_SOURCE
#include "walk.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <unistd.h>

/* 1 when the published entry `e` describes `st` (DIRTY and COMPLETE_DIR aside). */
static int entry_matches(const vrift_entry *e, const struct stat *st) {
    vrift_entry cur;
    memcpy(&cur, e, sizeof cur); /* one value of every field; DIRTY may change meanwhile */
    unsigned kind = st->st_mode & S_IFMT;
    uint32_t flags = cur.flags & ~(VRIFT_F_DIRTY | VRIFT_F_COMPLETE_DIR);
    uint32_t want_flags = kind == S_IFDIR ? VRIFT_F_DIR : kind == S_IFLNK ? VRIFT_F_SYMLINK : 0;
    if (flags != want_flags || (kind != S_IFREG && kind != S_IFDIR && kind != S_IFLNK)) return 0;
    if (kind == S_IFREG && walk_zero_digest(cur.digest)) return 0;
    uint8_t want[VRIFT_RECORD_SIZE];
    vrift_record_from_stat(want, st, cur.flags, kind == S_IFREG ? cur.digest : NULL);
    cur.checksum = 0; /* sealed in the VDir, zero in a record */
    return memcmp(want, (const uint8_t *)&cur + VRIFT_RECORD_OFFSET, sizeof want) == 0;
}

/* The published entry of w->path[0, len) (tombstones included), or NULL. */
static vrift_entry *published(walker *w, size_t len, uint64_t hash, int64_t *index) {
    uint32_t slot;
    int64_t i = vrift_locate(w->base, w->size, w->path, len, hash, &slot);
    if (i < -1) w->err = -EIO; /* the header no longer checks: the caller rebuilds */
    *index = i;
    return i >= 0 ? vrift_entry_at(w->base, w->size, (uint32_t)i) : NULL;
}

static void clear_dirty(walker *w, int64_t index) {
    vrift_flags_clear(w->base, w->size, (uint32_t)index, VRIFT_F_DIRTY);
    w->confirmed++;
}

static void mark(walker *w, size_t len, uint64_t hash, uint8_t bit) {
    int64_t i = walk_snap_find(w->s, w->path, len, hash);
    if (i >= 0) w->s->state[i] |= bit;
}

/* One directory (relative path in w->path[0, plen)): its own entry and its non-directory
 * children are compared and cleared under its exclusive flock; its indexed subdirectories go
 * to `dirs`, new ones (and everything not confirmed) to `changed`, its own entry to `refresh`
 * when not confirmed.  Returns the names it handled. */
static size_t settle_dir(walker *w, int rootfd, size_t plen, const char *exempt) {
    int fd = plen ? openat(rootfd, w->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                  : openat(rootfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        walk_put_skip(w, 'L', errno, plen); /* its entries keep asking the kernel; the watcher re-reads it */
        return 1;
    }
    int locked = flock(fd, LOCK_EX | LOCK_NB) == 0; /* busy: a client is between its mark and its rename */
    uint64_t h = vrift_fnv1a64(w->path, plen);
    mark(w, plen, h, LISTED);
    int64_t own_i;
    vrift_entry *own = published(w, plen, h, &own_i);
    struct stat st;
    int own_ok = locked && own && fstat(fd, &st) == 0 && entry_matches(own, &st);
    int complete = own && (own->flags & VRIFT_F_COMPLETE_DIR);
    DIR *d = fdopendir(fd);
    if (!d) {
        walk_put_skip(w, 'L', errno, plen);
        close(fd);
        return 1;
    }
    size_t names = 1;
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(d);
        if (!de) {
            if (errno) own_ok = 0; /* not every name was seen */
            break;
        }
        const char *name = de->d_name;
        size_t n = strlen(name);
        if (walk_is_dot(name)) continue;
        size_t len = walk_child_path(w, plen, name, n);
        if (!len) break;
        int skip = walk_ignored(w, name, n);
        if (skip && !complete) continue;
        h = vrift_fnv1a64(w->path, len);
        int64_t ci;
        vrift_entry *e = published(w, len, h, &ci);
        if (w->err) break;
        int live = e && !(e->flags & VRIFT_F_DELETED);
        /* a miss below a COMPLETE_DIR is answered ENOENT: every name must be known (commit.py _on_disk) */
        if (complete && !live && !(plen == 0 && strcmp(name, exempt) == 0)) own_ok = 0;
        if (skip) continue;
        names++;
        mark(w, len, h, SEEN);
        if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            walk_put_path(w, &w->changed, len);
        } else if (S_ISDIR(st.st_mode)) {
            /* settled when it is listed itself, under its own flock; a new one is re-read whole */
            walk_put_path(w, live && (e->flags & VRIFT_F_DIR) ? &w->dirs : &w->changed, len);
        } else if (locked && live && entry_matches(e, &st)) {
            clear_dirty(w, ci);
        } else {
            walk_put_path(w, &w->changed, len);
        }
        if (w->err) break;
    }
    w->path[plen] = 0;
    if (own_ok && !w->err) clear_dirty(w, own_i); /* still under the flock */
    else walk_put_path(w, &w->refresh, plen);
    closedir(d); /* releases the flock */
    return names;
}

typedef struct settle_job {
    walker *w;
    int rootfd;
    const char *exempt;
    const char *dirs;
    const uint32_t *off, *len;
    uint32_t count;
    uint32_t next;  /* the next directory to take: the ones taken are always a prefix */
    uint64_t names; /* handled so far, by every thread */
    uint64_t max_names;
} settle_job;

typedef struct settle_arg {
    settle_job *job;
    walker *w;
} settle_arg;

static void *settle_run(void *arg) {
    settle_arg *a = arg;
    settle_job *j = a->job;
    walker *w = a->w;
    while (!w->err && __atomic_load_n(&j->names, __ATOMIC_RELAXED) < j->max_names) {
        uint32_t i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (i >= j->count) break;
        if (j->len[i] > w->room) {
            w->err = -ENAMETOOLONG;
            break;
        }
        memcpy(w->path, j->dirs + j->off[i], j->len[i]);
        w->path[j->len[i]] = 0;
        __atomic_add_fetch(&j->names, settle_dir(w, j->rootfd, j->len[i], j->exempt), __ATOMIC_RELAXED);
    }
    return NULL;
}

/* Settle the directories `dirs` (relative paths, each NUL-terminated, `dirs_len` bytes) against
 * the VDir mapped at base/size on up to `threads` threads, marking what is listed in the
 * snapshot; no directory is started once `max_names` names were handled (out->dirs_done says
 * how many of the request's first directories were).  Returns 0, or a negative errno (-EIO: the
 * mapping's header no longer checks). */
EXPORT int vrift_walk_settle(vrift_snap *s, const char *root, const char *ign, size_t ign_len, const char *exempt,
                             const char *dirs, size_t dirs_len, void *base, uint64_t size, uint64_t max_names,
                             int threads, vrift_walk_out *out) {
    memset(out, 0, sizeof *out);
    if (!s || dirs_len >= UINT32_MAX) return -EINVAL;
    uint32_t count = 0;
    for (size_t i = 0; i < dirs_len; i++) count += dirs[i] == 0;
    if (count == 0) return 0;
    threads = walk_threads(threads);
    if ((uint32_t)threads > count) threads = (int)count;
    settle_job j = {.exempt = exempt, .dirs = dirs, .count = count, .max_names = max_names};
    uint32_t *off = malloc(sizeof *off * count), *len = malloc(sizeof *len * count);
    walker *ws = calloc((size_t)threads, sizeof *ws);
    int rootfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = rootfd < 0 ? -errno : 0;
    if (!rc && (!off || !len || !ws)) rc = -ENOMEM;
    if (!rc) {
        for (size_t at = 0, i = 0; i < count; i++) {
            const char *end = memchr(dirs + at, 0, dirs_len - at); /* found: count said so */
            off[i] = (uint32_t)at;
            len[i] = (uint32_t)(end - (dirs + at));
            at += len[i] + 1;
        }
        j.rootfd = rootfd, j.off = off, j.len = len;
        settle_arg args[WALK_THREADS_MAX];
        pthread_t tids[WALK_THREADS_MAX];
        int started = 1;
        for (int i = 0; i < threads; i++) {
            walk_init(&ws[i], s, root, ign, ign_len);
            ws[i].base = base;
            ws[i].size = size;
            args[i] = (settle_arg){&j, &ws[i]};
        }
        for (int i = 1; i < threads; i++) {
            if (pthread_create(&tids[i], NULL, settle_run, &args[i]) != 0) break;
            started++;
        }
        settle_run(&args[0]);
        for (int i = 1; i < started; i++) pthread_join(tids[i], NULL);
        rc = walk_finish(ws, threads, out);
        out->dirs_done = j.next < count ? j.next : count;
    }
    if (rootfd >= 0) close(rootfd);
    free(off);
    free(len);
    free(ws);
    return rc;
}
