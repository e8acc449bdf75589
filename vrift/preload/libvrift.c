/*
 * libvrift.c — start-up, environment, the VDir mapping, the cached cwd and path resolution
 * of the preload library.  See docs/preload.md for the design and the map of the other parts.
 *
 * Longer than the others (~570 lines) on purpose: the stat path's pieces — the lookup under
 * the SIGBUS guard, the cached cwd, path resolution — stay in one translation unit so that
 * the compiler inlines them into each other (the library is built without LTO), and the
 * constructor sets up the statics they read.
 *
 * Everything reachable from a stat() call follows the hot-path rules: no allocation, no
 * lock, no syscall, no logging, async-signal-safe.  Slow paths (remap, cwd refresh) are
 * rare and marked as such.
 */
#include "vrift_preload.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

vrift_real_fns vrift_real;
int vrift_reads_on;
int vrift_writes_on;
const vrift_map *vrift_cur;
char vrift_root[VRIFT_PATH_MAX];
size_t vrift_root_len;
char vrift_staging[VRIFT_PATH_MAX];
size_t vrift_staging_len;
char vrift_socket_path[108];
int vrift_timeout_ms = 2000;
int vrift_debug;
pid_t vrift_pid;
uint64_t vrift_counts[VRIFT_C_COUNT];

static char vdir_path[VRIFT_PATH_MAX];
static char counters_path[VRIFT_PATH_MAX];

/* Mappings are never unmapped: another thread may still be reading an old one.  A remap
 * happens only when the daemon grows the table, so a handful per process at most. */
#define MAX_MAPS 32
static vrift_map maps[MAX_MAPS];
static int maps_used;
static int remap_busy;

pid_t vrift_raw_getpid(void) { return (pid_t)syscall(SYS_getpid); }

const char *vrift_vdir_path(void) { return vdir_path; }

void vrift_log(const char *fmt, ...) {
    if (!vrift_debug) return;
    char buf[1024];
    int n = snprintf(buf, sizeof buf, "vrift[%d]: ", (int)vrift_raw_getpid());
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof buf) n += vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    if ((size_t)n >= sizeof buf - 1) n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(2, buf, (size_t)n);
    (void)w;
}

/* dlsym may itself call functions we interpose (directly or through a malloc that does);
 * the guard makes such a nested call see NULL, and the callers then use a raw syscall. */
static __thread int resolving;

void *vrift_resolve(const char *name) {
    if (resolving) return NULL;
    resolving = 1;
    void *p = dlsym(RTLD_NEXT, name);
    resolving = 0;
    return p;
}

static void resolve_all(void) {
#define R(fn) if (!vrift_real.fn) vrift_real.fn = (__typeof__(vrift_real.fn))vrift_resolve(#fn);
    R(stat) R(lstat) R(fstatat) R(stat64) R(lstat64) R(fstatat64) R(statx)
    R(access) R(faccessat) R(euidaccess) R(eaccess) R(chdir) R(fchdir)
    R(open) R(open64) R(openat) R(openat64) R(creat) R(creat64) R(fopen) R(fopen64) R(freopen)
    R(freopen64) R(close) R(fclose) R(dup2) R(dup3) R(close_range)
    R(rename) R(renameat) R(renameat2) R(unlink) R(unlinkat) R(mkdir) R(mkdirat) R(rmdir) R(link)
    R(linkat) R(symlink) R(symlinkat) R(truncate) R(truncate64) R(chmod) R(fchmodat) R(utimensat)
    R(utimes) R(futimens) R(utime) R(realpath)
    R(fork) R(vfork) R(execve) R(execv) R(execvp) R(execvpe) R(fexecve) R(posix_spawn) R(posix_spawnp)
    R(system) R(popen) R(_exit) R(_Exit)
#undef R
}

/* ------------------------------------------------------------------ VDir mapping */

/* The writer promised a beat and has not given one for VRIFT_HEARTBEAT_STALE_MS. */
static int beat_stale(const vrift_header *h) {
    uint64_t beat = __atomic_load_n(&h->heartbeat_ms, __ATOMIC_ACQUIRE);
    if (beat == 0) return 0;
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) return 0; /* vDSO: no syscall */
    uint64_t now = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    return now > beat + VRIFT_HEARTBEAT_STALE_MS + 10u; /* + the coarse clock's tick */
}

static int map_file(vrift_map *out) {
    int fd = REAL(open)(vdir_path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct stat st;
    if (REAL(fstatat)(fd, "", &st, AT_EMPTY_PATH) != 0 || st.st_size < (off_t)VRIFT_HEADER_SIZE) {
        REAL(close)(fd);
        return -1;
    }
    if (!vrift_shm_file_ok(&st, geteuid())) {
        vrift_log("VDir %s is not ours (uid %d, mode %o, %d links): refused", vdir_path, (int)st.st_uid,
                  (unsigned)st.st_mode & 07777u, (int)st.st_nlink);
        REAL(close)(fd);
        return -1;
    }
    void *base = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    REAL(close)(fd);
    if (base == MAP_FAILED) return -1;
    const vrift_header *h = (const vrift_header *)base;
    const char *root = (const char *)base + VRIFT_ROOT_OFFSET;
    if (vrift_header_check(base, (uint64_t)st.st_size) != 0 || h->root_len != vrift_root_len ||
        memcmp(root, vrift_root, vrift_root_len) != 0 || h->blksize == 0 ||
        (__atomic_load_n(&h->header_flags, __ATOMIC_ACQUIRE) & VRIFT_H_DEAD) || beat_stale(h)) {
        munmap(base, (size_t)st.st_size);
        errno = EINVAL;
        return -1;
    }
    out->base = (const uint8_t *)base;
    out->size = (uint64_t)st.st_size;
    return 0;
}

int vrift_map_retired(const vrift_map *m) {
    const vrift_header *h = (const vrift_header *)m->base;
    return (__atomic_load_n(&h->header_flags, __ATOMIC_ACQUIRE) & (VRIFT_H_RETIRED | VRIFT_H_DEAD)) ||
           __atomic_load_n(&h->file_size, __ATOMIC_RELAXED) != m->size;
}

/* Slow path, rare: the daemon replaced the file.  Map the new one by name.  Returns the
 * current mapping, or NULL when this call must pass through (someone else is remapping,
 * or the new file is unusable — then the process falls back for good). */
const vrift_map *vrift_remap(void) {
    if (__atomic_exchange_n(&remap_busy, 1, __ATOMIC_ACQUIRE)) return NULL;
    const vrift_map *cur = __atomic_load_n(&vrift_cur, __ATOMIC_ACQUIRE);
    if (cur && !vrift_map_retired(cur)) {
        __atomic_store_n(&remap_busy, 0, __ATOMIC_RELEASE);
        return cur;
    }
    int saved = errno;
    vrift_map m;
    if (maps_used >= MAX_MAPS || map_file(&m) != 0) {
        vrift_log("VDir %s unusable after replacement: fallback", vdir_path);
        __atomic_store_n(&vrift_reads_on, 0, __ATOMIC_RELEASE);
        vrift_count(VRIFT_C_FALLBACKS);
        cur = NULL;
    } else {
        maps[maps_used] = m;
        cur = &maps[maps_used++];
        __atomic_store_n(&vrift_cur, cur, __ATOMIC_RELEASE);
    }
    errno = saved;
    __atomic_store_n(&remap_busy, 0, __ATOMIC_RELEASE);
    return cur;
}

/* ------------------------------------------------------------------ SIGBUS guard
 *
 * A VDir truncated by another process while we map it (nothing of ours does that, but the
 * user can) turns every access past its new end into SIGBUS.  Lookups run under a guard: a
 * SIGBUS whose address lies in one of our mappings while this thread is inside a lookup
 * jumps back out of it, and the process falls back to the kernel for good.  Any other SIGBUS
 * gets the disposition the program had (the handler is installed only over SIG_DFL; a
 * program that installs its own SIGBUS handler later replaces ours, and then a truncation
 * while it runs is its SIGBUS, as before).  The cost on the hot path is one sigsetjmp that
 * saves no signal mask: a handful of register stores, no syscall. */
static __thread sigjmp_buf *bus_guard;
static struct sigaction bus_prev;

static int in_our_maps(const void *addr) {
    const uint8_t *a = (const uint8_t *)addr;
    int n = __atomic_load_n(&maps_used, __ATOMIC_ACQUIRE);
    for (int i = 0; i < n; i++)
        if (a >= maps[i].base && a < maps[i].base + maps[i].size) return 1;
    return 0;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    sigjmp_buf *g = bus_guard;
    if (g && si && si->si_code > 0 && in_our_maps(si->si_addr)) {
        bus_guard = NULL;
        siglongjmp(*g, 1);
    }
    /* not ours: as if we had never been here */
    sigaction(SIGBUS, &bus_prev, NULL);
    if (!si || si->si_code <= 0) raise(sig); /* sent, not a fault: deliver it again */
    /* a fault: returning repeats the access, which now meets the program's disposition */
}

static void install_bus_guard(void) {
    struct sigaction cur;
    if (sigaction(SIGBUS, NULL, &cur) != 0 || (cur.sa_flags & SA_SIGINFO) || cur.sa_handler != SIG_DFL) return;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    /* NODEFER: the jump leaves the handler without restoring a mask, SIGBUS must stay open */
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    bus_prev = cur;
    sigaction(SIGBUS, &sa, NULL);
}

static __thread uint32_t lookups_since_beat_check;

static int guarded_lookup(const char *rel, size_t len, vrift_entry *out) {
    const vrift_map *m = __atomic_load_n(&vrift_cur, __ATOMIC_ACQUIRE);
    if (UNLIKELY(vrift_map_retired(m))) {
        m = vrift_remap();
        if (!m) return -1;
    }
    if (UNLIKELY(++lookups_since_beat_check >= VRIFT_HEARTBEAT_EVERY)) {
        lookups_since_beat_check = 0;
        if (beat_stale((const vrift_header *)m->base)) {
            /* the daemon died (or hangs): its table is frozen; the kernel from now on */
            if (__atomic_exchange_n(&vrift_reads_on, 0, __ATOMIC_ACQ_REL)) {
                vrift_count(VRIFT_C_FALLBACKS);
                vrift_log("VDir %s: its daemon stopped beating: fallback", vdir_path);
            }
            return -1;
        }
    }
    return vrift_lookup(m->base, m->size, rel, len, out);
}

/* Slow path, once per process: an entry failed its checksum.  The lookup already passes
 * the call to the kernel; the daemon is told so that it scrubs and rebuilds the table
 * (its own health check would find it too, within a second). */
static int corrupt_reported;

static void report_corrupt(const char *rel, size_t len) {
    vrift_count(VRIFT_C_VDIR_CORRUPT);
    if (__atomic_exchange_n(&corrupt_reported, 1, __ATOMIC_ACQ_REL)) return;
    int saved = errno;
    static const char head[] = "entry fails its checksum: ";
    char detail[sizeof head + 128];
    size_t n = len < 127 ? len : 127; /* no stdio: this runs inside any stat() */
    memcpy(detail, head, sizeof head - 1);
    memcpy(detail + sizeof head - 1, rel, n);
    detail[sizeof head - 1 + n] = '\0';
    vrift_log("VDir %s: %s: asking the kernel, reporting to the daemon", vdir_path, detail);
    if (vrift_socket_path[0]) vrift_daemon_vdir_bad(detail);
    errno = saved;
}

int vrift_find(const char *rel, size_t len, vrift_entry *out) {
    sigjmp_buf jb;
    sigjmp_buf *outer = bus_guard; /* a lookup from a signal handler inside a lookup */
    if (UNLIKELY(sigsetjmp(jb, 0))) {
        bus_guard = outer;
        if (__atomic_exchange_n(&vrift_reads_on, 0, __ATOMIC_ACQ_REL)) {
            vrift_count(VRIFT_C_FALLBACKS);
            vrift_log("VDir %s shrank under this process (SIGBUS caught): fallback", vdir_path);
        }
        return -1;
    }
    bus_guard = &jb;
    int r = guarded_lookup(rel, len, out);
    bus_guard = outer;
    if (LIKELY(r == 1)) {
        /* Answers the index cannot keep true without seeing every process, passed to the
         * kernel (DIRTY on the copy: "ask the kernel" to every caller):
         * - a file with several names: written through another name (inside the tree or
         *   outside it), this name's entry would keep the old size and times;
         * - a tombstone: a process without the library (a static binary) may have created
         *   the path again since, and a stale ENOENT breaks the build where plain make works. */
        if (UNLIKELY((out->nlink > 1 && !(out->flags & VRIFT_F_DIR)) || (out->flags & VRIFT_F_DELETED)))
            out->flags |= VRIFT_F_DIRTY;
    } else if (UNLIKELY(r == VRIFT_LOOKUP_CORRUPT)) {
        report_corrupt(rel, len);
    }
    return r;
}

/* ------------------------------------------------------------------ cached cwd */

/* Seqlock: odd while a chdir updates it.  Readers copy, then re-check. */
static char cwd_buf[VRIFT_PATH_MAX];
static size_t cwd_len;
static unsigned cwd_seq;
static int cwd_valid;
static int cwd_busy;

/* Off the hot path: after chdir/fchdir, and once after a vfork child touched the cwd. */
static void cwd_refresh(void) {
    if (vrift_raw_getpid() != vrift_pid) {
        /* A vfork child shares our memory: it must not write its cwd into the parent's
         * cache.  Invalidate; the parent revalidates on its next relative path. */
        __atomic_store_n(&cwd_valid, 0, __ATOMIC_RELEASE);
        return;
    }
    if (__atomic_exchange_n(&cwd_busy, 1, __ATOMIC_ACQUIRE)) {
        __atomic_store_n(&cwd_valid, 0, __ATOMIC_RELEASE);
        return;
    }
    int saved = errno;
    char tmp[VRIFT_PATH_MAX];
    int ok = vrift_getcwd(tmp, sizeof tmp) != NULL && tmp[0] == '/';
    __atomic_fetch_add(&cwd_seq, 1, __ATOMIC_ACQ_REL);
    if (ok) {
        size_t n = strlen(tmp);
        if (n == 1) n = 0; /* "/" is kept as the empty prefix */
        memcpy(cwd_buf, tmp, n);
        cwd_len = n;
    }
    __atomic_store_n(&cwd_valid, ok, __ATOMIC_RELAXED);
    __atomic_fetch_add(&cwd_seq, 1, __ATOMIC_RELEASE);
    __atomic_store_n(&cwd_busy, 0, __ATOMIC_RELEASE);
    errno = saved;
}

EXPORT int chdir(const char *path) {
    int r = REAL(chdir) ? vrift_real.chdir(path) : (int)syscall(SYS_chdir, path);
    if (r == 0 && (vrift_reads_on || vrift_recording)) cwd_refresh();
    return r;
}

EXPORT int fchdir(int fd) {
    int r = REAL(fchdir) ? vrift_real.fchdir(fd) : (int)syscall(SYS_fchdir, fd);
    if (r == 0 && (vrift_reads_on || vrift_recording)) cwd_refresh();
    return r;
}

/* Copy the cwd into buf; returns its length or -1 when it cannot be vouched for now. */
static inline long cwd_copy(char *buf) {
    for (int attempt = 0; attempt < 2; attempt++) {
        unsigned s = __atomic_load_n(&cwd_seq, __ATOMIC_ACQUIRE);
        if (LIKELY(!(s & 1u) && __atomic_load_n(&cwd_valid, __ATOMIC_RELAXED))) {
            size_t n = cwd_len;
            if (n >= VRIFT_PATH_MAX) return -1;
            memcpy(buf, cwd_buf, n);
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(&cwd_seq, __ATOMIC_RELAXED) == s) return (long)n;
            return -1;
        }
        if (s & 1u) return -1;
        /* Invalid after a vfork child's chdir: rare, allowed to cost two syscalls. */
        if (vrift_raw_getpid() != vrift_pid) return -1;
        cwd_refresh();
    }
    return -1;
}

long vrift_cwd_copy(char *buf) { return cwd_copy(buf); }

/* ------------------------------------------------------------------ path resolution */

/* A component the caller named is followed by "..": lexical removal is only right when
 * the component is a real directory, which only the index can vouch for. */
static int vouched_dir(const char *abs, size_t n) {
    if (n == vrift_root_len && memcmp(abs, vrift_root, n) == 0) return 1;
    if (n <= vrift_root_len || abs[vrift_root_len] != '/' || memcmp(abs, vrift_root, vrift_root_len) != 0)
        return 0;
    vrift_entry e;
    if (vrift_find(abs + vrift_root_len + 1, n - vrift_root_len - 1, &e) != 1) return 0;
    return (e.flags & (VRIFT_F_DIR | VRIFT_F_DIRTY | VRIFT_F_DELETED | VRIFT_F_SYMLINK)) == VRIFT_F_DIR;
}

int vrift_resolve_path(int dirfd, const char *path, vrift_path *out) {
    char *buf = out->abs;
    size_t n, vouched; /* buf[0..n) absolute, no trailing '/'; "" is "/" */
    const char *p = path;
    if (*p == '/') {
        n = 0;
    } else {
        if (dirfd != AT_FDCWD) return VRIFT_P_UNSURE;
        long c = cwd_copy(buf);
        if (c < 0) return VRIFT_P_UNSURE;
        n = (size_t)c;
    }
    vouched = n; /* the cwd is real (getcwd): its components need no vouching */
    int last_dot = 0;
    while (*p) {
        while (*p == '/') p++;
        if (!*p) break;
        const char *c = p;
        while (*p && *p != '/') p++;
        size_t cl = (size_t)(p - c);
        last_dot = 0;
        if (c[0] == '.' && cl == 1) {
            last_dot = 1;
            continue;
        }
        if (c[0] == '.' && cl == 2 && c[1] == '.') {
            last_dot = 1;
            if (n == 0) continue;
            if (n > vouched && !vouched_dir(buf, n)) return VRIFT_P_UNSURE;
            while (n > 0 && buf[n - 1] != '/') n--;
            if (n > 0) n--;
            if (n < vouched) vouched = n;
            continue;
        }
        if (n + 1 + cl >= VRIFT_PATH_MAX) return VRIFT_P_UNSURE;
        buf[n++] = '/';
        memcpy(buf + n, c, cl);
        n += cl;
    }
    buf[n] = '\0';
    out->abs_len = n;
    out->need_dir = last_dot || (p > path && p[-1] == '/');
    const size_t rl = vrift_root_len;
    if (n < rl || memcmp(buf, vrift_root, rl) != 0) return VRIFT_P_OUTSIDE;
    if (n == rl) {
        out->rel = buf + n;
        out->rel_len = 0;
        return VRIFT_P_INSIDE;
    }
    if (buf[rl] != '/') return VRIFT_P_OUTSIDE;
    out->rel = buf + rl + 1;
    out->rel_len = n - rl - 1;
    return VRIFT_P_INSIDE;
}

/* ------------------------------------------------------------------ counters */

void vrift_flush_counters(void) {
    if (!counters_path[0]) return;
    uint64_t local[VRIFT_C_COUNT];
    int any = 0;
    for (int i = 0; i < VRIFT_C_COUNT; i++) {
        local[i] = __atomic_exchange_n(&vrift_counts[i], 0, __ATOMIC_RELAXED);
        any |= local[i] != 0;
    }
    if (!any) return;
    int saved = errno;
    int fd = REAL(open)(counters_path, O_RDWR | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    /* size and owner checked before the mapping is touched: no SIGBUS, no other user's file
     * (its mode is not checked: counts are no secret) */
    if (fd >= 0 && REAL(fstatat)(fd, "", &st, AT_EMPTY_PATH) == 0 && st.st_size >= (off_t)VRIFT_COUNTERS_SIZE &&
        S_ISREG(st.st_mode) && st.st_uid == geteuid()) {
        void *m = mmap(NULL, VRIFT_COUNTERS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) {
            vrift_counters_file *cf = (vrift_counters_file *)m;
            if (cf->magic == VRIFT_COUNTERS_MAGIC && cf->version == VRIFT_COUNTERS_VERSION) {
                for (int i = 0; i < VRIFT_C_COUNT; i++)
                    if (local[i]) __atomic_fetch_add(&cf->c[i], local[i], __ATOMIC_RELAXED);
            }
            munmap(m, VRIFT_COUNTERS_SIZE);
        }
    }
    if (fd >= 0) REAL(close)(fd);
    errno = saved;
}

/* ------------------------------------------------------------------ start and end */

static void atfork_child(void) {
    vrift_pid = vrift_raw_getpid();
    /* the parent reports what it counted; the child starts from zero */
    for (int i = 0; i < VRIFT_C_COUNT; i++) __atomic_store_n(&vrift_counts[i], 0, __ATOMIC_RELAXED);
    vrift_writes_atfork_child();
    vrift_daemon_atfork_child();
    if (vrift_recording) vrift_rec_atfork_child();
}

static int copy_env(const char *name, char *dst, size_t cap) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    size_t n = strlen(v);
    if (n >= cap) return -1;
    memcpy(dst, v, n + 1);
    return 1;
}

int vrift_onoff(const char *v) {
    static const char *const words[] = {"1", "true", "yes", "on", "0", "false", "no", "off"};
    if (!v) return -1;
    while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r' || *v == '\v' || *v == '\f') v++;
    size_t n = strlen(v);
    while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\n' || v[n - 1] == '\r' ||
                 v[n - 1] == '\v' || v[n - 1] == '\f'))
        n--;
    for (int i = 0; i < 8; i++)
        if (strlen(words[i]) == n && strncasecmp(v, words[i], n) == 0) return i < 4;
    return -1;
}

static int blank(const char *v) {
    if (!v) return 1;
    while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r' || *v == '\v' || *v == '\f') v++;
    return *v == '\0';
}

int vrift_switched_off(const char *enabled, const char *fallback) {
    return (!blank(enabled) && vrift_onoff(enabled) != 1) || (!blank(fallback) && vrift_onoff(fallback) != 0);
}

/* glibc passes main's arguments to constructors: the action cache keys on argv. */
__attribute__((constructor)) static void vrift_init(int argc, char **argv, char **envp) {
    (void)envp;
    int saved = errno;
    int configured = 0;
    resolve_all();
    vrift_pid = vrift_raw_getpid();
    vrift_debug = getenv("VRIFT_DEBUG") && *getenv("VRIFT_DEBUG");
    if (vrift_switched_off(getenv("VRIFT_ENABLED"), getenv("VRIFT_FALLBACK_MODE"))) goto out;
    if (copy_env("VRIFT_PROJECT_ROOT", vrift_root, sizeof vrift_root) != 1 || vrift_root[0] != '/') goto out;
    vrift_root_len = strlen(vrift_root);
    while (vrift_root_len > 1 && vrift_root[vrift_root_len - 1] == '/') vrift_root[--vrift_root_len] = '\0';
    if (vrift_root_len < 2) goto out; /* "/" as a project root: refuse */
    copy_env("VRIFT_COUNTERS", counters_path, sizeof counters_path);
    if (copy_env("VRIFT_SOCKET", vrift_socket_path, sizeof vrift_socket_path) < 0) vrift_socket_path[0] = '\0';
    const char *t = getenv("VRIFT_SOCKET_TIMEOUT_MS");
    if (t && *t) {
        long v = strtol(t, NULL, 10);
        if (v > 0 && v < 600000) vrift_timeout_ms = (int)v;
    }
    if (copy_env("VRIFT_STAGING_DIR", vrift_staging, sizeof vrift_staging) != 1) {
        if (vrift_root_len + sizeof "/.vrift/staging" > sizeof vrift_staging) goto out;
        memcpy(vrift_staging, vrift_root, vrift_root_len);
        memcpy(vrift_staging + vrift_root_len, "/.vrift/staging", sizeof "/.vrift/staging");
    }
    vrift_staging_len = strlen(vrift_staging);
    if (vrift_staging_len + 32 >= sizeof vrift_staging) goto out; /* room for /<pid>.r<n> */
    pthread_atfork(NULL, NULL, atfork_child);
    vrift_count(VRIFT_C_PROCESSES);
    configured = 1;

    if (copy_env("VRIFT_VDIR", vdir_path, sizeof vdir_path) != 1 || map_file(&maps[0]) != 0) {
        /* Fallback for the rest of the process: plain filesystem for reads and writes. */
        vrift_log("VDir %s missing or corrupt: fallback mode", vdir_path[0] ? vdir_path : "(unset)");
        vrift_count(VRIFT_C_FALLBACKS);
        goto out;
    }
    maps_used = 1;
    vrift_cur = &maps[0];
    install_bus_guard();
    cwd_refresh();
    vrift_reads_on = 1;
    vrift_writes_on = 1;
    vrift_log("active: root %s, VDir %s", vrift_root, vdir_path);
out:
    /* last: a cache hit exits from here, with everything above in place */
    if (configured) vrift_action_init(argc, argv);
    errno = saved;
}

__attribute__((destructor)) static void vrift_fini(void) {
    int saved = errno;
    if (vrift_writes_on && vrift_raw_getpid() == vrift_pid) {
        /* exit() runs us before stdio's own flush: flush first, so output written to a
         * staged stream is in the file before it is committed. */
        fflush(NULL);
        vrift_finish_all();
    }
    if (UNLIKELY(vrift_recording)) {
        fflush(NULL);
        vrift_action_fini();
    }
    vrift_flush_counters();
    errno = saved;
}
