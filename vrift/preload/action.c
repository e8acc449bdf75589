/*
 * action.c — action identity, replay at exec, the end of an action (docs/cache.md,
 * "Recording in the preload library" and "Replay at exec").
 *
 * The build tool (VRIFT_ACTION_ROLE=tool) gives every child a fresh VRIFT_ACTION_ID and
 * ROLE=root.  The first image with that id to start is the action's root: it asks the
 * daemon (ACTION_LOOKUP) before main; on a HIT it replays stdout/stderr and exits with the
 * recorded status, on a miss it records.  Every descendant is a member and records too.
 * The root captures the tree's stdout and stderr (capture.c); at its end the capture is
 * drained, then 'Z', the log is flushed, and ACTION_END tells the daemon.
 *
 * Beside it: lookup.c builds the ACTION_LOOKUP request and acts on the answer (replay or
 * record); observe.c holds the interposers that matter only while recording.
 *
 * On any doubt the library records an 'N' (uncacheable) or does not replay: running the
 * command is always right.
 */
#include "vrift_preload.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

int vrift_proto_call(uint16_t type, const void *req, uint32_t req_len, uint8_t **body, uint32_t *len);

extern char **environ;

int vrift_action_tool;
static pid_t tool_pid;
static char action_id[17];
static char action_dir[VRIFT_PATH_MAX];
static size_t action_dir_len;
static int is_root;        /* this image is (or continues) the action's root */
static pid_t root_pid;
static int keep_logs;      /* VRIFT_CACHE_KEEP_LOGS=1: record without a daemon, keep the logs */
static int exit_known;
static char lib_path[VRIFT_PATH_MAX];
static char self_path[VRIFT_PATH_MAX]; /* this library, symlinks resolved: not an input */

static int valid_id(const char *s) {
    if (!s || strlen(s) != 16) return 0;
    for (int i = 0; i < 16; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static void new_id(char out[17]) {
    static const char hex[] = "0123456789abcdef";
    uint8_t r[8];
    if (syscall(SYS_getrandom, r, sizeof r, 0) != (long)sizeof r) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t v = (uint64_t)ts.tv_nsec ^ (uint64_t)ts.tv_sec << 30 ^ (uint64_t)vrift_raw_getpid() << 40;
        memcpy(r, &v, 8);
    }
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[16] = '\0';
}

/* ------------------------------------------------------------------ tool: children's identity */

static int wall; /* a tool because the action is uncacheable (vrift_action_wall), not a build tool */

int vrift_action_is_tool_child(int spawning) {
    return vrift_action_tool && (spawning || vrift_raw_getpid() != tool_pid);
}

size_t vrift_action_env_slots(char *const envp[]) {
    size_t n = 0;
    if (envp)
        while (envp[n]) n++;
    return n + 4;
}

/* The child's environment: envp without any VRIFT_ACTION_* variable, plus ROLE=root and a
 * fresh id.  `room` has env_slots() pointers, `role` 32 bytes, `id` 40 bytes. */
char **vrift_action_child_env(char *const envp[], char **room, char *role, char *id) {
    size_t k = 0;
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], "VRIFT_ACTION_", 13) != 0) room[k++] = envp[i];
    memcpy(role, "VRIFT_ACTION_ROLE=root", sizeof "VRIFT_ACTION_ROLE=root");
    memcpy(id, "VRIFT_ACTION_ID=", 16);
    new_id(id + 16);
    room[k++] = role;
    room[k++] = id;
    /* what an uncacheable parent passes on in its environment (`T=$(date) ./gen`) is not in
     * cache.env: the child's key then holds the whole environment */
    if (wall) room[k++] = (char *)"VRIFT_ACTION_WALL=1";
    room[k] = NULL;
    return room;
}

/* This process wrote an 'N': its action runs every time, and what it starts from now on would
 * only be more of an uncacheable action.  Like a build tool, it gives its children actions of
 * their own (docs/cache.md, "Uncacheable parents"): a script that reads the clock or a pipe from
 * outside still has its compiles replayed.  The action itself stays uncacheable (the 'N' is in
 * its log); what the children do is recorded in their own actions. */
void vrift_action_wall(void) {
    if (vrift_action_tool || !vrift_recording || !action_id[0]) return;
    vrift_action_tool = 1;
    wall = 1;
    tool_pid = vrift_pid;
}

/* ------------------------------------------------------------------ exec checks (members) */

static const char *env_get(char *const envp[], const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=') return envp[i] + n + 1;
    return NULL;
}

/* Would the new image run this library, in this action? */
static const char *env_problem(char *const envp[]) {
    const char *v = env_get(envp, "LD_PRELOAD");
    if (!v || !lib_path[0] || !strstr(v, lib_path)) return "exec without the preload library";
    v = env_get(envp, "VRIFT_PROJECT_ROOT");
    if (!v || strcmp(v, vrift_root) != 0) return "exec without the project root";
    v = env_get(envp, "VRIFT_CACHE");
    if (vrift_onoff(v) != 1) return "exec without VRIFT_CACHE";
    v = env_get(envp, "VRIFT_ACTION_ID");
    const char *started = env_get(envp, "VRIFT_ACTION_STARTED"), *role = env_get(envp, "VRIFT_ACTION_ROLE");
    if (!v || strcmp(v, action_id) != 0 || !started || strcmp(started, action_id) != 0 || !role ||
        strcmp(role, "root") != 0)
        return "exec outside the action's identity";
    if (vrift_switched_off(env_get(envp, "VRIFT_ENABLED"), env_get(envp, "VRIFT_FALLBACK_MODE")))
        return "exec with the library disabled";
    return NULL;
}

/* The file execvp/posix_spawnp would run; failed candidates are recorded as probes. */
static int search_path(const char *file, char *out) {
    const char *path = getenv("PATH");
    if (!path) path = "/bin:/usr/bin";
    size_t fl = strlen(file);
    for (const char *p = path;; p++) {
        const char *s = p;
        while (*p && *p != ':') p++;
        size_t dl = (size_t)(p - s);
        char cand[VRIFT_PATH_MAX];
        if (dl + 1 + fl < sizeof cand) {
            if (dl == 0) {
                cand[0] = '.';
                dl = 1;
            } else {
                memcpy(cand, s, dl);
            }
            cand[dl] = '/';
            memcpy(cand + dl + 1, file, fl + 1);
            if (syscall(SYS_faccessat, AT_FDCWD, cand, X_OK) == 0) {
                struct stat st;
                if (syscall(SYS_newfstatat, AT_FDCWD, cand, &st, 0) == 0 && S_ISREG(st.st_mode))
                    return vrift_rec_absolute(AT_FDCWD, cand, out);
            } else if (errno == ENOENT || errno == ENOTDIR) {
                vrift_rec_path('A', AT_FDCWD, cand);
            }
        }
        if (!*p) break;
    }
    return -1;
}

/* Before exec (replacing: this image goes) or posix_spawn of `path` by a member. */
void vrift_action_before_exec(const char *path, int search, char *const envp[], int replacing) {
    if (!vrift_recording) return;
    int saved = errno;
    char abs[VRIFT_PATH_MAX];
    int ok = -1;
    struct stat st;
    if (path && search && !strchr(path, '/'))
        ok = search_path(path, abs);
    else if (path)
        ok = vrift_rec_absolute(AT_FDCWD, path, abs);
    if (ok == 0 && syscall(SYS_newfstatat, AT_FDCWD, abs, &st, 0) != 0 && (errno == ENOENT || errno == ENOTDIR)) {
        /* the exec will fail (a shell trying every PATH entry with execve, as dash's `exec`
           does): the program's absence is what the action saw, not an input that vanished */
        vrift_rec_abs('A', abs);
    } else if (ok == 0) {
        vrift_rec_abs('X', abs);
        vrift_rec_abs('R', abs); /* the program's bytes are an input like any file */
        const char *invisible = vrift_elf_invisible(abs);
        if (invisible) vrift_rec_uncacheable(invisible, abs);
        if (syscall(SYS_newfstatat, AT_FDCWD, abs, &st, 0) == 0 &&
            (((st.st_mode & S_ISUID) && st.st_uid != geteuid()) || ((st.st_mode & S_ISGID) && st.st_gid != getegid())))
            vrift_rec_uncacheable("set-id binary (the preload library is dropped)", abs);
    } else if (path && !(search && !strchr(path, '/'))) {
        vrift_rec_uncacheable("exec of an unresolvable path", path);
    }
    /* a child of an uncacheable process starts an action of its own (vrift_action_wall) */
    const char *why = vrift_action_tool && !env_get(envp, "VRIFT_ACTION_STARTED") ? NULL : env_problem(envp);
    if (why) vrift_rec_uncacheable(why, path);
    if (replacing && is_root && vrift_raw_getpid() == root_pid) vrift_capture_cloexec(0);
    vrift_rec_flush();
    errno = saved;
}

void vrift_action_exec_failed(void) {
    if (is_root && vrift_raw_getpid() == root_pid) vrift_capture_cloexec(1);
}

/* ------------------------------------------------------------------ start */

static void record_mapped_files(void);
static void send_end(int status);

/* exit() runs this after the library destructors: our constructor registered it before
 * __libc_start_main registered the loader's fini, and handlers run in reverse order.  By now
 * the destructor has committed the files this process wrote. */
static void on_exit_status(int status, void *arg) {
    (void)arg;
    if (!vrift_recording || vrift_raw_getpid() != vrift_pid) return;
    exit_known = 1;
    fflush(NULL);
    vrift_action_exit(status, 1);
}

static int make_dirs(const char *path, size_t len) {
    char buf[VRIFT_PATH_MAX];
    memcpy(buf, path, len + 1);
    for (size_t i = vrift_root_len + 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char c = buf[i];
        buf[i] = '\0';
        if (syscall(SYS_mkdirat, AT_FDCWD, buf, 0700) == 0) {
            if (i == vrift_root_len + 7) vrift_mark_dirty("", 0, 0); /* <root>/.vrift is new */
        } else if (errno != EEXIST && c == '\0') {
            return -1;
        }
        buf[i] = c;
    }
    return 0;
}

static void remove_dir(void) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, action_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (fd < 0) return;
    char d[4096];
    for (;;) {
        long n = syscall(SYS_getdents64, fd, d, sizeof d);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
            struct dirent64 *e = (struct dirent64 *)(d + off);
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) syscall(SYS_unlinkat, fd, e->d_name, 0);
            off += e->d_reclen;
        }
    }
    syscall(SYS_close, fd);
    syscall(SYS_unlinkat, AT_FDCWD, action_dir, AT_REMOVEDIR);
}

static void begin_recording(int argc, char **argv, const char *exe) {
    if (vrift_rec_start(action_dir, action_dir_len) != 0) return;
    on_exit(on_exit_status, NULL);
    if (exe[0]) {
        vrift_rec_abs('X', exe);
        vrift_rec_abs('R', exe);
    }
    vrift_clock_start(exe);
    vrift_stdin_start();
    vrift_cwd_start(exe, argc, argv);
}

/* A build tool started inside the build (docs/cache.md, "Nested build tools") is a tool too:
 * its children start actions.  When an action ran it, that action saw only part of what
 * happens below and is never replayed: this image says so in the action's log (and when it is
 * the action's root, after an exec, it ends the action first). */
static void become_tool(const char *exe) {
    const char *started = getenv("VRIFT_ACTION_STARTED");
    if (started && strcmp(started, action_id) == 0 && vrift_rec_start(action_dir, action_dir_len) == 0) {
        const char *rp = getenv("VRIFT_ACTION_ROOT_PID");
        root_pid = rp ? (pid_t)strtol(rp, NULL, 10) : 0;
        is_root = root_pid == vrift_pid;
        vrift_rec_uncacheable("runs a nested build tool", exe);
        if (is_root) {
            vrift_capture_resume();
            vrift_capture_drain(); /* the tool writes to the action's original stdout/stderr */
            vrift_rec_done(0);
            send_end(0);
        } else {
            vrift_rec_flush();
            vrift_recording = 0;
        }
        is_root = 0;
    }
    /* copy the names first: unsetenv moves the entries of environ */
    char names[16][32];
    int n = 0;
    for (char **e = environ; e && *e && n < 16; e++) {
        size_t l = strcspn(*e, "=");
        if (strncmp(*e, "VRIFT_ACTION_", 13) == 0 && l < sizeof names[0]) {
            memcpy(names[n], *e, l);
            names[n++][l] = '\0';
        }
    }
    for (int i = 0; i < n; i++) unsetenv(names[i]);
    setenv("VRIFT_ACTION_ROLE", "tool", 1);
    vrift_action_tool = 1;
    tool_pid = vrift_pid;
}

void vrift_action_init(int argc, char **argv) {
    if (vrift_onoff(getenv("VRIFT_CACHE")) != 1) return;
    const char *role = getenv("VRIFT_ACTION_ROLE");
    if (!role) return;
    if (strcmp(role, "tool") == 0) {
        vrift_action_tool = 1;
        tool_pid = vrift_pid;
        return;
    }
    if (strcmp(role, "each") == 0) {
        /* the Makefile opt-in: make is not preloaded, so every process it starts begins an
         * action of its own, as the children of a `tool` do (docs/cache.md) */
        char fresh[17];
        new_id(fresh);
        setenv("VRIFT_ACTION_ID", fresh, 1);
        setenv("VRIFT_ACTION_ROLE", "root", 1);
        role = "root";
    }
    const char *id = getenv("VRIFT_ACTION_ID");
    if (strcmp(role, "root") != 0 || !valid_id(id)) return;
    memcpy(action_id, id, 17);
    keep_logs = getenv("VRIFT_CACHE_KEEP_LOGS") && strcmp(getenv("VRIFT_CACHE_KEEP_LOGS"), "1") == 0;
    Dl_info info;
    if (dladdr((void *)vrift_action_init, &info) && info.dli_fname) {
        char *r = REAL(realpath)(info.dli_fname, NULL); /* once, at start-up */
        const char *name = r ? r : info.dli_fname;
        if (strlen(name) < sizeof lib_path) strcpy(lib_path, name);
        if (r && strlen(r) < sizeof self_path) strcpy(self_path, r);
        free(r);
        /* LD_PRELOAD may name the library by another spelling: use its file name */
        const char *base = strrchr(lib_path, '/');
        if (base) memmove(lib_path, base + 1, strlen(base + 1) + 1);
    }
    int n = snprintf(action_dir, sizeof action_dir, "%s/.vrift/actions/%s", vrift_root, action_id);
    if (n <= 0 || (size_t)n >= sizeof action_dir - 64) return;
    action_dir_len = (size_t)n;
    char exe[VRIFT_PATH_MAX];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = '\0';
    if (vrift_is_build_tool(exe, argc > 0 && argv ? argv[0] : NULL)) {
        become_tool(exe);
        return;
    }
    const char *started = getenv("VRIFT_ACTION_STARTED");
    if (started && strcmp(started, action_id) == 0) {
        /* a member (or the root again, after an exec) */
        const char *rp = getenv("VRIFT_ACTION_ROOT_PID");
        root_pid = rp ? (pid_t)strtol(rp, NULL, 10) : 0;
        is_root = root_pid == vrift_pid;
        if (is_root) vrift_capture_resume();
        begin_recording(argc, argv, exe);
        return;
    }
    char pid[24];
    snprintf(pid, sizeof pid, "%d", (int)vrift_pid);
    setenv("VRIFT_ACTION_STARTED", action_id, 1);
    setenv("VRIFT_ACTION_ROOT_PID", pid, 1);
    vrift_stdin_outer_pipes();
    int r = vrift_action_lookup(argc, argv, exe, action_id);
    if (r == 2 || (r < 0 && !keep_logs)) {
        /* no answer: the action runs uncached, and nothing below it records */
        setenv("VRIFT_ACTION_ROLE", "off", 1);
        return;
    }
    root_pid = vrift_pid;
    is_root = 1;
    if (make_dirs(action_dir, action_dir_len) != 0) {
        setenv("VRIFT_ACTION_ROLE", "off", 1);
        return;
    }
    begin_recording(argc, argv, exe);
    /* a member's image was looked at by the exec that started it; the root's first was not */
    const char *invisible = vrift_elf_invisible(exe);
    if (invisible) vrift_rec_uncacheable(invisible, exe);
    if (vrift_capture_start(action_dir, action_dir_len) != 0) vrift_rec_uncacheable("stdout/stderr could not be captured", NULL);
}

/* ------------------------------------------------------------------ end */

/* Shared libraries the loader mapped (and dlopen-ed ones) are read without open(). */
static void record_mapped_files(void) {
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return;
    char b[8192], last[VRIFT_PATH_MAX] = "";
    size_t have = 0;
    for (;;) {
        long r = syscall(SYS_read, fd, b + have, sizeof b - have);
        if (r <= 0 && have == 0) break;
        if (r > 0) have += (size_t)r;
        size_t start = 0;
        for (size_t i = 0; i < have; i++) {
            if (b[i] != '\n') continue;
            b[i] = '\0';
            char *path = strchr(b + start, '/');
            /* "addr perms offset dev inode path": a shared mapping is IPC (the VDir, shm),
             * not a file read */
            char *perms = strchr(b + start, ' ');
            if (perms && perms[1] && perms[2] && perms[3] && perms[4] == 's') path = NULL;
            if (path && strcmp(path, vrift_vdir_path()) == 0) path = NULL;
            /* the library itself records and replays, it does not change outputs: another
             * install (venv, version) must not make every key miss */
            if (path && self_path[0] && strcmp(path, self_path) == 0) path = NULL;
            if (path && strcmp(path, last) != 0 && strlen(path) < sizeof last && !strstr(path, " (deleted)")) {
                strcpy(last, path);
                vrift_rec_abs('R', path);
            }
            start = i + 1;
        }
        if (start == 0 && have == sizeof b) have = 0; /* a line longer than the buffer */
        memmove(b, b + start, have - start);
        have -= start;
        if (r <= 0) break;
    }
    syscall(SYS_close, fd);
}

static void send_end(int status) {
    uint8_t req[96];
    vrift_body b = {req, 0, sizeof req};
    vrift_body_field(&b, VRP_T_ACTION, action_id, 16);
    vrift_body_u32(&b, VRP_T_STATUS, (uint32_t)status);
    vrift_body_u32(&b, VRP_T_PID, (uint32_t)vrift_raw_getpid());
    long long in_off = vrift_stdin_offset();
    if (in_off >= 0) {
        uint64_t v = (uint64_t)in_off;
        uint8_t x[8];
        for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
        vrift_body_field(&b, VRP_T_STDIN_OFFSET, x, 8);
    }
    uint8_t *rb;
    uint32_t rl;
    int r = vrift_proto_call(VRP_M_ACTION_END, req, (uint32_t)b.len, &rb, &rl);
    if (rb) munmap(rb, rl);
    if (r != 0 && !keep_logs) remove_dir(); /* nobody will read them */
}

void vrift_action_exit(int status, int via_exit) {
    (void)via_exit;
    if (!vrift_recording || vrift_raw_getpid() != vrift_pid) return;
    int saved = errno;
    /* stdio read stdin (its buffer exists) through libc's internal read */
    if (stdin && stdin->_IO_buf_base) vrift_stdin_read();
    record_mapped_files();
    int root_end = is_root && vrift_raw_getpid() == root_pid;
    if (root_end) vrift_capture_drain();
    vrift_rec_done(status);
    if (root_end) send_end(status);
    errno = saved;
}

/* Destructor: exit() calls on_exit_status() next, which ends the image.  Only what is
 * buffered goes out now, in case the process dies before that. */
void vrift_action_fini(void) {
    if (!vrift_recording || exit_known) return;
    vrift_rec_flush();
}

