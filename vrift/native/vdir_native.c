/*
 * vdir_native.c — the few operations on a VDir mapping that must be real atomics.
 * Loaded by vrift/vdir/native.py with ctypes; Python's struct writes into an mmap
 * are plain stores, so the seqlock edges and the DIRTY bit live here.
 */
#include "vrift_vdir.h"

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

static vrift_entry *entry_at(void *base, uint32_t index) {
    vrift_header *h = (vrift_header *)base;
    return (vrift_entry *)((uint8_t *)base + h->entries_offset + (uint64_t)index * VRIFT_ENTRY_SIZE);
}

/* Atomic OR / AND-NOT of entry flags (DIRTY), usable by any process mapping read-write. */
EXPORT uint32_t vrift_flags_or(void *base, uint32_t index, uint32_t bits) {
    return __atomic_fetch_or(&entry_at(base, index)->flags, bits, __ATOMIC_ACQ_REL);
}

EXPORT uint32_t vrift_flags_clear(void *base, uint32_t index, uint32_t bits) {
    return __atomic_fetch_and(&entry_at(base, index)->flags, ~bits, __ATOMIC_ACQ_REL);
}

EXPORT void vrift_header_flags_or(void *base, uint32_t bits) {
    __atomic_fetch_or(&((vrift_header *)base)->header_flags, bits, __ATOMIC_RELEASE);
}

EXPORT int vrift_check(const void *base, uint64_t size) { return vrift_header_check(base, size); }

EXPORT uint64_t vrift_hash(const char *s, size_t n) { return vrift_fnv1a64(s, n); }

EXPORT int vrift_find(const void *base, uint64_t size, const char *rel, size_t len, void *out) {
    return vrift_lookup(base, size, rel, len, (vrift_entry *)out);
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
    F(vrift_header, index_generation), F(vrift_header, blksize),
    F(vrift_slot, entry_plus1), F(vrift_slot, hash_hi),
    F(vrift_entry, path_hash), F(vrift_entry, path_off), F(vrift_entry, path_len),
    F(vrift_entry, flags), F(vrift_entry, mode), F(vrift_entry, dev), F(vrift_entry, ino),
    F(vrift_entry, nlink), F(vrift_entry, uid), F(vrift_entry, gid), F(vrift_entry, size),
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

EXPORT uint32_t vrift_layout_constant(const char *name) {
#define C(n) if (strcmp(name, #n) == 0) return n;
    C(VRIFT_VDIR_MAGIC) C(VRIFT_VDIR_VERSION) C(VRIFT_HEADER_SIZE) C(VRIFT_ROOT_OFFSET)
    C(VRIFT_ROOT_MAX) C(VRIFT_BLOOM_BYTES) C(VRIFT_ENTRY_SIZE) C(VRIFT_SLOT_SIZE)
    C(VRIFT_F_DIRTY) C(VRIFT_F_DELETED) C(VRIFT_F_SYMLINK) C(VRIFT_F_DIR) C(VRIFT_F_COMPLETE_DIR)
    C(VRIFT_H_RETIRED) C(VRIFT_RECORD_OFFSET) C(VRIFT_RECORD_SIZE)
#undef C
    return 0xffffffffu;
}
