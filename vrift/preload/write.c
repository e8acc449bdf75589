/*
 * write.c — the write path (SPEC §5.4, docs/preload.md "Writes").
 *
 * open for writing a project path → DIRTY on the path and its directory, a staging file
 * <staging>/<pid>.<n> (a copy of the old content when the mode keeps it) is opened in its
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
 * write.c holds the fd table, the staging files, and what happens at close (publish and
 * commit); open.c decides at each write-open whether to stage.
 *
 * Before this process starts another (fork, vfork, posix_spawn, exec, system, popen),
 * and before it renames, links, stats… a path it has staged, the staging file is
 * published, so no other process and no later call ever misses data it wrote.
 */
#include "vrift_preload.h"
#include "vrift_write.h"

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

fd_slot vrift_fds[VRIFT_FD_MAX];
/* Highest fd whose slot was ever used: a slot spans a page (its path), so scanning all of
 * VRIFT_FD_MAX at exit faulted in 4 MiB of zero pages — about 1 ms in every process. */
int vrift_fds_high = -1;
int vrift_fds_staged; /* S_STAGED slots of this process */
vrift_spinlock vrift_fds_lock;
uint64_t vrift_staging_seq;
static int staging_ready; /* the staging directory chain exists (made or seen by this image) */
static dev_t staging_dev;  /* and its device: a staged file is renamed only within one */



int vrift_staged_count(void) { return __atomic_load_n(&vrift_fds_staged, __ATOMIC_RELAXED); }

/* No stdio here: this runs inside interposed calls. */
size_t vrift_put_dec(char *out, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do tmp[n++] = (char)('0' + v % 10); while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

/* <staging>/<owner>.<seq>: flat, so a writing process makes no directory of its own (an
 * inode allocation and a removal per process: measurable on every compile); the owner's pid
 * leads the name, so the daemon can drop a dead writer's files.  Start-up checked that the
 * staging dir leaves room. */
void vrift_staging_path(char *out, pid_t owner, uint64_t seq) {
    size_t n = vrift_staging_len;
    memcpy(out, vrift_staging, n);
    out[n++] = '/';
    n += vrift_put_dec(out + n, (uint64_t)owner);
    out[n++] = '.';
    n += vrift_put_dec(out + n, seq);
    out[n] = '\0';
}

int vrift_open_raw(const char *path, int flags, mode_t mode) {
    if (REAL(open)) return vrift_real.open(path, flags, mode);
    return (int)syscall(SYS_openat, AT_FDCWD, path, flags, mode);
}

int vrift_close_raw(int fd) {
    if (REAL(close)) return vrift_real.close(fd);
    return (int)syscall(SYS_close, fd);
}

void vrift_parent_of(const char *abs, char *out) {
    size_t n = strlen(abs);
    while (n > 1 && abs[n - 1] != '/') n--;
    if (n > 1) n--;
    memcpy(out, abs, n);
    out[n] = '\0';
}

/* Tell the daemon to re-read a path and its directory, one-way (best effort: without a
 * daemon the DIRTY bits stay set and readers keep going to the kernel, which is correct). */
void vrift_invalidate_path(const char *abs) {
    char parent[VRIFT_PATH_MAX];
    vrift_parent_of(abs, parent);
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
    vrift_parent_of(abs, parent);
    int dfd = vrift_open_raw(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    for (int i = 0; dfd >= 0 && flock(dfd, LOCK_SH | LOCK_NB) != 0 && i < 1000; i++) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    return dfd;
}

void vrift_unlock_dir(int dfd) {
    if (dfd >= 0) vrift_close_raw(dfd); /* drops the flock */
}

/* Put a staged file on its real path: marks and rename under the directory's lock. */
int vrift_place_staging(const char *staging, const char *virt) {
    int saved, dfd = vrift_lock_dir_of(virt);
    vrift_mark_path(virt, 0);
    int r = REAL(rename)(staging, virt);
    saved = errno;
    vrift_unlock_dir(dfd);
    errno = saved;
    return r;
}

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

int vrift_ensure_staging_dir(dev_t *dev) {
    if (staging_ready) {
        *dev = staging_dev;
        return 0;
    }
    struct stat st;
    if (REAL(fstatat)(AT_FDCWD, vrift_staging, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
        staging_dev = *dev = st.st_dev; /* the usual case: an earlier process made it */
        staging_ready = 1;
        return 0;
    }
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
    if (ensure_dir(vrift_staging) != 0 || REAL(fstatat)(AT_FDCWD, vrift_staging, &st, 0) != 0) return -1;
    staging_dev = *dev = st.st_dev;
    staging_ready = 1;
    return 0;
}

/* The staging directory vanished (someone removed .vrift/staging mid-build): forget that it
 * existed and make it again. */
int vrift_staging_gone(dev_t *dev) {
    staging_ready = 0;
    return vrift_ensure_staging_dir(dev);
}

/* Copy `src` (an fd of the real file) into `dst`: reflink if the filesystem can, else an
 * in-kernel copy, else read/write. */
int vrift_copy_content(int src, int dst) {
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

/* ------------------------------------------------------------------ close, publish, commit */

/* Probe: 1 when no open file description holds the beacon any more, 0 when one still
 * does, -1 when the staging file is gone. */
static int last_reference(const char *staging) {
    int fd = vrift_open_raw(staging, O_RDONLY | O_CLOEXEC | O_NOFOLLOW, 0);
    if (fd < 0) return -1;
    int r = flock(fd, LOCK_EX | LOCK_NB) == 0 ? 1 : 0;
    vrift_close_raw(fd);
    return r;
}

static int publish(fd_slot *s) {
    char staging[VRIFT_PATH_MAX];
    vrift_staging_path(staging, s->owner, s->seq);
    if (vrift_place_staging(staging, s->virt) != 0) return -1;
    vrift_count(VRIFT_C_PUBLISHED);
    return 0;
}

/* The close logic for a slot this process owns, after its fd was closed.  Returns -1
 * when the data could not be put in place (close() then reports EIO). */
int vrift_finish_slot(fd_slot *s) {
    if (s->state != S_STAGED) {
        vrift_invalidate_path(s->virt);
        return 0;
    }
    char staging[VRIFT_PATH_MAX];
    vrift_staging_path(staging, s->owner, s->seq);
    int last = last_reference(staging);
    if (last < 0) return 0; /* rolled back by the daemon, or published elsewhere */
    if (!last) {
        int r = publish(s);
        vrift_invalidate_path(s->virt);
        return r;
    }
    /* The file goes in place now; the daemon indexes it later, nobody waits for that.  DIRTY
     * stays set until then: the entry in memory still describes the old file. */
    if (vrift_place_staging(staging, s->virt) == 0) {
        const char *one[1] = {s->virt};
        vrift_count(vrift_daemon_notify(VRIFT_N_WRITTEN, one, 1) == 0 ? VRIFT_C_COMMITTED : VRIFT_C_COMMIT_LOCAL);
        return 0;
    }
    if (errno == ENOENT) return 0; /* the staging file is gone: rolled back, nothing to put */
    REAL(unlink)(staging);
    return -1;
}

/* Take a tracked fd out of the table.  1: the caller must run vrift_finish_slot() on *out. */
int vrift_take_slot(int fd, fd_slot *out) {
    if (fd < 0 || fd >= VRIFT_FD_MAX || !__atomic_load_n(&vrift_fds[fd].state, __ATOMIC_RELAXED)) return 0;
    pid_t pid = vrift_raw_getpid();
    if (pid != vrift_pid) return 0; /* vfork child: the table is the parent's */
    vrift_spin_lock(&vrift_fds_lock);
    fd_slot *s = &vrift_fds[fd];
    int mine = s->state != S_FREE && s->owner == pid;
    if (mine) {
        out->state = s->state;
        out->owner = s->owner;
        out->seq = s->seq;
        strcpy(out->virt, s->virt);
    }
    if (mine && s->state == S_STAGED) __atomic_fetch_sub(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
    s->state = S_FREE;
    vrift_spin_unlock(&vrift_fds_lock);
    return mine;
}

EXPORT int close(int fd) {
    if (LIKELY(fd < 0 || fd >= VRIFT_FD_MAX || !__atomic_load_n(&vrift_fds[fd].state, __ATOMIC_RELAXED)))
        return vrift_close_raw(fd);
    fd_slot snap;
    int mine = vrift_take_slot(fd, &snap);
    int r = vrift_close_raw(fd);
    if (!mine) return r;
    int saved = errno;
    if (vrift_finish_slot(&snap) != 0 && r == 0) {
        r = -1;
        saved = EIO;
    }
    errno = saved;
    return r;
}

EXPORT int fclose(FILE *fp) {
    int fd = fp ? fileno(fp) : -1;
    fd_slot snap;
    int mine = vrift_take_slot(fd, &snap);
    int r = REAL(fclose)(fp);
    if (!mine) return r;
    int saved = errno;
    if (vrift_finish_slot(&snap) != 0 && r == 0) {
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
        vrift_spin_lock(&vrift_fds_lock);
        vrift_fds[newfd] = *snap;
        if (newfd > vrift_fds_high) __atomic_store_n(&vrift_fds_high, newfd, __ATOMIC_RELEASE);
        if (snap->state == S_STAGED) __atomic_fetch_add(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
        vrift_spin_unlock(&vrift_fds_lock);
    } else {
        vrift_finish_slot(snap);
    }
    errno = saved;
    return r;
}

EXPORT int dup2(int oldfd, int newfd) {
    fd_slot snap;
    int mine = vrift_take_slot(newfd, &snap);
    return after_dup(newfd, oldfd, REAL(dup2)(oldfd, newfd), mine, &snap);
}

EXPORT int dup3(int oldfd, int newfd, int flags) {
    fd_slot snap;
    int mine = vrift_take_slot(newfd, &snap);
    return after_dup(newfd, oldfd, REAL(dup3)(oldfd, newfd, flags), mine, &snap);
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags) {
    int r = REAL(close_range) ? vrift_real.close_range(first, last, flags)
                              : (int)syscall(SYS_close_range, first, last, flags);
    if (r != 0 || (flags & CLOSE_RANGE_CLOEXEC) || vrift_raw_getpid() != vrift_pid) return r;
    int saved = errno;
    for (unsigned int fd = first; fd <= last && fd < VRIFT_FD_MAX; fd++) {
        fd_slot snap;
        if (vrift_take_slot((int)fd, &snap)) vrift_finish_slot(&snap);
    }
    errno = saved;
    return r;
}

/* Publish one staged path of this process (its own later calls must see its data). */
void vrift_publish_path(const char *abs) {
    if (vrift_raw_getpid() != vrift_pid || !vrift_spin_trylock(&vrift_fds_lock)) return;
    int saved = errno;
    for (int fd = 0; fd <= vrift_fds_high && vrift_fds_staged > 0; fd++) {
        fd_slot *s = &vrift_fds[fd];
        if (s->state == S_STAGED && s->owner == vrift_pid && strcmp(s->virt, abs) == 0 && publish(s) == 0) {
            s->state = S_PUBLISHED;
            __atomic_fetch_sub(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
        }
    }
    vrift_spin_unlock(&vrift_fds_lock);
    errno = saved;
}

void vrift_before_spawn(void) {
    if (!vrift_writes_on || vrift_staged_count() == 0 || vrift_raw_getpid() != vrift_pid) return;
    int saved = errno;
    vrift_spin_lock(&vrift_fds_lock);
    for (int fd = 0; fd <= vrift_fds_high && vrift_fds_staged > 0; fd++) {
        fd_slot *s = &vrift_fds[fd];
        if (s->state == S_STAGED && s->owner == vrift_pid && publish(s) == 0) {
            s->state = S_PUBLISHED;
            __atomic_fetch_sub(&vrift_fds_staged, 1, __ATOMIC_RELAXED);
        }
    }
    vrift_spin_unlock(&vrift_fds_lock);
    errno = saved;
}

/* Before exec replaces this image: everything published, and the daemon told to re-read
 * what this process wrote (it checks the beacon before trusting the file). */
void vrift_before_exec(void) {
    if (!vrift_writes_on || vrift_raw_getpid() != vrift_pid) return;
    vrift_before_spawn();
    int saved = errno;
    for (int fd = 0; fd < VRIFT_FD_MAX; fd++) {
        fd_slot *s = &vrift_fds[fd];
        if (s->state != S_FREE && s->owner == vrift_pid) vrift_invalidate_path(s->virt);
    }
    errno = saved;
}

/* At exit: the close logic for every fd this process still owns. */
void vrift_finish_all(void) {
    int saved = errno;
    int high = __atomic_load_n(&vrift_fds_high, __ATOMIC_ACQUIRE);
    for (int fd = 0; fd <= high; fd++) {
        if (vrift_fds[fd].state == S_FREE) continue;
        fd_slot snap;
        if (vrift_take_slot(fd, &snap)) {
            vrift_close_raw(fd);
            vrift_finish_slot(&snap);
        }
    }
    errno = saved;
}

void vrift_writes_atfork_child(void) {
    vrift_spin_reset(&vrift_fds_lock);
    __atomic_store_n(&vrift_fds_staged, 0, __ATOMIC_RELAXED);
    vrift_dirty_atfork_child();
    /* the child's slots stay: they name fds it shares, but the parent owns them, so the
     * child's close only forgets them (vrift_take_slot()) */
}

