/*
 * vdir_native.c — the few operations on a VDir mapping that must be real atomics.
 * Loaded by vrift/vdir/native.py with ctypes; Python's struct writes into an mmap
 * are plain stores, so the seqlock edges and the DIRTY bit live here.
 */
#include "vrift_vdir.h"
#include "vrift_actions.h"

#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* Writer: make the generation odd; following stores are ordered after it. */
EXPORT void vrift_seq_begin(void *base) {
    vrift_header *h = (vrift_header *)base;
    uint64_t g = __atomic_load_n(&h->generation, __ATOMIC_RELAXED);
    if (!(g & 1u)) g++;
    __atomic_store_n(&h->generation, g, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

/* Writer: publish; every store before it is visible to a reader that sees the even value. */
EXPORT uint64_t vrift_seq_end(void *base) {
    vrift_header *h = (vrift_header *)base;
    uint64_t g = __atomic_load_n(&h->generation, __ATOMIC_RELAXED);
    if (g & 1u) g++;
    __atomic_store_n(&h->generation, g, __ATOMIC_RELEASE);
    return g;
}

EXPORT uint64_t vrift_generation(const void *base) {
    return __atomic_load_n(&((const vrift_header *)base)->generation, __ATOMIC_ACQUIRE);
}

/* The geometry a writer-side call works with, loaded from the header ONCE and checked against
 * the mapping's size: a header scribbled on (random bytes, another process) makes the call
 * fail, never read or write outside the mapping.  Every later access uses these copies. */
static int geo_load(void *base, uint64_t size, vrift_geo *g) {
    if (size < VRIFT_HEADER_SIZE) return -1;
    vrift_geo_read(base, g);
    g->used = __atomic_load_n(&((const vrift_header *)base)->entry_used, __ATOMIC_RELAXED);
    if (g->used > g->ecap || !vrift_geo_fits(g, size)) return -1;
    return 0;
}

/* Writer side: the caller owns the mapping read-write (the geometry's pointer is const only
 * because readers share the type). */
static vrift_entry *geo_entry(const vrift_geo *g, uint32_t index) {
    return (vrift_entry *)vrift_geo_entry(g, index);
}

/* The entry `index` of a checked mapping, or NULL. */
static vrift_entry *entry_at(void *base, uint64_t size, uint32_t index) {
    vrift_geo g;
    if (geo_load(base, size, &g) != 0 || index >= g.ecap) return NULL;
    return geo_entry(&g, index);
}

/* entry_at for the other files of this library (walk.c): not exported. */
vrift_entry *vrift_entry_at(void *base, uint64_t size, uint32_t index) { return entry_at(base, size, index); }

/* Atomic OR / AND-NOT of entry flags (DIRTY), usable by any process mapping read-write.
 * Return the flags before, or UINT32_MAX when the header or index is unusable. */
EXPORT uint32_t vrift_flags_or(void *base, uint64_t size, uint32_t index, uint32_t bits) {
    vrift_entry *e = entry_at(base, size, index);
    return e ? __atomic_fetch_or(&e->flags, bits, __ATOMIC_ACQ_REL) : UINT32_MAX;
}

EXPORT uint32_t vrift_flags_clear(void *base, uint64_t size, uint32_t index, uint32_t bits) {
    vrift_entry *e = entry_at(base, size, index);
    return e ? __atomic_fetch_and(&e->flags, ~bits, __ATOMIC_ACQ_REL) : UINT32_MAX;
}

EXPORT void vrift_header_flags_or(void *base, uint32_t bits) {
    __atomic_fetch_or(&((vrift_header *)base)->header_flags, bits, __ATOMIC_RELEASE);
}

EXPORT void vrift_header_flags_clear(void *base, uint32_t bits) {
    __atomic_fetch_and(&((vrift_header *)base)->header_flags, ~bits, __ATOMIC_RELEASE);
}

/* The daemon's beat (see VRIFT_HEARTBEAT_STALE_MS); returns the value stored. */
EXPORT uint64_t vrift_heartbeat(void *base) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    __atomic_store_n(&((vrift_header *)base)->heartbeat_ms, ms, __ATOMIC_RELEASE);
    return ms;
}

EXPORT int vrift_check(const void *base, uint64_t size) { return vrift_header_check(base, size); }

EXPORT uint64_t vrift_hash(const char *s, size_t n) { return vrift_fnv1a64(s, n); }

EXPORT int vrift_find(const void *base, uint64_t size, const char *rel, size_t len, void *out) {
    return vrift_lookup(base, size, rel, len, (vrift_entry *)out);
}

/* ------------------------------------------------------------------ writer side
 * Called only by the one process that writes the file (vrift/vdir/shm.py), inside its
 * seqlock publish: no concurrency control beyond the atomic flag words. */

/* Retire a replaced file.  Sequentially consistent so that a client which ORs DIRTY into
 * this file and then reads header_flags (libvrift: OR, seq_cst fence, check RETIRED) either
 * sees RETIRED and repeats the OR in the new file, or its bit is visible to the writer's
 * vrift_collect_flagged() scan made after this call. */
EXPORT void vrift_retire(void *base) {
    __atomic_fetch_or(&((vrift_header *)base)->header_flags, VRIFT_H_RETIRED, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}

/* Replace an entry's flags with `value`, keeping the bits of `keep` that are set now (a
 * client's DIRTY set concurrently is never lost when the writer asks to keep it). */
EXPORT uint32_t vrift_flags_replace(void *base, uint64_t size, uint32_t index, uint32_t value, uint32_t keep) {
    vrift_entry *e = entry_at(base, size, index);
    if (!e) return UINT32_MAX;
    uint32_t *f = &e->flags;
    uint32_t old = __atomic_load_n(f, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(f, &old, value | (old & keep), 1, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
    }
    return old;
}

/* Indices (below entry_used) of entries with any of `bits` set; returns how many were
 * found (only the first `max` are stored). */
EXPORT uint32_t vrift_collect_flagged(void *base, uint64_t size, uint32_t bits, uint32_t *out, uint32_t max) {
    vrift_geo g;
    if (geo_load(base, size, &g) != 0) return 0;
    uint32_t found = 0;
    for (uint32_t i = 0; i < g.used; i++) {
        if (__atomic_load_n(&geo_entry(&g, i)->flags, __ATOMIC_ACQUIRE) & bits) {
            if (found < max) out[found] = i;
            found++;
        }
    }
    return found;
}

/* OR `bits` into every entry below entry_used (a restarted daemon marks the whole table
 * "ask the kernel" before it trusts it again: one pass, no lock — DIRTY is outside the
 * checksum); returns how many entries were marked, or UINT32_MAX on a bad geometry. */
EXPORT uint32_t vrift_flags_or_all(void *base, uint64_t size, uint32_t bits) {
    vrift_geo g;
    if (geo_load(base, size, &g) != 0) return UINT32_MAX;
    for (uint32_t i = 0; i < g.used; i++) __atomic_fetch_or(&geo_entry(&g, i)->flags, bits, __ATOMIC_ACQ_REL);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return g.used;
}

/* The writer's probe: index of the entry for `rel` under `hash`, or -1.  *slot_out is the
 * entry's slot on a hit, the first empty slot of the chain on a miss (UINT32_MAX when the
 * table has none).  `hash` is a parameter so that tests can force full-hash collisions. */
EXPORT int64_t vrift_locate(void *base, uint64_t size, const char *rel, size_t len, uint64_t hash,
                            uint32_t *slot_out) {
    vrift_geo g;
    *slot_out = UINT32_MAX;
    if (geo_load(base, size, &g) != 0) return -2;
    return vrift_probe(&g, rel, len, hash, NULL, slot_out);
}

/* Link entry `index` (path_hash already written) into the table at its chain's first empty
 * slot and into the bloom filter.  The caller has checked that the path is not there yet.
 * Returns the slot, or -1 when the table is full. */
EXPORT int64_t vrift_place(void *base, uint64_t size, uint32_t index) {
    vrift_geo g;
    if (geo_load(base, size, &g) != 0 || index >= g.ecap) return -1;
    uint64_t hash = geo_entry(&g, index)->path_hash;
    uint8_t *wb = (uint8_t *)g.b; /* the writer's own read-write mapping */
    vrift_slot *slots = (vrift_slot *)(wb + g.toff);
    uint32_t mask = g.cap - 1, i = (uint32_t)hash & mask;
    for (uint32_t probes = 0; probes < g.cap; probes++, i = (i + 1) & mask) {
        if (slots[i].entry_plus1 != 0) continue;
        slots[i].hash_hi = (uint32_t)(hash >> 32);
        slots[i].entry_plus1 = index + 1;
        uint64_t b1 = vrift_bloom_bit1(hash), b2 = vrift_bloom_bit2(hash);
        wb[g.boff + (b1 >> 3)] |= (uint8_t)(1u << (b1 & 7));
        wb[g.boff + (b2 >> 3)] |= (uint8_t)(1u << (b2 & 7));
        return i;
    }
    return -1;
}

/* Seal entry `index`: store the checksum of what was just written (the writer, at publish:
 * under the seqlock for an entry already linked, before linking for a new one). */
EXPORT int vrift_seal(void *base, uint64_t size, uint32_t index) {
    vrift_entry *e = entry_at(base, size, index);
    if (!e) return -1;
    e->checksum = vrift_entry_sum(e);
    return 0;
}

EXPORT int vrift_seal_range(void *base, uint64_t size, uint32_t first, uint32_t count) {
    for (uint32_t i = first; i < first + count; i++)
        if (vrift_seal(base, size, i) != 0) return -1;
    return 0;
}

EXPORT uint32_t vrift_entry_checksum(const void *entry) { return vrift_entry_sum((const vrift_entry *)entry); }

EXPORT uint32_t vrift_geometry_checksum(uint64_t boff, uint64_t toff, uint64_t eoff, uint64_t soff, uint64_t scap,
                                        uint32_t cap, uint32_t ecap) {
    return vrift_geometry_sum(boff, toff, eoff, soff, scap, cap, ecap);
}

/* The scrub of the daemon's health check and `vrift doctor`: indices (below entry_used) of
 * entries that fail their checksum or that a lookup of their own path does not find (damage
 * to the slot table, the bloom filter or the string area: a lookup would miss them); returns
 * how many (only the first `max` stored), or UINT32_MAX when the header itself fails
 * vrift_header_check for a mapping of `size`.  Run by the writer's process between publishes:
 * no seqlock needed beyond the lookup's own. */
EXPORT uint32_t vrift_verify(const void *base, uint64_t size, uint32_t *out, uint32_t max) {
    if (vrift_header_check(base, size) != 0) return UINT32_MAX;
    const vrift_header *h = (const vrift_header *)base;
    const uint8_t *b = (const uint8_t *)base;
    uint32_t found = 0;
    for (uint32_t i = 0; i < h->entry_used; i++) {
        vrift_entry e, got;
        memcpy(&e, b + h->entries_offset + (uint64_t)i * VRIFT_ENTRY_SIZE, sizeof e);
        int bad = vrift_entry_sum(&e) != e.checksum || (uint64_t)e.path_off + e.path_len > h->strings_capacity;
        if (!bad) {
            const char *p = (const char *)b + h->strings_offset + e.path_off;
            /* the string is the path the entry was filed under; the lookup of it finds it */
            bad = vrift_fnv1a64(p, e.path_len) != e.path_hash ||
                  vrift_lookup(base, size, p, e.path_len, &got) != 1 || got.path_off != e.path_off;
        }
        if (bad) {
            if (found < max) out[found] = i;
            found++;
        }
    }
    return found;
}

/* vrift_place() for entries [first, first + count): a freshly built file in one call. */
EXPORT int vrift_place_range(void *base, uint64_t size, uint32_t first, uint32_t count) {
    for (uint32_t i = first; i < first + count; i++)
        if (vrift_place(base, size, i) < 0) return -1;
    return 0;
}

/* ------------------------------------------------------------------ measurement and tests
 * `paths` holds `n` paths back to back, `lens` their lengths. */

/* Benchmark loop: `rounds` passes of vrift_lookup() over the paths; returns the hits. */
EXPORT uint64_t vrift_lookup_loop(const void *base, uint64_t size, const char *paths, const uint32_t *lens,
                                  uint32_t n, uint64_t rounds) {
    vrift_entry e;
    uint64_t hits = 0;
    for (uint64_t r = 0; r < rounds; r++) {
        const char *p = paths;
        for (uint32_t i = 0; i < n; i++) {
            hits += vrift_lookup(base, size, p, lens[i], &e) == 1;
            p += lens[i];
        }
    }
    return hits;
}

/* The self-consistent entry the torn-read test writes for counter `c`: every field and
 * every digest byte is derived from c, and c can be read back from `size`. */
EXPORT void vrift_test_fill(uint64_t c, void *out) {
    vrift_entry *e = (vrift_entry *)out;
    memset(e, 0, sizeof *e);
    e->mode = 0100000u | (uint32_t)(c & 0777u);
    e->dev = c ^ 0x5a5a5a5aull;
    e->ino = c * 3u + 1u;
    e->nlink = (uint32_t)(c % 5u + 1u);
    e->uid = (uint32_t)(c * 7u);
    e->gid = (uint32_t)(c * 11u);
    e->size = (int64_t)c;
    e->blocks = (int64_t)(c * 2u);
    e->mtime_sec = (int64_t)(c + 100u);
    e->ctime_sec = (int64_t)(c + 200u);
    e->mtime_nsec = (uint32_t)(c % 1000000000u);
    e->ctime_nsec = (uint32_t)((c * 13u) % 1000000000u);
    for (int i = 0; i < 32; i++) e->digest[i] = (uint8_t)(c * 31u + (uint64_t)i);
}

/* Torn-read check: `rounds` passes of lookups; every hit must equal vrift_test_fill() of
 * its own size field (flags excepted: they change atomically on their own).
 * stats: [0] lookups, [1] hits, [2] inconsistent hits, [3] hits whose counter differed
 * from the previous read of the same path (proof the writer ran meanwhile), [4] -1 results.
 * `last` is scratch space of n u64. */
EXPORT void vrift_torture_read(const void *base, uint64_t size, const char *paths, const uint32_t *lens, uint32_t n,
                               uint64_t rounds, uint64_t *stats, uint64_t *last) {
    vrift_entry e, want;
    for (uint32_t i = 0; i < n; i++) last[i] = UINT64_MAX;
    for (uint64_t r = 0; r < rounds; r++) {
        const char *p = paths;
        for (uint32_t i = 0; i < n; i++) {
            int got = vrift_lookup(base, size, p, lens[i], &e);
            stats[0]++;
            if (got == 1) {
                stats[1]++;
                vrift_test_fill((uint64_t)e.size, &want);
                /* fields from `mode` on, the checksum excepted (it covers the path too) */
                size_t ck = offsetof(vrift_entry, checksum), after = ck + sizeof e.checksum;
                if (e.path_len != lens[i] || memcmp((const uint8_t *)&e + 20, (const uint8_t *)&want + 20, ck - 20) != 0 ||
                    memcmp((const uint8_t *)&e + after, (const uint8_t *)&want + after, sizeof e - after) != 0)
                    stats[2]++;
                if (last[i] != UINT64_MAX && last[i] != (uint64_t)e.size) stats[3]++;
                last[i] = (uint64_t)e.size;
            } else if (got < 0) {
                stats[4]++;
            }
            p += lens[i];
        }
    }
}

/* Layout facts for the Python mirror's self-check: name -> (offset, size). */
#define F(s, m) {#s "." #m, offsetof(s, m), sizeof(((s *)0)->m)}
static const struct { const char *name; size_t off, size; } fields[] = {
    F(vrift_header, magic), F(vrift_header, version), F(vrift_header, generation),
    F(vrift_header, file_size), F(vrift_header, header_size), F(vrift_header, entry_size),
    F(vrift_header, entry_count), F(vrift_header, entry_used), F(vrift_header, entry_capacity),
    F(vrift_header, table_capacity), F(vrift_header, bloom_offset), F(vrift_header, table_offset),
    F(vrift_header, entries_offset), F(vrift_header, strings_offset),
    F(vrift_header, strings_capacity), F(vrift_header, strings_used),
    F(vrift_header, header_flags), F(vrift_header, root_len), F(vrift_header, project_id),
    F(vrift_header, index_generation), F(vrift_header, blksize), F(vrift_header, geometry_sum), F(vrift_header, heartbeat_ms),
    F(vrift_slot, entry_plus1), F(vrift_slot, hash_hi),
    F(vrift_entry, path_hash), F(vrift_entry, path_off), F(vrift_entry, path_len),
    F(vrift_entry, flags), F(vrift_entry, mode), F(vrift_entry, dev), F(vrift_entry, ino),
    F(vrift_entry, nlink), F(vrift_entry, checksum), F(vrift_entry, uid), F(vrift_entry, gid), F(vrift_entry, size),
    F(vrift_entry, blocks), F(vrift_entry, mtime_sec), F(vrift_entry, ctime_sec),
    F(vrift_entry, mtime_nsec), F(vrift_entry, ctime_nsec), F(vrift_entry, digest),
};

EXPORT int vrift_layout_field(int i, const char **name, size_t *off, size_t *size) {
    if (i < 0 || (size_t)i >= sizeof fields / sizeof fields[0]) return 0;
    *name = fields[i].name;
    *off = fields[i].off;
    *size = fields[i].size;
    return 1;
}

/* The naming and ownership rules of the shared-memory directory, for the Python mirror. */
EXPORT const char *vrift_layout_string(const char *name) {
#define S(n) if (strcmp(name, #n) == 0) return n;
    S(VRIFT_SHM_USER_DIR_PREFIX) S(VRIFT_VDIR_NAME_PREFIX) S(VRIFT_COUNTERS_NAME_PREFIX) S(VRIFT_ACTIONS_NAME_PREFIX)
#undef S
    return NULL;
}

/* 1 when a file (dir = 0) or the private directory (dir = 1) with these stat fields is ours. */
EXPORT int vrift_shm_stat_ok(int dir, uint32_t mode, uint32_t uid, uint64_t nlink, uint32_t euid) {
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_mode = mode;
    st.st_uid = uid;
    st.st_nlink = (nlink_t)nlink;
    return dir ? vrift_shm_dir_ok(&st, euid) : vrift_shm_file_ok(&st, euid);
}

EXPORT uint32_t vrift_layout_constant(const char *name) {
#define C(n) if (strcmp(name, #n) == 0) return n;
    C(VRIFT_VDIR_MAGIC) C(VRIFT_VDIR_VERSION) C(VRIFT_HEADER_SIZE) C(VRIFT_ROOT_OFFSET)
    C(VRIFT_ROOT_MAX) C(VRIFT_BLOOM_BYTES) C(VRIFT_ENTRY_SIZE) C(VRIFT_SLOT_SIZE)
    C(VRIFT_F_DIRTY) C(VRIFT_F_DELETED) C(VRIFT_F_SYMLINK) C(VRIFT_F_DIR) C(VRIFT_F_COMPLETE_DIR)
    C(VRIFT_H_RETIRED) C(VRIFT_H_DEAD) C(VRIFT_HEARTBEAT_STALE_MS) C(VRIFT_HEARTBEAT_EVERY) C(VRIFT_RECORD_OFFSET) C(VRIFT_RECORD_SIZE)
    C(VRIFT_MAX_LOAD_NUM) C(VRIFT_MAX_LOAD_DEN) C(VRIFT_BLOOM_MASK) C(VRIFT_REL_MAX) C(VRIFT_VDIR_ID_CHARS) C(VRIFT_LOOKUP_CORRUPT)
    C(VRIFT_ACTIONS_MAGIC) C(VRIFT_ACTIONS_VERSION) C(VRIFT_ACTIONS_HEADER_SIZE) C(VRIFT_ACTIONS_CAS_OFFSET)
    C(VRIFT_ACTIONS_CAS_MAX) C(VRIFT_ACTIONS_SLOT_SIZE) C(VRIFT_ACTIONS_RECORD_HEAD) C(VRIFT_ACTIONS_CHECK_HEAD)
    C(VRIFT_ACTIONS_OUTPUT_HEAD) C(VRIFT_CK_FILE) C(VRIFT_CK_ABSENT) C(VRIFT_CK_STAT) C(VRIFT_CK_FOUND)
    C(VRIFT_CM_TYPE) C(VRIFT_CM_PERM) C(VRIFT_CM_X) C(VRIFT_CM_SIZE) C(VRIFT_CM_MTIME) C(VRIFT_CM_TARGET)
    C(VRIFT_OUT_FILE) C(VRIFT_OUT_DIR)
#undef C
    return 0xffffffffu;
}

/* ---- the action table (vrift_actions.h): the same checksum and hash as the preload library */
EXPORT uint64_t vrift_act_checksum64(const char *p, size_t n) { return vrift_act_sum64(p, n); }
EXPORT uint32_t vrift_act_checksum32(const char *p, size_t n) { return vrift_act_sum32(p, n); }
EXPORT uint64_t vrift_act_key_hash(const char *p, size_t n) { return vrift_act_hash(p, n); }
