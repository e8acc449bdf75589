/*
 * walk.h — what walk.c (the snapshot, the results, the re-ingest walk) and settle.c (the
 * reconcile's settle) share.  Private to the helper library: nothing here is exported.
 */
#ifndef VRIFT_WALK_H
#define VRIFT_WALK_H

#include "vrift_vdir.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/stat.h>

#define EXPORT __attribute__((visibility("default")))

#define WALK_DEPTH_MAX 256 /* deeper: the caller walks in Python (one fd per level is open here) */
#define WALK_PATH_MAX 4096 /* root + "/" + relative path, with the NUL: longer fails in Python too */
#define WALK_THREADS_MAX 8

#define SEEN 1u   /* the path was listed (and, in an ingest, found unchanged) */
#define LISTED 2u /* the directory was listed: its indexed children that were not seen are gone */

typedef struct wbuf {
    char *p;
    size_t len, cap;
} wbuf;

/* The index's paths (and records), as the caller joined them; the caller's buffers. */
typedef struct vrift_snap {
    const char *paths;      /* NUL-separated */
    const uint8_t *records; /* n records of VRIFT_RECORD_SIZE, or NULL */
    uint32_t n, mask;
    uint32_t *off, *len;
    uint32_t *table; /* index + 1, 0 empty */
    uint8_t *state;  /* SEEN | LISTED per path: each byte written by one thread only */
} vrift_snap;

/* What a call hands back; every buffer malloc'd, released by vrift_walk_free. */
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

struct walk_pool;

/* One thread's walk: its own path buffer, results and counters; the snapshot is shared. */
typedef struct walker {
    vrift_snap *s;
    const char *ign; /* names joined by NUL */
    size_t ign_len;
    wbuf changed, skipped, dirs, refresh;
    char path[WALK_PATH_MAX]; /* the current relative path */
    size_t room;              /* longest relative path, in bytes: WALK_PATH_MAX - root - "/" - NUL */
    int err;                  /* fatal: negative errno, the caller walks in Python */
    struct walk_pool *pool;   /* ingest: where idle threads take directories from */
    void *base;               /* settle: the VDir mapping */
    uint64_t size;
    uint64_t files, subdirs, symlinks, confirmed;
} walker;

int64_t walk_snap_find(const vrift_snap *s, const char *p, size_t l, uint64_t hash);
int walk_ignored(const walker *w, const char *name, size_t n);
void walk_put_path(walker *w, wbuf *b, size_t len);
void walk_put_skip(walker *w, char kind, int err, size_t len);
size_t walk_child_path(walker *w, size_t plen, const char *name, size_t n);
void walk_init(walker *w, vrift_snap *s, const char *root, const char *ign, size_t ign_len);
int walk_finish(walker *ws, int n, vrift_walk_out *out);
int walk_threads(int wanted);

static inline int walk_is_dot(const char *name) {
    return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
}

static inline int walk_zero_digest(const uint8_t *d) {
    for (int i = 0; i < 32; i++)
        if (d[i]) return 0;
    return 1;
}

/* vdir_native.c */
vrift_entry *vrift_entry_at(void *base, uint64_t size, uint32_t index);
int64_t vrift_locate(void *base, uint64_t size, const char *rel, size_t len, uint64_t hash, uint32_t *slot_out);
uint32_t vrift_flags_clear(void *base, uint64_t size, uint32_t index, uint32_t bits);

#endif
