/*
 * write.c — the write path (SPEC §5.4, docs/preload.md "Writes").
 *
 * open for writing a project path → DIRTY on the path and its directory, a staging file
 * <staging>/<pid>/<n> (a copy of the old content when the mode keeps it) is opened in its
 * place, a shared flock "beacon" is put on that open file description, and the daemon is
 * told, one-way, that the path is being written (WRITING: it re-reads the path if this
 * process dies first).  The beacon lives as long as any fd, in any process, refers to the
 * description: fork, dup and exec carry it along, and the kernel drops it when the last one
 * closes (also at _exit, a crash, or in a static binary).
 *
 * close by the process that opened it (the owner): if a probe lock on a fresh open of the
 * staging file succeeds, nobody else holds the description → the file is renamed onto the
 * real path here (atomic: a reader sees the old file or the new one, never half of one), and
 * the daemon is told WRITTEN, without waiting: it hashes, stores and indexes the file later,
 * and clears DIRTY — readers go to the real file until then.  If someone still holds it (shell
 * redirection: `cc > out` keeps it on fd 1 of the exec'ed child), the staging file is
 * published early the same way, the path stays DIRTY, and the daemon is told to re-read it
 * once the beacon is gone (CHANGED).  Non-owners never rename.
 *
 * Before this process starts another (fork, vfork, posix_spawn, exec, system, popen),
 * and before it renames, links, stats… a path it has staged, the staging file is
 * published, so no other process and no later call ever misses data it wrote.
 */
#include "vrift_preload.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define FD_MAX 1024
#define COPY_MAX (64ll << 20) /* larger files kept by the mode are written in place */

enum { S_FREE = 0, S_STAGED, S_PUBLISHED, S_DIRECT };

typedef struct fd_slot {
    int state;
    pid_t owner;
    uint64_t seq; /* staging file <staging>/<owner>/<seq> */
    char virt[VRIFT_PATH_MAX];
} fd_slot;

static fd_slot slots[FD_MAX];
/* Highest fd whose slot was ever used: a slot spans a page (its path), so scanning all of
 * FD_MAX at exit faulted in 4 MiB of zero pages — about 1 ms in every process. */
static int slot_high = -1;
static int staged_count; /* S_STAGED slots of this process */
static vrift_spinlock table_lock;
static uint64_t next_seq;
static pid_t staging_dir_pid; /* <staging>/<pid> exists for this pid */



int vrift_staged_count(void) { return __atomic_load_n(&staged_count, __ATOMIC_RELAXED); }

/* No stdio here: this runs inside interposed calls. */
size_t vrift_put_dec(char *out, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* <staging>/<owner>[/<seq>]; start-up checked that the staging dir leaves room for both. */
static void staging_name(char *out, pid_t owner, int with_seq, uint64_t seq) {
    size_t n = vrift_staging_len;
    memcpy(out, vrift_staging, n);
    out[n++] = '/';
    n += vrift_put_dec(out + n, (uint64_t)owner);
    if (with_seq) {
        out[n++] = '/';
        n += vrift_put_dec(out + n, seq);
    }
    out[n] = '\0';
}

static void staging_path(char *out, pid_t owner, uint64_t seq) { staging_name(out, owner, 1, seq); }

static void remove_staging_dir(void);

static int real_open(const char *path, int flags, mode_t mode) {
    if (REAL(open)) return vrift_real.open(path, flags, mode);
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

static int real_close(int fd) {
    if (REAL(close)) return vrift_real.close(fd);
    return (int)syscall(SYS_close, fd);
}

static void parent_of(const char *abs, char *out) {
    size_t n = strlen(abs);
    while (n > 1 && abs[n - 1] != '/') n--;
    if (n > 1) n--;
    memcpy(out, abs, n);
    out[n] = '\0';
}

/* Tell the daemon to re-read a path and its directory, one-way (best effort: without a
 * daemon the DIRTY bits stay set and readers keep going to the kernel, which is correct). */
static void invalidate_one(const char *abs) {
    char parent[VRIFT_PATH_MAX];
    parent_of(abs, parent);
    const char *paths[2] = {abs, parent};
    if (vrift_daemon_notify(VRIFT_N_CHANGED, paths, 2) == 0) vrift_count(VRIFT_C_INVALIDATED);
}

/* Changes to the names in a directory — and the DIRTY marks announcing them — are made under
 * a shared flock of that directory; the daemon clears DIRTY only under an exclusive one, after
 * checking the entry against the disk (vrift/daemon/commit.py, settle()): it either sees the
 * change, or clears before the marks — never between a mark and the change it announces.  A
 * directory locked exclusively by someone else for long is not waited for beyond ~50 ms.
 * Returns the fd holding the lock (close it to unlock), or -1. */
int vrift_lock_dir_of(const char *abs) {
    char parent[VRIFT_PATH_MAX];
    parent_of(abs, parent);
    int dfd = real_open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    for (int i = 0; dfd >= 0 && flock(dfd, LOCK_SH | LOCK_NB) != 0 && i < 1000; i++) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return dfd;
}

void vrift_unlock_dir(int dfd) {
    if (dfd >= 0) real_close(dfd); /* drops the flock */
}

/* Put a staged file on its real path: marks and rename under the directory's lock. */
static int place(const char *staging, const char *virt) {
    int saved, dfd = vrift_lock_dir_of(virt);
    vrift_mark_path(virt, 0);
    int r = REAL(rename)(staging, virt);
    saved = errno;
    vrift_unlock_dir(dfd);
    errno = saved;
    return r;
}

/* ------------------------------------------------------------------ staging files */

static int ensure_dir(const char *path) {
    if (REAL(mkdir)(path, 0700) == 0) {
        /* a new name in an indexed directory (<root>/.vrift) changes that directory */
        size_t n = strlen(path);
        while (n > 0 && path[n - 1] != '/') n--;
        if (n > 0 && n - 1 == vrift_root_len && memcmp(path, vrift_root, vrift_root_len) == 0)
            vrift_mark_dirty("", 0, 0);
        return 0;
    }
    return errno == EEXIST ? 0 : -1;
}

static int ensure_staging_dir(pid_t pid) {
    if (staging_dir_pid == pid) return 0;
    char buf[VRIFT_PATH_MAX];
    /* <root>/.vrift/staging by default: create the chain, private to the user */
    size_t n = vrift_staging_len;
    memcpy(buf, vrift_staging, n + 1);
    for (size_t i = vrift_root_len + 1; i < n; i++) {
        if (buf[i] != '/') continue;
        buf[i] = '\0';
        if (i > vrift_root_len && ensure_dir(buf) != 0 && errno != EEXIST) {
            buf[i] = '/';
            break;
        }
        buf[i] = '/';
    }
    if (ensure_dir(vrift_staging) != 0) return -1;
    staging_name(buf, pid, 0, 0);
    if (ensure_dir(buf) != 0) return -1;
    staging_dir_pid = pid;
    return 0;
}

/* Copy `src` (an fd of the real file) into `dst`: reflink if the filesystem can, else an
 * in-kernel copy, else read/write. */
static int copy_content(int src, int dst) {
    if (ioctl(dst, FICLONE, src) == 0) return 0;
    for (;;) {
        ssize_t r = copy_file_range(src, NULL, dst, NULL, 1 << 30, 0);
        if (r == 0) return 0;
        if (r > 0) continue;
        if (errno == EINTR) continue;
        break;
    }
    char buf[65536];
    if (lseek(src, 0, SEEK_SET) < 0 || lseek(dst, 0, SEEK_SET) < 0 || ftruncate(dst, 0) < 0) return -1;
    for (;;) {
        ssize_t r = read(src, buf, sizeof buf);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        for (ssize_t off = 0; off < r;) {
            ssize_t w = write(dst, buf + off, (size_t)(r - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                return -1;
            }
            off += w;
        }
    }
}

/* ------------------------------------------------------------------ planning an open */

enum { P_PASS = 0, P_STAGED, P_DIRECT };

typedef struct write_plan {
    int kind;
    int existing;      /* the real file exists (regular) */
    struct stat st;    /* its stat when existing */
    uint64_t seq;
    char abs[VRIFT_PATH_MAX];
    char staging[VRIFT_PATH_MAX];
} write_plan;

/* Build tools' private state files (ninja rewrites .ninja_lock after every edge and appends to
 * .ninja_log): never indexed (vrift/ingest.py TOOL_STATE, checked by tests/unit/test_layout.py), so
 * written straight through — staging and committing them cost the build a daemon round trip
 * per edge. */
static const char *const tool_state[] = {".ninja_log", ".ninja_deps", ".ninja_lock"};

int vrift_tool_state(const char *abs) {
    const char *base = strrchr(abs, '/');
    base = base ? base + 1 : abs;
    if (base[0] != '.') return 0;
    for (size_t i = 0; i < sizeof tool_state / sizeof *tool_state; i++)
        if (strcmp(base, tool_state[i]) == 0) return 1;
    return 0;
}

static int wants_write(int flags) {
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* Decide how to open a project path for writing and prepare for it.  Errors of the user's
 * call itself (no such file, no permission, is a directory…) are left to the real call. */
static void plan_write(int dirfd, const char *path, int flags, write_plan *p) {
    p->kind = P_PASS;
    if (!vrift_writes_on || (flags & (O_PATH | __O_TMPFILE)) == O_PATH || (flags & __O_TMPFILE) == __O_TMPFILE)
        return;
    if (!vrift_resolve_name(dirfd, path, p->abs)) return;
    if (vrift_tool_state(p->abs)) return;
    pid_t pid = vrift_raw_getpid();
    int saved = errno;
    struct stat lst;
    p->existing = 0;
    int have = REAL(fstatat)(AT_FDCWD, p->abs, &lst, AT_SYMLINK_NOFOLLOW) == 0;
    if (have && S_ISLNK(lst.st_mode)) {
        /* open follows the link: the target changes, in place */
        char target[PATH_MAX];
        if (REAL(realpath)(p->abs, target)) {
            const char *rel;
            size_t rl;
            if (vrift_rel_of(target, &rel, &rl)) vrift_mark_path(target, 0);
        }
        p->kind = P_DIRECT;
    } else if (have && !S_ISREG(lst.st_mode)) {
        errno = saved;
        return; /* directory, fifo, device: nothing the index tracks changes */
    } else if (!have && !(flags & O_CREAT)) {
        errno = saved;
        return; /* ENOENT from the real call */
    } else if ((flags & (O_CREAT | O_EXCL)) == (O_CREAT | O_EXCL) || pid != vrift_pid ||
               (flags & O_ACCMODE) == O_RDONLY) {
        /* exclusive creation must be decided on the real name; a vfork child shares our
         * memory and must not touch the fd table */
        p->kind = P_DIRECT;
    } else if (have && (lst.st_nlink > 1 || (!(flags & O_TRUNC) && lst.st_size > COPY_MAX))) {
        p->kind = P_DIRECT; /* keep hard links shared; do not copy huge files */
        if (lst.st_nlink > 1) vrift_mark_inode((uint64_t)lst.st_dev, (uint64_t)lst.st_ino);
    } else {
        /* permission problems are reported by the real call, not hidden by staging */
        int need = (flags & O_ACCMODE) == O_RDWR ? R_OK | W_OK : W_OK;
        char parent[VRIFT_PATH_MAX];
        parent_of(p->abs, parent);
        if (have ? REAL(faccessat)(AT_FDCWD, p->abs, need, AT_EACCESS) != 0
                 : REAL(faccessat)(AT_FDCWD, parent, W_OK | X_OK, AT_EACCESS) != 0) {
            errno = saved;
            return;
        }
        struct stat pst, sst;
        if (ensure_staging_dir(pid) != 0 || REAL(fstatat)(AT_FDCWD, parent, &pst, 0) != 0 ||
            REAL(fstatat)(AT_FDCWD, vrift_staging, &sst, 0) != 0 || pst.st_dev != sst.st_dev) {
            p->kind = P_DIRECT; /* rename cannot cross filesystems */
        } else {
            p->kind = P_STAGED;
        }
    }
    p->existing = have && S_ISREG(lst.st_mode);
    if (p->existing) p->st = lst;
    vrift_mark_path(p->abs, 0);
    if (p->kind == P_DIRECT && !have) {
        /* a new file written in place is visible (and indexed by the watcher) while it is
         * written: only the daemon can put a DIRTY entry where there is none yet */
        const char *one[1] = {p->abs};
        vrift_daemon_begin_write(one, 1);
    }
    if (p->kind == P_STAGED || (p->kind == P_DIRECT && have)) {
        /* one-way: if this process dies before its close, the daemon re-reads the path */
        const char *one[1] = {p->abs};
        vrift_daemon_notify(VRIFT_N_WRITING, one, 1);
    }
    if (p->kind == P_STAGED) {
        p->seq = __atomic_fetch_add(&next_seq, 1, __ATOMIC_RELAXED);
        staging_path(p->staging, pid, p->seq);
        if (p->existing) {
            /* the old content is kept unless truncated; the mode is set after the user's
             * open (a read-only mode must not make our own open fail) */
            int dst = real_open(p->staging, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
            int ok = dst >= 0;
            if (ok && !(flags & O_TRUNC)) {
                int src = real_open(p->abs, O_RDONLY | O_CLOEXEC, 0);
                ok = src >= 0 && copy_content(src, dst) == 0;
                if (src >= 0) real_close(src);
            }
            if (dst >= 0) real_close(dst);
            if (!ok) {
                REAL(unlink)(p->staging);
                p->kind = P_DIRECT;
            }
        }
    }
    if (p->kind == P_DIRECT) vrift_count(VRIFT_C_DIRECT);
    errno = saved;
}

/* After the user's open of the staging file (or the real one) succeeded. */
static void register_fd(write_plan *p, int fd) {
    int saved = errno;
    if (p->kind == P_STAGED && p->existing) {
        fchmod(fd, p->st.st_mode & 07777);
        if (p->st.st_uid != geteuid() || p->st.st_gid != getegid()) {
            int r = fchown(fd, p->st.st_uid, p->st.st_gid);
            (void)r;
        }
    }
    flock(fd, LOCK_SH); /* the beacon (see the top of this file) */
    pid_t pid = vrift_raw_getpid();
    if (fd >= 0 && fd < FD_MAX && pid == vrift_pid) {
        vrift_spin_lock(&table_lock);
        fd_slot *s = &slots[fd];
        if (s->state == S_STAGED && s->owner == pid) __atomic_fetch_sub(&staged_count, 1, __ATOMIC_RELAXED);
        s->state = p->kind == P_STAGED ? S_STAGED : S_DIRECT;
        if (fd > slot_high) __atomic_store_n(&slot_high, fd, __ATOMIC_RELEASE);
        s->owner = pid;
        s->seq = p->seq;
        strcpy(s->virt, p->abs);
        if (s->state == S_STAGED) __atomic_fetch_add(&staged_count, 1, __ATOMIC_RELAXED);
        vrift_spin_unlock(&table_lock);
    } else {
        /* untracked: make the data visible under its real name now; the daemon re-reads
         * the path once the beacon is gone */
        if (p->kind == P_STAGED && place(p->staging, p->abs) == 0) vrift_count(VRIFT_C_PUBLISHED);
        invalidate_one(p->abs);
    }
    errno = saved;
}

static void abandon(write_plan *p) {
    int saved = errno;
    if (p->kind == P_STAGED) REAL(unlink)(p->staging);
    invalidate_one(p->abs); /* DIRTY was set for nothing: let the daemon clear it */
    errno = saved;
}

/* ------------------------------------------------------------------ close, publish, commit */

/* Probe: 1 when no open file description holds the beacon any more, 0 when one still
 * does, -1 when the staging file is gone. */
static int last_reference(const char *staging) {
    int fd = real_open(staging, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return -1;
    int r = flock(fd, LOCK_EX | LOCK_NB) == 0 ? 1 : 0;
    real_close(fd);
    return r;
}

static int publish(fd_slot *s) {
    char staging[VRIFT_PATH_MAX];
    staging_path(staging, s->owner, s->seq);
    if (place(staging, s->virt) != 0) return -1;
    vrift_count(VRIFT_C_PUBLISHED);
    return 0;
}

/* The close logic for a slot this process owns, after its fd was closed.  Returns -1
 * when the data could not be put in place (close() then reports EIO). */
static int finish(fd_slot *s) {
    if (s->state != S_STAGED) {
        invalidate_one(s->virt);
        return 0;
    }
    char staging[VRIFT_PATH_MAX];
    staging_path(staging, s->owner, s->seq);
    int last = last_reference(staging);
    if (last < 0) return 0; /* rolled back by the daemon, or published elsewhere */
    if (!last) {
        int r = publish(s);
        invalidate_one(s->virt);
        return r;
    }
    /* The file goes in place now; the daemon indexes it later, nobody waits for that.  DIRTY
     * stays set until then: the entry in memory still describes the old file. */
    if (place(staging, s->virt) == 0) {
        const char *one[1] = {s->virt};
        vrift_count(vrift_daemon_notify(VRIFT_N_WRITTEN, one, 1) == 0 ? VRIFT_C_COMMITTED : VRIFT_C_COMMIT_LOCAL);
        return 0;
    }
    if (errno == ENOENT) return 0; /* the staging file is gone: rolled back, nothing to put */
    REAL(unlink)(staging);
    return -1;
}

/* Take a tracked fd out of the table.  1: the caller must run finish() on *out. */
static int take(int fd, fd_slot *out) {
    if (fd < 0 || fd >= FD_MAX || !__atomic_load_n(&slots[fd].state, __ATOMIC_RELAXED)) return 0;
    pid_t pid = vrift_raw_getpid();
    if (pid != vrift_pid) return 0; /* vfork child: the table is the parent's */
    vrift_spin_lock(&table_lock);
    fd_slot *s = &slots[fd];
    int mine = s->state != S_FREE && s->owner == pid;
    if (mine) {
        out->state = s->state;
        out->owner = s->owner;
        out->seq = s->seq;
        strcpy(out->virt, s->virt);
    }
    if (mine && s->state == S_STAGED) __atomic_fetch_sub(&staged_count, 1, __ATOMIC_RELAXED);
    s->state = S_FREE;
    vrift_spin_unlock(&table_lock);
    return mine;
}

EXPORT int close(int fd) {
    if (LIKELY(fd < 0 || fd >= FD_MAX || !__atomic_load_n(&slots[fd].state, __ATOMIC_RELAXED)))
        return real_close(fd);
    fd_slot snap;
    int mine = take(fd, &snap);
    int r = real_close(fd);
    if (!mine) return r;
    int saved = errno;
    if (finish(&snap) != 0 && r == 0) {
        r = -1;
        saved = EIO;
    }
    errno = saved;
    return r;
}

EXPORT int fclose(FILE *fp) {
    int fd = fp ? fileno(fp) : -1;
    fd_slot snap;
    int mine = take(fd, &snap);
    int r = REAL(fclose)(fp);
    if (!mine) return r;
    int saved = errno;
    if (finish(&snap) != 0 && r == 0) {
        r = EOF;
        saved = EIO;
    }
    errno = saved;
    return r;
}

/* dup2/dup3 onto a tracked fd close it silently. */
static int after_dup(int newfd, int oldfd, int r, int mine, fd_slot *snap) {
    if (!mine) return r;
    int saved = errno;
    if (r < 0 || newfd == oldfd) {
        /* nothing was closed: put it back */
        vrift_spin_lock(&table_lock);
        slots[newfd] = *snap;
        if (newfd > slot_high) __atomic_store_n(&slot_high, newfd, __ATOMIC_RELEASE);
        if (snap->state == S_STAGED) __atomic_fetch_add(&staged_count, 1, __ATOMIC_RELAXED);
        vrift_spin_unlock(&table_lock);
    } else {
        finish(snap);
    }
    errno = saved;
    return r;
}

EXPORT int dup2(int oldfd, int newfd) {
    fd_slot snap;
    int mine = take(newfd, &snap);
    return after_dup(newfd, oldfd, REAL(dup2)(oldfd, newfd), mine, &snap);
}

EXPORT int dup3(int oldfd, int newfd, int flags) {
    fd_slot snap;
    int mine = take(newfd, &snap);
    return after_dup(newfd, oldfd, REAL(dup3)(oldfd, newfd, flags), mine, &snap);
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
    int r = REAL(close_range) ? vrift_real.close_range(first, last, flags)
                              : (int)syscall(SYS_close_range, first, last, flags);
    if (r != 0 || (flags & CLOSE_RANGE_CLOEXEC) || vrift_raw_getpid() != vrift_pid) return r;
    int saved = errno;
    for (unsigned int fd = first; fd <= last && fd < FD_MAX; fd++) {
        fd_slot snap;
        if (take((int)fd, &snap)) finish(&snap);
    }
    errno = saved;
    return r;
}

/* Publish one staged path of this process (its own later calls must see its data). */
void vrift_publish_path(const char *abs) {
    if (vrift_raw_getpid() != vrift_pid || !vrift_spin_trylock(&table_lock)) return;
    int saved = errno;
    for (int fd = 0; fd <= slot_high && staged_count > 0; fd++) {
        fd_slot *s = &slots[fd];
        if (s->state == S_STAGED && s->owner == vrift_pid && strcmp(s->virt, abs) == 0 && publish(s) == 0) {
            s->state = S_PUBLISHED;
            __atomic_fetch_sub(&staged_count, 1, __ATOMIC_RELAXED);
        }
    }
    vrift_spin_unlock(&table_lock);
    errno = saved;
}

void vrift_before_spawn(void) {
    if (!vrift_writes_on || vrift_staged_count() == 0 || vrift_raw_getpid() != vrift_pid) return;
    int saved = errno;
    vrift_spin_lock(&table_lock);
    for (int fd = 0; fd <= slot_high && staged_count > 0; fd++) {
        fd_slot *s = &slots[fd];
        if (s->state == S_STAGED && s->owner == vrift_pid && publish(s) == 0) {
            s->state = S_PUBLISHED;
            __atomic_fetch_sub(&staged_count, 1, __ATOMIC_RELAXED);
        }
    }
    vrift_spin_unlock(&table_lock);
    errno = saved;
}

/* Before exec replaces this image: everything published, and the daemon told to re-read
 * what this process wrote (it checks the beacon before trusting the file). */
void vrift_before_exec(void) {
    if (!vrift_writes_on || vrift_raw_getpid() != vrift_pid) return;
    vrift_before_spawn();
    int saved = errno;
    for (int fd = 0; fd < FD_MAX; fd++) {
        fd_slot *s = &slots[fd];
        if (s->state != S_FREE && s->owner == vrift_pid) invalidate_one(s->virt);
    }
    remove_staging_dir();
    errno = saved;
}

/* The per-process staging directory goes when empty (a later image with the same pid
 * after exec makes it again). */
static void remove_staging_dir(void) {
    if (staging_dir_pid != vrift_pid) return;
    char buf[VRIFT_PATH_MAX];
    staging_name(buf, vrift_pid, 0, 0);
    if (REAL(rmdir)(buf) == 0) staging_dir_pid = 0;
}

/* At exit: the close logic for every fd this process still owns. */
void vrift_finish_all(void) {
    int saved = errno;
    int high = __atomic_load_n(&slot_high, __ATOMIC_ACQUIRE);
    for (int fd = 0; fd <= high; fd++) {
        if (slots[fd].state == S_FREE) continue;
        fd_slot snap;
        if (take(fd, &snap)) {
            real_close(fd);
            finish(&snap);
        }
    }
    remove_staging_dir();
    errno = saved;
}

void vrift_writes_atfork_child(void) {
    vrift_spin_reset(&table_lock);
    __atomic_store_n(&staged_count, 0, __ATOMIC_RELAXED);
    vrift_dirty_atfork_child();
    /* the child's slots stay: they name fds it shares, but the parent owns them, so the
     * child's close only forgets them (take()) */
}

/* ------------------------------------------------------------------ the open family */

static int open_plain(int dirfd, const char *path, int flags, mode_t mode,
                      int (*realf)(int, const char *, int, ...)) {
    if (UNLIKELY(!wants_write(flags))) {
        if (vrift_staged_count() > 0) {
            char abs[VRIFT_PATH_MAX];
            if (vrift_resolve_name(dirfd, path, abs)) vrift_publish_path(abs);
        }
        if (!(flags & (O_CREAT | O_PATH)) && vrift_certain_absent(dirfd, path)) {
            errno = ENOENT;
            return -1;
        }
        if (realf) return realf(dirfd, path, flags, mode);
        return (int)syscall(SYS_openat, dirfd, path, flags, mode);
    }
    write_plan p;
    plan_write(dirfd, path, flags, &p);
    if (p.kind == P_STAGED) {
        if (vrift_staged_count() > 0) vrift_publish_path(p.abs);
        int f = p.existing ? flags & ~(O_CREAT | O_EXCL | O_TRUNC) : (flags | O_CREAT | O_EXCL) & ~O_TRUNC;
        int fd = realf ? realf(AT_FDCWD, p.staging, f, mode) : (int)syscall(SYS_openat, AT_FDCWD, p.staging, f, mode);
        if (fd >= 0) {
            register_fd(&p, fd);
            return fd;
        }
        abandon(&p);
        return fd;
    }
    if (p.kind == P_DIRECT && vrift_staged_count() > 0) vrift_publish_path(p.abs);
    int fd = realf ? realf(dirfd, path, flags, mode) : (int)syscall(SYS_openat, dirfd, path, flags, mode);
    if (p.kind == P_DIRECT) {
        if (fd >= 0)
            register_fd(&p, fd);
        else
            abandon(&p);
    }
    return fd;
}

static int open_common(int dirfd, const char *path, int flags, mode_t mode,
                       int (*realf)(int, const char *, int, ...)) {
    if (UNLIKELY(vrift_recording)) vrift_rec_open_before(dirfd, path, flags);
    int fd = open_plain(dirfd, path, flags, mode, realf);
    if (UNLIKELY(vrift_recording)) vrift_rec_open(dirfd, path, flags, fd);
    return fd;
}

static mode_t va_mode(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

EXPORT int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags, mode, REAL(openat));
}

EXPORT int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(AT_FDCWD, path, flags | O_LARGEFILE, mode, REAL(openat));
}

EXPORT int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags, mode, REAL(openat));
}

EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = va_mode(flags, ap);
    va_end(ap);
    return open_common(dirfd, path, flags | O_LARGEFILE, mode, REAL(openat));
}

EXPORT int creat(const char *path, mode_t mode) {
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode, REAL(openat));
}

EXPORT int creat64(const char *path, mode_t mode) {
    return open_common(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC | O_LARGEFILE, mode, REAL(openat));
}

/* fopen modes → open flags (glibc's reading: first char, then '+', 'x', 'e' anywhere). */
static int fopen_flags(const char *mode) {
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *c = mode + 1; *c && *c != ','; c++) {
        if (*c == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*c == 'x') flags |= O_EXCL;
        else if (*c == 'e') flags |= O_CLOEXEC;
    }
    return flags;
}

typedef FILE *(*fopen_fn)(const char *, const char *);

static FILE *fopen_plain(const char *path, const char *mode, FILE *(*realf)(const char *, const char *)) {
    int flags = mode ? fopen_flags(mode) : -1;
    if (flags < 0 || !wants_write(flags)) {
        if (vrift_staged_count() > 0 && path) {
            char abs[VRIFT_PATH_MAX];
            if (vrift_resolve_name(AT_FDCWD, path, abs)) vrift_publish_path(abs);
        }
        return realf(path, mode);
    }
    write_plan p;
    plan_write(AT_FDCWD, path, flags, &p);
    if (p.kind == P_PASS) return realf(path, mode);
    if (vrift_staged_count() > 0) vrift_publish_path(p.abs);
    FILE *f;
    if (p.kind == P_STAGED) {
        char m[16];
        size_t k = 0;
        for (const char *c = mode; *c && k < sizeof m - 1; c++)
            if (*c != 'x') m[k++] = *c; /* we created the staging name ourselves */
        m[k] = '\0';
        f = realf(p.staging, m);
    } else {
        f = realf(path, mode);
    }
    if (f)
        register_fd(&p, fileno(f));
    else
        abandon(&p);
    return f;
}

static FILE *fopen_common(const char *path, const char *mode, FILE *(*realf)(const char *, const char *)) {
    if (UNLIKELY(vrift_recording) && mode && fopen_flags(mode) >= 0) vrift_rec_open_before(AT_FDCWD, path, fopen_flags(mode));
    FILE *f = fopen_plain(path, mode, realf);
    if (UNLIKELY(vrift_recording) && mode && fopen_flags(mode) >= 0)
        vrift_rec_open(AT_FDCWD, path, fopen_flags(mode), f ? fileno(f) : -1);
    return f;
}

EXPORT FILE *fopen(const char *path, const char *mode) { return fopen_common(path, mode, REAL(fopen)); }
EXPORT FILE *fopen64(const char *path, const char *mode) { return fopen_common(path, mode, REAL(fopen64)); }

static FILE *freopen_common(const char *path, const char *mode, FILE *fp,
                            FILE *(*realf)(const char *, const char *, FILE *)) {
    int oldfd = fp ? fileno(fp) : -1;
    fd_slot snap;
    int mine = path ? take(oldfd, &snap) : 0;
    int flags = mode ? fopen_flags(mode) : -1;
    if (UNLIKELY(vrift_recording) && path && flags >= 0) vrift_rec_open_before(AT_FDCWD, path, flags);
    write_plan p;
    p.kind = P_PASS;
    if (path && flags >= 0 && wants_write(flags)) plan_write(AT_FDCWD, path, flags, &p);
    FILE *f;
    if (p.kind == P_STAGED) {
        char m[16];
        size_t k = 0;
        for (const char *c = mode; *c && k < sizeof m - 1; c++)
            if (*c != 'x') m[k++] = *c;
        m[k] = '\0';
        f = realf(p.staging, m, fp);
    } else {
        f = realf(path, mode, fp);
    }
    int saved = errno;
    if (mine) finish(&snap);
    if (UNLIKELY(vrift_recording) && path && flags >= 0) vrift_rec_open(AT_FDCWD, path, flags, f ? fileno(f) : -1);
    errno = saved;
    if (p.kind != P_PASS) {
        if (f)
            register_fd(&p, fileno(f));
        else
            abandon(&p);
    }
    return f;
}

EXPORT FILE *freopen(const char *path, const char *mode, FILE *fp) {
    return freopen_common(path, mode, fp, REAL(freopen));
}

EXPORT FILE *freopen64(const char *path, const char *mode, FILE *fp) {
    return freopen_common(path, mode, fp, REAL(freopen64));
}
