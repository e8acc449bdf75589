/*
 * spawn.c — process creation and process end.
 *
 * Before another process can see this one's files (fork, vfork, posix_spawn, exec,
 * system, popen), every staged file it owns is published under its real name: the child
 * might read it, or inherit the fd and write more (docs/preload.md "Writes").  Before exec
 * replaces the image, and at _exit, the per-process counters are flushed and the close
 * logic runs for what is still open.
 */
#include "vrift_preload.h"

#include <alloca.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>


extern char **environ;

static void before_exec(void) {
    if (vrift_raw_getpid() != vrift_pid) return; /* vfork child: the memory is the parent's */
    vrift_before_exec();
    vrift_flush_counters();
}

/* Action cache (docs/cache.md): in the build tool, a child's environment gets a fresh
 * action id; a member records the exec.  Both only when VRIFT_CACHE=1 set them up.  The
 * new environment lives on the caller's stack (alloca in this frame: no allocation). */
#define ACTION_ENV(envp, out, spawning)                                                      \
    char *const *out = (envp);                                                               \
    char role_[32], id_[40];                                                                 \
    if (UNLIKELY(vrift_action_tool) && vrift_action_is_tool_child(spawning)) {              \
        char **room_ = alloca(vrift_action_env_slots(envp) * sizeof(char *));                \
        out = vrift_action_child_env((envp), room_, role_, id_);                             \
    }
#define ACTION_EXEC(path, search, envp)                                                      \
    if (UNLIKELY(vrift_recording)) vrift_action_before_exec((path), (search), (envp), 1)
#define ACTION_FAILED() \
    if (UNLIKELY(vrift_recording)) vrift_action_exec_failed()

EXPORT pid_t fork(void) {
    vrift_before_spawn();
    return REAL(fork)();
}

#if defined(__x86_64__)
/* vfork cannot be wrapped by a C function: the child would return through the wrapper's
 * frame and clobber it for the parent.  This trampoline runs the preparation as an
 * ordinary call, then jumps to the real vfork with the caller's own return address. */
__attribute__((used, visibility("hidden"))) void *vrift_vfork_prepare(void) {
    vrift_before_spawn();
    void *real = (void *)REAL(vfork);
    return real ? real : (void *)REAL(fork);
}

__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, @function\n"
        "vfork:\n"
        "    sub $8, %rsp\n"
        "    call vrift_vfork_prepare\n"
        "    add $8, %rsp\n"
        "    jmp *%rax\n"
        ".size vfork, .-vfork\n");
#endif

EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                       const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    vrift_before_spawn();
    ACTION_ENV(envp, env, 1);
    if (UNLIKELY(vrift_recording)) vrift_action_before_exec(path, 0, env, 0);
    return REAL(posix_spawn)(pid, path, fa, attr, argv, env);
}

EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                        const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    vrift_before_spawn();
    ACTION_ENV(envp, env, 1);
    if (UNLIKELY(vrift_recording)) vrift_action_before_exec(file, 1, env, 0);
    return REAL(posix_spawnp)(pid, file, fa, attr, argv, env);
}

EXPORT int system(const char *cmd) {
    vrift_before_spawn();
    return REAL(system)(cmd);
}

EXPORT FILE *popen(const char *cmd, const char *mode) {
    vrift_before_spawn();
    return REAL(popen)(cmd, mode);
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    before_exec();
    ACTION_ENV(envp, env, 0);
    ACTION_EXEC(path, 0, env);
    int r = REAL(execve)(path, argv, env);
    ACTION_FAILED();
    return r;
}

EXPORT int execv(const char *path, char *const argv[]) {
    before_exec();
    if (UNLIKELY(vrift_action_tool | vrift_recording)) return execve(path, argv, environ);
    return REAL(execv)(path, argv);
}

EXPORT int execvp(const char *file, char *const argv[]) {
    before_exec();
    if (UNLIKELY(vrift_action_tool | vrift_recording)) return execvpe(file, argv, environ);
    return REAL(execvp)(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    before_exec();
    ACTION_ENV(envp, env, 0);
    ACTION_EXEC(file, 1, env);
    int r = REAL(execvpe)(file, argv, env);
    ACTION_FAILED();
    return r;
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
    before_exec();
    ACTION_ENV(envp, env, 0);
    if (UNLIKELY(vrift_recording)) {
        char link[32];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        char target[VRIFT_PATH_MAX];
        ssize_t n = readlink(link, target, sizeof target - 1);
        target[n > 0 ? n : 0] = '\0';
        vrift_action_before_exec(n > 0 ? target : NULL, 0, env, 1);
    }
    int r = REAL(fexecve)(fd, argv, env);
    ACTION_FAILED();
    return r;
}

/* glibc's execl* call execve internally (not through the PLT): collect the arguments and
 * go through our own wrappers. */
#define COLLECT_ARGS(first, ap, argv, extra)                         \
    size_t n_ = 1;                                                   \
    va_start(ap, first);                                             \
    while (va_arg(ap, char *) != NULL) n_++;                         \
    va_end(ap);                                                      \
    char **argv = alloca((n_ + 1) * sizeof(char *));                 \
    va_start(ap, first);                                             \
    argv[0] = (char *)first;                                         \
    for (size_t i_ = 1; i_ <= n_; i_++) argv[i_] = va_arg(ap, char *); \
    extra;                                                           \
    va_end(ap)

EXPORT int execl(const char *path, const char *arg, ...) {
    va_list ap;
    COLLECT_ARGS(arg, ap, argv, (void)0);
    return execv(path, argv);
}

EXPORT int execlp(const char *file, const char *arg, ...) {
    va_list ap;
    COLLECT_ARGS(arg, ap, argv, (void)0);
    return execvp(file, argv);
}

EXPORT int execle(const char *path, const char *arg, ...) {
    va_list ap;
    char **envp;
    COLLECT_ARGS(arg, ap, argv, envp = va_arg(ap, char **));
    return execve(path, argv, envp);
}

static void at_quick_exit_of_image(int status) {
    if (vrift_raw_getpid() != vrift_pid) return;
    if (vrift_writes_on) vrift_finish_all();
    if (UNLIKELY(vrift_recording)) vrift_action_exit(status, 0);
    vrift_flush_counters();
}

EXPORT void _exit(int status) {
    at_quick_exit_of_image(status);
    if (REAL(_exit)) vrift_real._exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

EXPORT void _Exit(int status) {
    at_quick_exit_of_image(status);
    if (REAL(_Exit)) vrift_real._Exit(status);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}
