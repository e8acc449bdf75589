/*
 * vrift_vdir.h — the one description of the VDir shared-memory layout (version 2).
 *
 * Included by the preload library (readers) and by the small helper library that the
 * Python daemon loads with ctypes (writer atomics).  vrift/vdir/layout.py mirrors these
 * numbers and tests/unit/test_layout.py checks the mirror against this header.
 *
 * Rules for everything `static inline` here: no allocation, no lock, no syscall, no
 * logging — the preload library calls it on every stat().
 */
#ifndef VRIFT_VDIR_H
#define VRIFT_VDIR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>

#define VRIFT_VDIR_MAGIC 0x56524654u /* "VRFT" */
#define VRIFT_VDIR_VERSION 2u

#define VRIFT_HEADER_SIZE 8192u     /* fixed; root path lives in its second half */
#define VRIFT_ROOT_OFFSET 4096u
#define VRIFT_ROOT_MAX 4096u        /* includes the NUL */
#define VRIFT_REL_MAX 4095u         /* longest relative path in the index, in bytes */
#define VRIFT_BLOOM_BYTES 32768u    /* 2^18 bits */
#define VRIFT_BLOOM_MASK ((uint64_t)VRIFT_BLOOM_BYTES * 8u - 1u)
#define VRIFT_ENTRY_SIZE 128u
#define VRIFT_SLOT_SIZE 8u
#define VRIFT_MAX_LOAD_NUM 7u       /* table load factor <= 7/10 */
#define VRIFT_MAX_LOAD_DEN 10u
#define VRIFT_READ_RETRIES 64       /* seqlock retries before a reader gives up */
#define VRIFT_LOOKUP_CORRUPT (-2)   /* vrift_lookup: an entry failed its checksum */

/* Names in the shared-memory directory (VRIFT_SHM_DIR, default /dev/shm).  Every file of
 * a user lives in a private directory <shm>/vrift-<euid>/ (0700, owned by the user), so no
 * other user can pre-create or replace a name there. */
#define VRIFT_SHM_USER_DIR_PREFIX "vrift-"      /* + decimal euid */
#define VRIFT_VDIR_NAME_PREFIX "vrift_vdir_"    /* + the first VRIFT_VDIR_ID_CHARS of the project id */
#define VRIFT_VDIR_ID_CHARS 16u
#define VRIFT_COUNTERS_NAME_PREFIX "vrift_counters_" /* + pid of `vrift wrap` */

/* entry flags */
#define VRIFT_F_DIRTY 1u
#define VRIFT_F_DELETED 2u
#define VRIFT_F_SYMLINK 4u
#define VRIFT_F_DIR 8u
#define VRIFT_F_COMPLETE_DIR 16u /* every child of this directory is indexed */

/* header_flags */
#define VRIFT_H_RETIRED 1u /* a newer file replaced this one: remap by name */
#define VRIFT_H_DEAD 2u    /* its writer (the daemon) stopped: nobody keeps it true, readers fall back */

/* A daemon-written file carries a heartbeat (CLOCK_MONOTONIC ms, every ~50 ms); a reader
 * finding it older than this (a daemon killed -9, or hung) stops answering from memory.
 * Checked once every VRIFT_HEARTBEAT_EVERY lookups of a thread, with the vDSO coarse clock
 * (no syscall): a dead daemon's table is served for at most that long, plus that many
 * lookups. */
#define VRIFT_HEARTBEAT_STALE_MS 3000u
#define VRIFT_HEARTBEAT_EVERY 1024u

typedef struct vrift_header {
    uint32_t magic;            /*   0 */
    uint32_t version;          /*   4 */
    uint64_t generation;       /*   8 seqlock publish counter: odd while the writer writes */
    uint64_t file_size;        /*  16 bytes the file must have */
    uint32_t header_size;      /*  24 == VRIFT_HEADER_SIZE */
    uint32_t entry_size;       /*  28 == VRIFT_ENTRY_SIZE */
    uint32_t entry_count;      /*  32 live entries (not DELETED) */
    uint32_t entry_used;       /*  36 dense records in use, tombstones included */
    uint32_t entry_capacity;   /*  40 dense records available */
    uint32_t table_capacity;   /*  44 slots, a power of two */
    uint64_t bloom_offset;     /*  48 */
    uint64_t table_offset;     /*  56 */
    uint64_t entries_offset;   /*  64 */
    uint64_t strings_offset;   /*  72 */
    uint64_t strings_capacity; /*  80 */
    uint64_t strings_used;     /*  88 */
    uint32_t header_flags;     /*  96 VRIFT_H_* */
    uint32_t root_len;         /* 100 strlen(root) */
    uint8_t project_id[16];    /* 104 first 16 bytes of the project id */
    uint64_t index_generation; /* 120 LMDB/WAL generation this table reflects */
    uint32_t blksize;          /* 128 st_blksize reported for entries */
    uint32_t geometry_sum;     /* 132 vrift_geometry_sum() of the region offsets and capacities */
    uint64_t heartbeat_ms;     /* 136 writer's last beat, CLOCK_MONOTONIC ms; 0: no live writer promised */
    /* 144 .. VRIFT_ROOT_OFFSET: reserved, zero */
    /* VRIFT_ROOT_OFFSET: root path, NUL terminated, no trailing slash */
} vrift_header;

/* One slot of the open-addressing table: points into the dense entry array. */
typedef struct vrift_slot {
    uint32_t entry_plus1; /* 0 = empty, else index+1 into entries */
    uint32_t hash_hi;     /* high 32 bits of path_hash: skip most mismatches without touching the entry */
} vrift_slot;

typedef struct vrift_entry {
    uint64_t path_hash;  /*   0 FNV-1a 64 of the path relative to the root ("" is the root) */
    uint32_t path_off;   /*   8 into the string area */
    uint32_t path_len;   /*  12 */
    uint32_t flags;      /*  16 VRIFT_F_*; DIRTY is set/cleared with atomic OR/AND */
    uint32_t mode;       /*  20 st_mode */
    uint64_t dev;        /*  24 */
    uint64_t ino;        /*  32 */
    uint32_t nlink;      /*  40 */
    uint32_t checksum;   /*  44 vrift_entry_sum() of the rest, sealed by the writer at publish */
    uint32_t uid;        /*  48 */
    uint32_t gid;        /*  52 */
    int64_t size;        /*  56 */
    int64_t blocks;      /*  64 st_blocks (512-byte units) */
    int64_t mtime_sec;   /*  72 */
    int64_t ctime_sec;   /*  80 */
    uint32_t mtime_nsec; /*  88 */
    uint32_t ctime_nsec; /*  92 */
    uint8_t digest[32];  /*  96 BLAKE3; zero for directories and symlinks */
} vrift_entry;           /* 128 */

/* The record kept in LMDB and the WAL is the entry from `flags` on: 112 bytes. */
#define VRIFT_RECORD_OFFSET 16u
#define VRIFT_RECORD_SIZE (VRIFT_ENTRY_SIZE - VRIFT_RECORD_OFFSET)

_Static_assert(sizeof(vrift_entry) == VRIFT_ENTRY_SIZE, "entry size");
_Static_assert(offsetof(vrift_entry, checksum) == 44, "checksum in the high half of the old 64-bit nlink");
_Static_assert(sizeof(vrift_slot) == VRIFT_SLOT_SIZE, "slot size");
_Static_assert(offsetof(vrift_header, index_generation) == 120, "header layout");
_Static_assert(sizeof(vrift_header) <= VRIFT_ROOT_OFFSET, "header fits");

/* The 112-byte record (the entry from `flags` on) of a path whose lstat is `st`, as
 * vrift/vdir/entry.py Entry.stat_record packs it: checksum zero, `digest` zero for
 * directories and symlinks.  `flags` already holds DIR or SYMLINK. */
static inline void vrift_record_from_stat(uint8_t out[VRIFT_RECORD_SIZE], const struct stat *st, uint32_t flags,
                                          const uint8_t digest[32]) {
    vrift_entry e;
    memset(&e, 0, sizeof e);
    e.flags = flags;
    e.mode = (uint32_t)st->st_mode;
    e.dev = (uint64_t)st->st_dev;
    e.ino = (uint64_t)st->st_ino;
    e.nlink = (uint32_t)st->st_nlink;
    e.uid = (uint32_t)st->st_uid;
    e.gid = (uint32_t)st->st_gid;
    e.size = (int64_t)st->st_size;
    e.blocks = (int64_t)st->st_blocks;
    e.mtime_sec = (int64_t)st->st_mtim.tv_sec;
    e.ctime_sec = (int64_t)st->st_ctim.tv_sec;
    e.mtime_nsec = (uint32_t)st->st_mtim.tv_nsec;
    e.ctime_nsec = (uint32_t)st->st_ctim.tv_nsec;
    if (digest) memcpy(e.digest, digest, sizeof e.digest);
    memcpy(out, (const uint8_t *)&e + VRIFT_RECORD_OFFSET, VRIFT_RECORD_SIZE);
}

static inline uint64_t vrift_fnv1a64(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static inline uint64_t vrift_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/*
 * The checksum of an entry: every byte of it except the checksum itself and the DIRTY bit
 * (clients OR it in outside the seqlock).  It catches stray writes, not an adversary (only
 * the user can write the file, see vrift_shm_file_ok): two independent lanes of xor, rotate
 * and multiply by an odd constant, each step invertible, so a change confined to one word
 * always changes the result before the final fold to 32 bits.  About 8 ns per hit.
 */
static inline uint32_t vrift_entry_sum(const vrift_entry *e) {
    uint64_t w[VRIFT_ENTRY_SIZE / 8];
    memcpy(w, e, sizeof w);
    w[2] &= ~(uint64_t)VRIFT_F_DIRTY;   /* flags (low half of word 2) */
    w[5] &= 0xffffffffull;              /* nlink stays, the checksum (high half) goes */
    uint64_t a = 0x243f6a8885a308d3ull, b = 0x13198a2e03707344ull;
    for (unsigned i = 0; i < VRIFT_ENTRY_SIZE / 8; i += 2) {
        a = vrift_rotl64(a ^ w[i], 29) * 0x9e3779b97f4a7c15ull;
        b = vrift_rotl64(b ^ w[i + 1], 31) * 0xc2b2ae3d27d4eb4full;
    }
    uint64_t h = a ^ vrift_rotl64(b, 17);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    return (uint32_t)h;
}

/* The header's geometry (fixed for a file's life) in 32 bits: a lookup that finds the header
 * offsets and capacities disagreeing with it treats the file as damaged, where an offset
 * moved to another place inside the mapping would only have made it miss (a false ENOENT). */
static inline uint32_t vrift_geometry_sum(uint64_t boff, uint64_t toff, uint64_t eoff, uint64_t soff, uint64_t scap,
                                          uint32_t cap, uint32_t ecap) {
    uint64_t h = 0x9e3779b97f4a7c15ull;
    const uint64_t w[6] = {boff, toff, eoff, soff, scap, (uint64_t)cap << 32 | ecap};
    for (int i = 0; i < 6; i++) h = vrift_rotl64(h ^ w[i], 27) * 0xff51afd7ed558ccdull;
    return (uint32_t)(h ^ (h >> 32));
}

/* Two bloom bits from one 64-bit hash (k = 2). */
static inline uint64_t vrift_bloom_bit1(uint64_t h) { return h & VRIFT_BLOOM_MASK; }
static inline uint64_t vrift_bloom_bit2(uint64_t h) { return (h >> 32) & VRIFT_BLOOM_MASK; }

/* 1 when [off, off + len) lies inside a mapping of `size` bytes; immune to u64 wrap-around. */
static inline int vrift_span_ok(uint64_t off, uint64_t len, uint64_t size) {
    return off <= size && len <= size - off;
}

/* A shared-memory file may be used only when it is a regular file with one name, owned by
 * `euid`, readable and writable by nobody else: anything else may be another user's
 * (a takeover: false answers fed to our builds, or our index read by them). */
static inline int vrift_shm_file_ok(const struct stat *st, uid_t euid) {
    return S_ISREG(st->st_mode) && st->st_uid == euid && (st->st_mode & 077) == 0 && st->st_nlink == 1;
}

/* The private directory that holds the files: a directory (not a link), owned by `euid`,
 * with no access for group or others. */
static inline int vrift_shm_dir_ok(const struct stat *st, uid_t euid) {
    return S_ISDIR(st->st_mode) && st->st_uid == euid && (st->st_mode & 077) == 0;
}

/* Structural check of a mapping of `size` bytes: 0 if usable. */
static inline int vrift_header_check(const void *base, uint64_t size) {
    const vrift_header *h = (const vrift_header *)base;
    if (size < VRIFT_HEADER_SIZE) return -1;
    if (h->magic != VRIFT_VDIR_MAGIC || h->version != VRIFT_VDIR_VERSION) return -1;
    if (h->header_size != VRIFT_HEADER_SIZE || h->entry_size != VRIFT_ENTRY_SIZE) return -1;
    if (h->file_size != size) return -1;
    if (h->table_capacity == 0 || (h->table_capacity & (h->table_capacity - 1)) != 0) return -1;
    if (!vrift_span_ok(h->bloom_offset, VRIFT_BLOOM_BYTES, size)) return -1;
    if (!vrift_span_ok(h->table_offset, (uint64_t)h->table_capacity * VRIFT_SLOT_SIZE, size)) return -1;
    if (!vrift_span_ok(h->entries_offset, (uint64_t)h->entry_capacity * VRIFT_ENTRY_SIZE, size)) return -1;
    if (!vrift_span_ok(h->strings_offset, h->strings_capacity, size)) return -1;
    if (h->entry_used > h->entry_capacity || h->strings_used > h->strings_capacity) return -1;
    if (h->root_len == 0 || h->root_len >= VRIFT_ROOT_MAX) return -1;
    if (vrift_geometry_sum(h->bloom_offset, h->table_offset, h->entries_offset, h->strings_offset,
                           h->strings_capacity, h->table_capacity, h->entry_capacity) != h->geometry_sum)
        return -1;
    return 0;
}

/* The table geometry one probe works with, loaded from the header once per attempt: every
 * access uses these copies, so a header rewritten meanwhile cannot move a probe outside the
 * mapping checked by vrift_geo_fits().  `used` is filled by writer-side callers only. */
typedef struct vrift_geo {
    const uint8_t *b;
    uint64_t boff, toff, eoff, soff, scap;
    uint32_t cap, ecap, used;
} vrift_geo;

static inline void vrift_geo_read(const void *base, vrift_geo *g) {
    const vrift_header *h = (const vrift_header *)base;
    g->b = (const uint8_t *)base;
    g->boff = __atomic_load_n(&h->bloom_offset, __ATOMIC_RELAXED);
    g->toff = __atomic_load_n(&h->table_offset, __ATOMIC_RELAXED);
    g->eoff = __atomic_load_n(&h->entries_offset, __ATOMIC_RELAXED);
    g->soff = __atomic_load_n(&h->strings_offset, __ATOMIC_RELAXED);
    g->scap = __atomic_load_n(&h->strings_capacity, __ATOMIC_RELAXED);
    g->cap = __atomic_load_n(&h->table_capacity, __ATOMIC_RELAXED);
    g->ecap = __atomic_load_n(&h->entry_capacity, __ATOMIC_RELAXED);
    g->used = 0;
}

/* 1 when every region of `g` lies inside a mapping of `size` bytes and the table capacity is
 * a power of two: checked on every attempt, whatever the bytes say (a garbage or foreign
 * file never crashes the caller). */
static inline int vrift_geo_fits(const vrift_geo *g, uint64_t size) {
    return g->cap != 0 && !(g->cap & (g->cap - 1)) && vrift_span_ok(g->boff, VRIFT_BLOOM_BYTES, size) &&
           vrift_span_ok(g->toff, (uint64_t)g->cap * VRIFT_SLOT_SIZE, size) &&
           vrift_span_ok(g->eoff, (uint64_t)g->ecap * VRIFT_ENTRY_SIZE, size) && vrift_span_ok(g->soff, g->scap, size);
}

static inline const vrift_entry *vrift_geo_entry(const vrift_geo *g, uint32_t index) {
    return (const vrift_entry *)(g->b + g->eoff + (uint64_t)index * VRIFT_ENTRY_SIZE);
}

/*
 * The one probe of the open-addressing table: walks the chain of `hash` in a geometry that
 * passed vrift_geo_fits().  Two ways to call it (`out` is a constant at every call site, so
 * the inlined copy keeps only its own branch):
 *  - out != NULL (readers' vrift_lookup): the matching entry is copied into *out and checked
 *    on the copy; returns 1 on a hit, 0 on a miss, VRIFT_LOOKUP_CORRUPT when a slot and its
 *    entry disagree on the hash or a same-hash entry fails its checksum.
 *  - out == NULL (the client's DIRTY store, the writer's probe): returns the entry's index
 *    (tombstones included) or -1; *slot_out (when given) is the entry's slot on a hit, the
 *    chain's first empty slot on a miss, UINT32_MAX when the table has none.
 * No allocation, lock, syscall or logging: the preload library runs it on every stat().
 */
static inline int64_t vrift_probe(const vrift_geo *g, const char *rel, size_t len, uint64_t hash, vrift_entry *out,
                                  uint32_t *slot_out) {
    const vrift_slot *slots = (const vrift_slot *)(g->b + g->toff);
    uint32_t mask = g->cap - 1, i = (uint32_t)hash & mask, hi = (uint32_t)(hash >> 32);
    if (slot_out) *slot_out = UINT32_MAX;
    for (uint32_t probes = 0; probes < g->cap; probes++, i = (i + 1) & mask) {
        uint32_t ep = slots[i].entry_plus1;
        if (ep == 0) {
            if (slot_out) *slot_out = i;
            break;
        }
        if (slots[i].hash_hi != hi || ep > g->ecap) continue;
        const vrift_entry *e = vrift_geo_entry(g, ep - 1);
        if (!out) {
            uint32_t po = e->path_off; /* loaded once: checked and used as the same value */
            if (e->path_hash != hash || e->path_len != len || (uint64_t)po + len > g->scap) continue;
            if (memcmp(g->b + g->soff + po, rel, len) != 0) continue;
            if (slot_out) *slot_out = i;
            return (int64_t)(ep - 1);
        }
        if (e->path_hash != hash) {
            /* the slot said our high hash bits, its entry does not: the slot or the entry is
             * damaged (a miss here could become a false ENOENT) */
            if ((uint32_t)(e->path_hash >> 32) != hi) return VRIFT_LOOKUP_CORRUPT;
            continue;
        }
        /* The copy is what is checked and answered: one consistent value of every field. */
        memcpy(out, e, sizeof *out);
        uint32_t po = out->path_off;
        if (out->path_len != len || (uint64_t)po + len > g->scap || memcmp(g->b + g->soff + po, rel, len) != 0) {
            /* Another path with the same 64-bit hash, or damage to its offset or length (the
             * checksum fails).  Damage to the string itself is found by the writer's scrub
             * (vrift_verify: the string no longer hashes to path_hash), not here: a lookup
             * cannot tell it from a collision. */
            if (vrift_entry_sum(out) != out->checksum) return VRIFT_LOOKUP_CORRUPT;
            continue;
        }
        out->flags = __atomic_load_n(&e->flags, __ATOMIC_RELAXED); /* the latest DIRTY */
        return 1;
    }
    return out ? 0 : -1;
}

/*
 * Seqlock-protected lookup of `rel` (path relative to the root, no leading slash).
 * Returns 1 and copies the entry into *out on a hit, 0 on a miss, -1 when the table
 * could not be read consistently (writer busy for too long, or inconsistent offsets),
 * VRIFT_LOOKUP_CORRUPT when the entry with the path's hash fails its checksum (never served:
 * the caller asks the kernel and reports the damage).
 * A hit may carry DIRTY/DELETED flags: the caller decides what they mean.
 */
static inline int vrift_lookup(const void *base, uint64_t map_size, const char *rel, size_t len,
                               vrift_entry *out) {
    const vrift_header *h = (const vrift_header *)base;
    uint64_t hash = vrift_fnv1a64(rel, len);
    uint64_t b1 = vrift_bloom_bit1(hash), b2 = vrift_bloom_bit2(hash);
    for (int attempt = 0; attempt < VRIFT_READ_RETRIES; attempt++) {
        uint64_t g1 = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
        if (g1 & 1u) continue;
        int result = 0;
        vrift_geo g;
        vrift_geo_read(base, &g);
        if (!vrift_geo_fits(&g, map_size)) {
            result = -1;
        } else if (vrift_geometry_sum(g.boff, g.toff, g.eoff, g.soff, g.scap, g.cap, g.ecap) != h->geometry_sum) {
            result = VRIFT_LOOKUP_CORRUPT; /* offsets rewritten after the file was mapped */
        } else if ((g.b[g.boff + (b1 >> 3)] & (1u << (b1 & 7))) && (g.b[g.boff + (b2 >> 3)] & (1u << (b2 & 7)))) {
            result = (int)vrift_probe(&g, rel, len, hash, out, NULL);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&h->generation, __ATOMIC_RELAXED) == g1) {
            /* flags may have changed since the copy only in DIRTY (atomic OR outside the
             * seqlock), which the checksum leaves out; the current bit is what counts */
            if (result == 1 && vrift_entry_sum(out) != out->checksum) return VRIFT_LOOKUP_CORRUPT;
            return result;
        }
    }
    return -1;
}

/* The same seqlock loop for the index of the entry of `rel` (tombstones included), or -1:
 * for a caller that stores into the entry (the client's DIRTY bit), not one that reads it. */
static inline int64_t vrift_lookup_index(const void *base, uint64_t map_size, const char *rel, size_t len) {
    const vrift_header *h = (const vrift_header *)base;
    uint64_t hash = vrift_fnv1a64(rel, len);
    for (int attempt = 0; attempt < VRIFT_READ_RETRIES; attempt++) {
        uint64_t g1 = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
        if (g1 & 1u) continue;
        int64_t found = -1;
        vrift_geo g;
        vrift_geo_read(base, &g);
        if (vrift_geo_fits(&g, map_size)) found = vrift_probe(&g, rel, len, hash, NULL, NULL);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&h->generation, __ATOMIC_RELAXED) == g1) return found;
    }
    return -1;
}

#endif
