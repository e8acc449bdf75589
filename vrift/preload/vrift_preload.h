/*
 * vrift_preload.h — state and helpers shared by the parts of the preload library: the real
 * functions (REAL), the spin locks, the process-wide state and the helpers every file uses.
 * docs/preload.md has the map of the files (one concern each).
 *
 * Everything here is hidden (-fvisibility=hidden); only the interposed libc names are
 * exported.
 */
#ifndef VRIFT_PRELOAD_H
#define VRIFT_PRELOAD_H

#define _GNU_SOURCE
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "vrift_counters.h"
#include "vrift_vdir.h"
#include "vrift_proto.h"

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#define VRIFT_PATH_MAX 4096

/* Interposed, not declared by the headers above (fortify's read; ftime's header marks it
 * deprecated). */
ssize_t __read_chk(int fd, void *b, size_t n, size_t buflen);
struct timeb;
int ftime(struct timeb *tb);

/* ---- real libc functions: reached through REAL() below ---- */
struct statx;
typedef struct vrift_real_fns {
    int (*stat)(const char *, struct stat *);
    int (*lstat)(const char *, struct stat *);
    int (*fstatat)(int, const char *, struct stat *, int);
    int (*stat64)(const char *, struct stat64 *);
    int (*lstat64)(const char *, struct stat64 *);
    int (*fstatat64)(int, const char *, struct stat64 *, int);
    int (*statx)(int, const char *, int, unsigned int, struct statx *);
    int (*__xstat)(int, const char *, struct stat *);
    int (*__lxstat)(int, const char *, struct stat *);
    int (*__fxstatat)(int, int, const char *, struct stat *, int);
    int (*__xstat64)(int, const char *, struct stat64 *);
    int (*__lxstat64)(int, const char *, struct stat64 *);
    int (*__fxstatat64)(int, int, const char *, struct stat64 *, int);
    int (*access)(const char *, int);
    int (*faccessat)(int, const char *, int, int);
    int (*euidaccess)(const char *, int);
    int (*eaccess)(const char *, int);
    int (*chdir)(const char *);
    int (*fchdir)(int);
    /* write path */
    int (*open)(const char *, int, ...);
    int (*open64)(const char *, int, ...);
    int (*openat)(int, const char *, int, ...);
    int (*openat64)(int, const char *, int, ...);
    int (*creat)(const char *, mode_t);
    int (*creat64)(const char *, mode_t);
    FILE *(*fopen)(const char *, const char *);
    FILE *(*fopen64)(const char *, const char *);
    FILE *(*freopen)(const char *, const char *, FILE *);
    FILE *(*freopen64)(const char *, const char *, FILE *);
    int (*close)(int);
    int (*fclose)(FILE *);
    int (*dup2)(int, int);
    int (*dup3)(int, int, int);
    int (*close_range)(unsigned int, unsigned int, int);
    int (*rename)(const char *, const char *);
    int (*renameat)(int, const char *, int, const char *);
    int (*renameat2)(int, const char *, int, const char *, unsigned int);
    int (*unlink)(const char *);
    int (*unlinkat)(int, const char *, int);
    int (*mkdir)(const char *, mode_t);
    int (*mkdirat)(int, const char *, mode_t);
    int (*rmdir)(const char *);
    int (*link)(const char *, const char *);
    int (*linkat)(int, const char *, int, const char *, int);
    int (*symlink)(const char *, const char *);
    int (*symlinkat)(const char *, int, const char *);
    int (*truncate)(const char *, off_t);
    int (*truncate64)(const char *, off64_t);
    int (*chmod)(const char *, mode_t);
    int (*fchmodat)(int, const char *, mode_t, int);
    int (*utimensat)(int, const char *, const struct timespec *, int);
    int (*utimes)(const char *, const struct timeval *);
    int (*futimens)(int, const struct timespec *);
    int (*utime)(const char *, const void *);
    /* process creation */
    pid_t (*fork)(void);
    pid_t (*vfork)(void);
    int (*execve)(const char *, char *const[], char *const[]);
    int (*execv)(const char *, char *const[]);
    int (*execvp)(const char *, char *const[]);
    int (*execvpe)(const char *, char *const[], char *const[]);
    int (*fexecve)(int, char *const[], char *const[]);
    int (*posix_spawn)(pid_t *, const char *, const void *, const void *, char *const[], char *const[]);
    int (*posix_spawnp)(pid_t *, const char *, const void *, const void *, char *const[], char *const[]);
    int (*system)(const char *);
    FILE *(*popen)(const char *, const char *);
    void (*_exit)(int);
    void (*_Exit)(int);
    char *(*realpath)(const char *, char *); /* the library's own calls: never recorded */
    /* Resolved on first use only (resolve_all leaves them): functions only the action cache
     * watches, most processes never call them through us.  Typed as libc declares them. */
    __typeof__(&read) read;
    __typeof__(&__read_chk) __read_chk;
    __typeof__(&readv) readv;
    __typeof__(&pread) pread;
    __typeof__(&pread64) pread64;
    __typeof__(&connect) connect;
    __typeof__(&bind) bind;
    __typeof__(&sendto) sendto;
    __typeof__(&getrandom) getrandom;
    __typeof__(&getentropy) getentropy;
    __typeof__(&opendir) opendir;
    __typeof__(&fdopendir) fdopendir;
    __typeof__(&readlink) readlink;
    __typeof__(&readlinkat) readlinkat;
    __typeof__(&mkstemp) mkstemp;
    __typeof__(&mkstemp64) mkstemp64;
    __typeof__(&mkostemp) mkostemp;
    __typeof__(&mkostemp64) mkostemp64;
    __typeof__(&mkstemps) mkstemps;
    __typeof__(&mkstemps64) mkstemps64;
    __typeof__(&mkostemps) mkostemps;
    __typeof__(&mkostemps64) mkostemps64;
    __typeof__(&mkdtemp) mkdtemp;
    __typeof__(&time) time;
    __typeof__(&gettimeofday) gettimeofday;
    __typeof__(&clock_gettime) clock_gettime;
    __typeof__(&timespec_get) timespec_get;
    __typeof__(&ftime) ftime;
    __typeof__(&getcwd) getcwd;
    __typeof__(&get_current_dir_name) get_current_dir_name;
    __typeof__(&getenv) getenv;
    __typeof__(&secure_getenv) secure_getenv;
    __typeof__(&copy_file_range) copy_file_range;
    __typeof__(&sendfile) sendfile;
    __typeof__(&sendfile64) sendfile64;
    __typeof__(&splice) splice;
} vrift_real_fns;

extern vrift_real_fns vrift_real;
void *vrift_resolve(const char *name);

/*
 * REAL(fn) is the one way the library reaches libc's own `fn` (the next definition after
 * ours): an lvalue of the pointer in vrift_real, resolved with dlsym(RTLD_NEXT) when it is
 * still NULL — before the constructor ran (resolve_all fills the first part of the table),
 * or on first use (the last part).  It stays NULL while dlsym itself is running (a nested
 * call from inside it): callers test it and fall back to a raw syscall, e.g.
 *     if (REAL(read)) return vrift_real.read(fd, b, n);
 *     return syscall(SYS_read, fd, b, n);
 */
#define REAL(fn)                                                                          \
    (*({                                                                                   \
        if (UNLIKELY(vrift_real.fn == NULL))                                               \
            vrift_real.fn = (__typeof__(vrift_real.fn))vrift_resolve(#fn);                 \
        &vrift_real.fn;                                                                    \
    }))

/* ---- spin locks ----
 * The library's four locks (the fd table of write.c, the read-write VDir mapping of dirty.c,
 * the record buffer of record.c, the daemon connection of client.c) are words spun on, not
 * pthread mutexes: they are taken inside interposed calls, possibly before the constructor
 * ran, and held for a few stores — the connection's for one request, bounded by the socket
 * timeout.  A fork child resets each one (its holder, another thread, did not follow). */
typedef int vrift_spinlock;

static inline void vrift_spin_lock(vrift_spinlock *l) {
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) __builtin_ia32_pause();
}
static inline int vrift_spin_trylock(vrift_spinlock *l) { return !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE); }
static inline void vrift_spin_unlock(vrift_spinlock *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }
/* In a fork child: whoever held it is not there. */
static inline void vrift_spin_reset(vrift_spinlock *l) { __atomic_store_n(l, 0, __ATOMIC_RELEASE); }

/* ---- process-wide state ---- */
typedef struct vrift_map {
    const uint8_t *base;
    uint64_t size;
} vrift_map;

extern int vrift_reads_on;          /* VDir mapped and valid: the read path may answer */
extern int vrift_writes_on;         /* staging/DIRTY/commit enabled */
extern const vrift_map *vrift_cur;  /* current mapping (atomic pointer; old ones are kept) */
extern char vrift_root[VRIFT_PATH_MAX];
extern size_t vrift_root_len;
extern char vrift_staging[VRIFT_PATH_MAX];
extern size_t vrift_staging_len;
extern char vrift_socket_path[108];
extern int vrift_timeout_ms;
extern int vrift_debug;
extern pid_t vrift_pid;             /* this process; updated in the fork child handler */
extern uint64_t vrift_counts[VRIFT_C_COUNT];

static inline void vrift_count(int which) {
    /* relaxed load+store, not a locked add: exact for one thread, approximate under races */
    __atomic_store_n(&vrift_counts[which], __atomic_load_n(&vrift_counts[which], __ATOMIC_RELAXED) + 1,
                     __ATOMIC_RELAXED);
}

void vrift_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The on/off words of vrift/onoff.py (any case, blanks around ignored): 1 on, 0 off, -1 neither
 * (NULL and blank included).  tests/integration/test_usability_scope.py compares both by behaviour. */
int vrift_onoff(const char *v);
/* Do these values of VRIFT_ENABLED and VRIFT_FALLBACK_MODE turn the library off?  Unset or
 * blank: no; a word that is not on/off: yes (vrift wrap runs such a build plainly too). */
int vrift_switched_off(const char *enabled, const char *fallback);
pid_t vrift_raw_getpid(void);
void vrift_flush_counters(void);
int vrift_map_retired(const vrift_map *m);
const vrift_map *vrift_remap(void);

/* ---- path resolution ---- */
typedef struct vrift_path {
    char abs[VRIFT_PATH_MAX]; /* normalised absolute path */
    size_t abs_len;
    const char *rel;          /* into abs: relative to the root ("" is the root) */
    size_t rel_len;
    int need_dir;             /* trailing '/', '.' or '..': must be a directory (follows links) */
} vrift_path;

enum { VRIFT_P_OUTSIDE = 0, VRIFT_P_INSIDE = 1, VRIFT_P_UNSURE = -1 };

/* Make `path` (relative to dirfd) absolute and lexically normal.  INSIDE: rel is set;
 * OUTSIDE: not a project path; UNSURE: cannot vouch for the meaning (pass through). */
int vrift_resolve_path(int dirfd, const char *path, vrift_path *out);

/* Lookup on the current mapping: 1 hit, 0 miss, -1 unusable, VRIFT_LOOKUP_CORRUPT: an entry
 * failed its checksum (counted and reported to the daemon once per process). */
int vrift_find(const char *rel, size_t len, vrift_entry *out);

int vrift_certain_absent(int dirfd, const char *path);

/* ---- write path (write.c, dirty.c) ---- */
const char *vrift_vdir_path(void);
uint32_t vrift_mark_dirty(const char *rel, size_t len, int subtree);
uint32_t vrift_mark_path(const char *abs, int subtree);
void vrift_mark_inode(uint64_t dev, uint64_t ino);
int vrift_resolve_name(int dirfd, const char *path, char *out);
int vrift_rel_of(const char *abs, const char **rel, size_t *rel_len);
void vrift_dirty_atfork_child(void);
void vrift_before_exec(void);
int vrift_staged_count(void);             /* staged files not yet published, this process */
void vrift_publish_path(const char *abs); /* publish a staged file of this path, if any */
void vrift_before_spawn(void);            /* publish every staged file this process owns */
void vrift_finish_all(void);              /* at exit: close logic for every owned fd */
void vrift_writes_atfork_child(void);
/* A shared flock on the directory of `abs` while its names change (see write.c); -1 if none. */
int vrift_lock_dir_of(const char *abs);
void vrift_unlock_dir(int dfd);

/* ---- daemon client (client.c, proto.c) ---- */
/* One-way notifications (never answered): a path opened for writing, a staged file renamed
 * into place by this process, a path to re-read.  0 sent, -1 not. */
enum { VRIFT_N_WRITING = VRP_M_WRITING, VRIFT_N_WRITTEN = VRP_M_WRITTEN, VRIFT_N_CHANGED = VRP_M_CHANGED };
int vrift_daemon_notify(int type, const char *const *paths, int n);
/* A one-way frame with a body laid out by the caller (ACTION_REPLAYED); 0 sent. */
int vrift_daemon_send(uint16_t type, const void *body, uint32_t len);
/* INVALIDATE: 0 accepted, -1 unusable. */
int vrift_daemon_invalidate(const char *const *paths, int n);
/* INVALIDATE (`wait`) or CHANGED; `shallow`: not what is under a named directory.  0 sent/accepted. */
int vrift_daemon_reread(const char *const *paths, int n, int wait, int shallow);
/* BEGIN_WRITE (new paths without an entry: a DIRTY placeholder): 0 accepted, -1 unusable. */
int vrift_daemon_begin_write(const char *const *paths, int n);
/* VDIR_BAD: tell the daemon its VDir is damaged (it scrubs and rebuilds it); 0 answered. */
int vrift_daemon_vdir_bad(const char *detail);
void vrift_daemon_atfork_child(void);

/* ---- action cache (action.c, record.c) ---- */
long vrift_cwd_copy(char *buf);
char *vrift_getcwd(char *buf, size_t n); /* the real getcwd: not a read by the program */
#include "vrift_action.h"

/* 1 when `abs` names a build tool's private state file (written straight through, not indexed). */
int vrift_tool_state(const char *abs);

/* write(2) until all of `p` is written (EINTR retried); 0 or -1. */
int vrift_write_all(int fd, const void *p, size_t n);

/* `v` in decimal at `out`, no terminator; returns the number of digits. */
size_t vrift_put_dec(char *out, uint64_t v);

#endif
