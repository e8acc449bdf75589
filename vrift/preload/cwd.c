/*
 * cwd.c — reading the working directory (docs/cache.md, "The working directory").
 *
 * Keys hold the cwd relative to the project root, so another checkout of the same sources at
 * another path hits.  That is right only for actions whose outputs do not contain the absolute
 * path: one that reads its cwd (`getcwd`, `$PWD`, `realpath` of a relative name; gcc -g writes it
 * as DW_AT_comp_dir) writes a 'C' record, and the daemon makes the project root's absolute path
 * an input of that action.
 *
 * Measured exceptions (the value is only compared, never written):
 *   - the gcc driver, collect2 and ld call realpath() on their input and output names, to refuse
 *     to overwrite an input;
 *   - cc1 reads $PWD (libiberty getpwd) and realpath()s its input in every compile; the path
 *     reaches the object only with debug info, coverage/profiling or LTO, so these options make
 *     the read count;
 *   - a shell takes its cwd at start-up (from $PWD, or getcwd when $PWD is stale): what matters
 *     is whether its script uses it, so the `-c` text or the script file is searched for "pwd"
 *     and "PWD" (`pwd`, `$PWD`, `${PWD}`, `$OLDPWD`); a script from stdin counts as a read.
 */
#include "vrift_preload.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { PLAIN, SHELL, COMPILER, DRIVER };
enum { GETCWD, ENV_PWD, REALPATH };
static int kind;       /* what this image is, for the measured exceptions */
static int reported;

static int name_is(const char *b, const char *const *globs) {
    for (; *globs; globs++)
        if (fnmatch(*globs, b, 0) == 0) return 1;
    return 0;
}

static int mentions_cwd(const char *text, size_t n) {
    return memmem(text, n, "pwd", 3) != NULL || memmem(text, n, "PWD", 3) != NULL;
}

/* Does the shell's script use its cwd?  -1: no script in argv (stdin). */
static int script_uses_cwd(int argc, char **argv) {
    int i = 1, command = 0;
    for (; i < argc && argv[i] && argv[i][0] == '-' && argv[i][1]; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        if (argv[i][1] != '-' && strchr(argv[i] + 1, 'c')) command = 1;
        if (argv[i][1] == 'o' && !argv[i][2]) i++; /* -o option */
    }
    if (i >= argc || !argv[i]) return -1;
    if (command) return mentions_cwd(argv[i], strlen(argv[i]));
    int fd = (int)syscall(SYS_openat, AT_FDCWD, argv[i], O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) return 1;
    size_t cap = 256 * 1024;
    char *b = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int r = 1;
    if (b != MAP_FAILED) {
        long n = syscall(SYS_read, fd, b, cap);
        long more = n == (long)cap ? syscall(SYS_read, fd, b, 1) : 0;
        r = n < 0 || more != 0 || mentions_cwd(b, (size_t)n); /* longer than we look: a read */
        munmap(b, cap);
    }
    syscall(SYS_close, fd);
    return r;
}

/* Options with which cc1 writes the cwd into its output (measured: objects of two directories
 * differ with -g, --coverage (-fprofile-arcs), -flto; not with -O*, -I, -MMD, -fPIC,
 * -save-temps, nor with the -dumpdir the driver passes for `-o dir/x.o`). */
static int compiler_embeds_cwd(int argc, char **argv) {
    for (int i = 1; i < argc && argv[i]; i++) {
        const char *a = argv[i];
        if ((a[0] == '-' && a[1] == 'g' && strcmp(a, "-g0") != 0) || strncmp(a, "-flto", 5) == 0 ||
            strncmp(a, "-fprofile", 9) == 0 || strcmp(a, "-ftest-coverage") == 0 || strcmp(a, "--coverage") == 0 ||
            strncmp(a, "-fdebug", 7) == 0 || strncmp(a, "-fsanitize", 10) == 0 || strncmp(a, "-fdump", 6) == 0 ||
            strncmp(a, "-fcoverage", 10) == 0)
            return 1;
    }
    return 0;
}

static void record(void) {
    if (reported) return;
    reported = 1;
    char cwd[VRIFT_PATH_MAX];
    long n = syscall(SYS_getcwd, cwd, sizeof cwd);
    vrift_rec_bytes('C', cwd, n > 1 ? (size_t)n - 1 : 0);
}

void vrift_cwd_start(const char *exe, int argc, char **argv) {
    static const char *const shells[] = {"sh", "dash", "bash", "ash", "ksh", "mksh", "zsh", "busybox", NULL};
    static const char *const compilers[] = {"cc1", "cc1plus", "cc1obj", "cc1objplus", NULL};
    static const char *const drivers[] = {"cc", "c++", "gcc", "g++", "*-gcc", "*-g++", "gcc-[0-9]*", "g++-[0-9]*",
                                          "*-gcc-[0-9]*", "*-g++-[0-9]*", "collect2", "ld", "ld.*", "*-ld",
                                          "*-ld.*", NULL};
    reported = 0;
    const char *b = exe ? strrchr(exe, '/') : NULL;
    b = b ? b + 1 : exe ? exe : "";
    kind = PLAIN;
    if (name_is(b, shells)) {
        kind = SHELL;
        if (argv && script_uses_cwd(argc, argv) != 0) record();
    } else if (name_is(b, compilers)) {
        kind = argv && compiler_embeds_cwd(argc, argv) ? PLAIN : COMPILER;
    } else if (name_is(b, drivers)) {
        kind = DRIVER;
    }
}

static void cwd_read(int how) {
    if (reported || kind == SHELL || kind == COMPILER || (kind == DRIVER && how == REALPATH)) return;
    record();
}

/* readlink of /proc/self/cwd or /proc/<pid>/cwd (for the readlink interposers). */
void vrift_cwd_link(const char *path) {
    if (!vrift_recording || !path || strncmp(path, "/proc/", 6) != 0) return;
    const char *s = strrchr(path, '/');
    if (s && strcmp(s, "/cwd") == 0) cwd_read(GETCWD);
}

/* The library's own reads of the cwd (its cached cwd, absolute paths of records) are not the
 * program's. */
char *vrift_getcwd(char *b, size_t n) {
    if (REAL(getcwd)) return vrift_real.getcwd(b, n);
    return b && syscall(SYS_getcwd, b, n) > 0 ? b : NULL; /* asked while dlsym runs */
}

EXPORT char *getcwd(char *b, size_t n) {
    if (UNLIKELY(vrift_recording)) cwd_read(GETCWD);
    return vrift_getcwd(b, n);
}

EXPORT char *get_current_dir_name(void) {
    if (UNLIKELY(vrift_recording)) cwd_read(GETCWD);
    return REAL(get_current_dir_name) ? vrift_real.get_current_dir_name() : NULL;
}

EXPORT char *getwd(char *b) { /* b has PATH_MAX bytes */
    if (UNLIKELY(vrift_recording)) cwd_read(GETCWD);
    return vrift_getcwd(b, 4096);
}

extern char **environ;

/* getenv while the real one is not resolved yet (called from inside dlsym: an allocator's
 * initialisation reading its variable): the same answer, from environ. */
static char *scan_environ(const char *name) {
    size_t n = strlen(name);
    for (char **e = environ; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

EXPORT char *getenv(const char *name) {
    if (UNLIKELY(vrift_recording) && name[0] == 'P' && strcmp(name, "PWD") == 0) cwd_read(ENV_PWD);
    return REAL(getenv) ? vrift_real.getenv(name) : scan_environ(name);
}

EXPORT char *secure_getenv(const char *name) {
    if (UNLIKELY(vrift_recording) && name[0] == 'P' && strcmp(name, "PWD") == 0) cwd_read(ENV_PWD);
    if (REAL(secure_getenv)) return vrift_real.secure_getenv(name);
    return getuid() == geteuid() && getgid() == getegid() ? scan_environ(name) : NULL;
}

/* realpath/canonicalize_file_name (interposed in action.c) of a relative name: libc resolves it
 * with its internal getcwd, so the answer holds the cwd. */
void vrift_cwd_realpath(const char *path) {
    if (vrift_recording && path && path[0] != '/') cwd_read(REALPATH);
}
