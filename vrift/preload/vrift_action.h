/*
 * vrift_action.h — the action cache's side in the preload library (docs/cache.md,
 * "Recording in the preload library" and "Replay at exec").
 *
 * action.c: identity (tool → root → members), ACTION_LOOKUP and replay at the root's
 *           constructor, the capture of the action's stdout/stderr, ACTION_END, and the
 *           interposers that only matter while recording (read of stdin, connect,
 *           getrandom, opendir).
 * record.c: the per-process log: a static buffer of records, written with write(2) when
 *           full, before exec and at exit.
 *
 * Without VRIFT_CACHE=1 both flags below stay 0 and every hook is one predictable branch.
 */
#ifndef VRIFT_ACTION_H
#define VRIFT_ACTION_H

#include <stddef.h>
#include <sys/types.h>

extern int vrift_recording;   /* this image records into an action log */
extern int vrift_action_tool; /* this process is the build tool: its children start actions */

/* record.c */
void vrift_rec_bytes(char kind, const void *payload, size_t len);
void vrift_rec_path(char kind, int dirfd, const char *path); /* made absolute, filtered */
void vrift_rec_abs(char kind, const char *abs);              /* already absolute, filtered */
void vrift_rec_fd(char kind, int fd);                        /* the path behind fd */
void vrift_rec_uncacheable(const char *what, const char *detail);
void vrift_rec_time(void);                                   /* a 'T' record: now */
void vrift_rec_flush(void);
int vrift_rec_start(const char *action_dir, size_t len);     /* 0 ok */
void vrift_rec_atfork_child(void);
void vrift_rec_done(int status);                             /* 'Z' + flush */
int vrift_rec_absolute(int dirfd, const char *path, char *out); /* 0 ok */

/* Hooks of the existing interposers (called only when vrift_recording). */
void vrift_rec_open(int dirfd, const char *path, int flags, int fd);
void vrift_rec_probe(int dirfd, const char *path, int result, char how); /* how: 'f' 'l' 'a' 'm' */
void vrift_rec_stat(int dirfd, const char *path, char how);                /* an 'S' record */

/* action.c */
void vrift_action_init(int argc, char **argv);
void vrift_action_exit(int status, int via_exit); /* the end of this image */
void vrift_action_fini(void);                     /* destructor: status from on_exit */
/* exec/spawn: X record, static binary and environment checks, flush; for the tool, the
 * environment of the child (caller provides room for n+3 pointers and 2 strings). */
void vrift_action_before_exec(const char *path, int search, char *const envp[], int replacing);
size_t vrift_action_env_slots(char *const envp[]);
char **vrift_action_child_env(char *const envp[], char **room, char *role, char *id);
int vrift_action_is_tool_child(int spawning);
void vrift_action_exec_failed(void);

#endif
