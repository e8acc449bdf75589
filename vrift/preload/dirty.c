/*
 * dirty.c — setting the DIRTY bit in the VDir (SPEC §5.4) and resolving the names that
 * mutating calls touch.  Write path only: syscalls and a spin lock are allowed here.
 *
 * The reader mapping is read-only; DIRTY needs a second, read-write mapping of the same
 * file (the user's own 0600 file), made on the first write.  The bit is set with an
 * atomic OR on the flags word, the only store a client ever makes into the VDir.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static uint8_t *rw_base;
static uint64_t rw_size;
static vrift_spinlock rw_lock;



/* Called with the lock held. */
static int rw_map(void) {
    if (rw_base) {
        const vrift_map m = {rw_base, rw_size};
        if (!vrift_map_retired(&m)) return 0;
        munmap(rw_base, rw_size); /* only this file's write path uses it, under the lock */
        rw_base = NULL;
    }
    int fd = REAL(open)(vrift_vdir_path(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct stat st;
    void *base = MAP_FAILED;
    if (REAL(fstatat)(fd, "", &st, AT_EMPTY_PATH) == 0 && st.st_size >= (off_t)VRIFT_HEADER_SIZE &&
        vrift_shm_file_ok(&st, geteuid()))
        base = mmap(NULL, (size_t)st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    REAL(close)(fd);
    if (base == MAP_FAILED) return -1;
    if (vrift_header_check(base, (uint64_t)st.st_size) != 0) {
        munmap(base, (size_t)st.st_size);
        return -1;
    }
    rw_base = base;
    rw_size = (uint64_t)st.st_size;
    return 0;
}

static vrift_entry *entry_at(uint64_t index) {
    const vrift_header *h = (const vrift_header *)rw_base;
    return (vrift_entry *)(rw_base + h->entries_offset + index * VRIFT_ENTRY_SIZE);
}

/* Every entry strictly below directory `rel` (a directory renamed, removed or chmod-ed
 * changes what its descendants' paths mean).  O(entries), rare. */
static void mark_subtree(const char *rel, size_t len) {
    const vrift_header *h = (const vrift_header *)rw_base;
    uint32_t used = __atomic_load_n(&h->entry_used, __ATOMIC_ACQUIRE);
    if (used > h->entry_capacity) used = h->entry_capacity;
    const uint8_t *strings = rw_base + h->strings_offset;
    for (uint32_t i = 0; i < used; i++) {
        vrift_entry *e = entry_at(i);
        uint32_t pl = e->path_len, po = e->path_off;
        if (pl <= len || (uint64_t)po + pl > h->strings_capacity) continue;
        if (len == 0 || (strings[po + len] == '/' && memcmp(strings + po, rel, len) == 0))
            __atomic_fetch_or(&e->flags, VRIFT_F_DIRTY, __ATOMIC_SEQ_CST);
    }
}

/* Set DIRTY on `rel` (and below it when it is a directory and `subtree`).  Returns the
 * entry's flags before (0 when not indexed).  If the daemon retired the file meanwhile,
 * the bit is set again in the new one (the daemon copies bits set before it retires). */
uint32_t vrift_mark_dirty(const char *rel, size_t len, int subtree) {
    if (!vrift_writes_on) return 0;
    int saved = errno;
    uint32_t before = 0;
    vrift_spin_lock(&rw_lock);
    for (int round = 0; round < 4; round++) {
        if (rw_map() != 0) break;
        int64_t idx = vrift_lookup_index(rw_base, rw_size, rel, len);
        if (idx >= 0) {
            before = __atomic_fetch_or(&entry_at((uint64_t)idx)->flags, VRIFT_F_DIRTY, __ATOMIC_SEQ_CST);
            if (subtree && (before & VRIFT_F_DIR)) mark_subtree(rel, len);
        }
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        const vrift_map m = {rw_base, rw_size};
        if (!vrift_map_retired(&m)) break;
    }
    vrift_spin_unlock(&rw_lock);
    errno = saved;
    return before;
}

void vrift_dirty_atfork_child(void) { vrift_spin_reset(&rw_lock); }

/* ------------------------------------------------------------------ name resolution */

static int has_dot_components(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '/') continue;
        if (i + 1 < n && s[i + 1] == '/') return 1;
        if (i + 1 < n && s[i + 1] == '.' && (i + 2 == n || s[i + 2] == '/')) return 1;
        if (i + 2 < n && s[i + 1] == '.' && s[i + 2] == '.' && (i + 3 == n || s[i + 3] == '/')) return 1;
    }
    return 0;
}

int vrift_rel_of(const char *abs, const char **rel, size_t *rel_len) {
    size_t n = strlen(abs), rl = vrift_root_len;
    if (n < rl || memcmp(abs, vrift_root, rl) != 0 || (n > rl && abs[rl] != '/')) return 0;
    *rel = n == rl ? abs + n : abs + rl + 1;
    *rel_len = n == rl ? 0 : n - rl - 1;
    /* the library's own state (staging) is never part of the index */
    if (*rel_len >= 6 && memcmp(*rel, ".vrift", 6) == 0 && (*rel_len == 6 || (*rel)[6] == '/')) return 0;
    return 1;
}

/* The directory part is trusted lexically when the index vouches for it as a clean real
 * directory (index paths never cross a symlink); otherwise the kernel resolves it. */
static int vouched_parent(const char *abs) {
    const char *rel;
    size_t rl;
    if (!vrift_rel_of(abs, &rel, &rl)) return 0;
    if (rl == 0) return 1;
    vrift_entry e;
    if (!vrift_reads_on || vrift_find(rel, rl, &e) != 1) return 0;
    return (e.flags & (VRIFT_F_DIR | VRIFT_F_DIRTY | VRIFT_F_DELETED | VRIFT_F_SYMLINK)) == VRIFT_F_DIR;
}

/* Absolute location of the name `path` (relative to dirfd), its last component not
 * followed, its directory part free of symlinks.  Returns 1 when it lies inside the
 * project (outside .vrift), 0 otherwise or when it cannot be resolved. */
int vrift_resolve_name(int dirfd, const char *path, char *out) {
    if (!path || !*path) return 0;
    char joined[VRIFT_PATH_MAX];
    size_t n = 0, pl = strlen(path);
    if (path[0] != '/') {
        if (dirfd == AT_FDCWD) {
            if (!vrift_getcwd(joined, sizeof joined)) return 0;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t r = readlink(link, joined, sizeof joined - 1);
            if (r <= 0 || joined[0] != '/') return 0;
            joined[r] = '\0';
        }
        n = strlen(joined);
        if (n + 1 + pl >= sizeof joined) return 0;
        joined[n++] = '/';
    } else if (pl >= sizeof joined) {
        return 0;
    }
    memcpy(joined + n, path, pl + 1);
    n += pl;
    while (n > 1 && joined[n - 1] == '/') joined[--n] = '\0';
    char *slash = strrchr(joined, '/');
    const char *name = slash + 1;
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0) return 0;
    size_t dl = (size_t)(slash - joined), nl = strlen(name);
    char dir[VRIFT_PATH_MAX];
    if (dl == 0) {
        strcpy(dir, "/");
    } else {
        memcpy(dir, joined, dl);
        dir[dl] = '\0';
    }
    if (has_dot_components(dir, dl) || !vouched_parent(dir)) {
        char real[PATH_MAX];
        if (!REAL(realpath)(dir, real)) return 0;
        strcpy(dir, real);
    }
    dl = strlen(dir);
    if (dl == 1) dl = 0;
    if (dl + 1 + nl >= VRIFT_PATH_MAX) return 0;
    memcpy(out, dir, dl);
    out[dl] = '/';
    memcpy(out + dl + 1, name, nl + 1);
    const char *rel;
    size_t rl;
    return vrift_rel_of(out, &rel, &rl);
}

/* Mark a project path and its parent directory DIRTY (a name appearing, vanishing or
 * changing changes the directory too).  Returns the path's flags before. */
uint32_t vrift_mark_path(const char *abs, int subtree) {
    const char *rel;
    size_t rl;
    if (!vrift_rel_of(abs, &rel, &rl)) return 0;
    uint32_t before = vrift_mark_dirty(rel, rl, subtree);
    size_t k = rl;
    while (k > 0 && rel[k - 1] != '/') k--;
    if (rl > 0) vrift_mark_dirty(rel, k ? k - 1 : 0, 0);
    return before;
}

/* Every other name of a hard-linked inode changes with it (nlink, ctime, content). */
void vrift_mark_inode(uint64_t dev, uint64_t ino) {
    if (!vrift_writes_on) return;
    int saved = errno;
    vrift_spin_lock(&rw_lock);
    if (rw_map() == 0) {
        const vrift_header *h = (const vrift_header *)rw_base;
        uint32_t used = __atomic_load_n(&h->entry_used, __ATOMIC_ACQUIRE);
        if (used > h->entry_capacity) used = h->entry_capacity;
        for (uint32_t i = 0; i < used; i++) {
            vrift_entry *e = entry_at(i);
            if (e->ino == ino && e->dev == dev) __atomic_fetch_or(&e->flags, VRIFT_F_DIRTY, __ATOMIC_SEQ_CST);
        }
    }
    vrift_spin_unlock(&rw_lock);
    errno = saved;
}
