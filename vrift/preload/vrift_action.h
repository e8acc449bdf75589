/*
 * vrift_action.h — the action cache's side in the preload library (docs/cache.md,
 * "Recording in the preload library" and "Replay at exec").
 *
 * action.c:  identity (tool → root → members), exec checks, the start of an action and its
 *            end (ACTION_END).
 * lookup.c:  ACTION_LOOKUP and replay at the root's constructor; the protocol body writer.
 * observe.c: the interposers that only matter while recording (read of stdin, connect,
 *            getrandom, opendir, readlink, realpath, mkstemp).
 * capture.c: the action's stdout/stderr, captured by its root.
 * record.c: the per-process log: a static buffer of records, written with write(2) when
 *           full, before exec and at exit.
 *
 * Without VRIFT_CACHE=1 both flags below stay 0 and every hook is one predictable branch.
 */
#ifndef VRIFT_ACTION_H
#define VRIFT_ACTION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* lookup.c: a request body being written (docs/protocol.md fields: u16 tag, u32 length,
 * value); len > cap after an overflow, and then the request is not sent. */
typedef struct vrift_body {
    uint8_t *p;
    size_t len, cap;
} vrift_body;
void vrift_body_field(vrift_body *b, uint16_t tag, const void *v, size_t n);
void vrift_body_u32(vrift_body *b, uint16_t tag, uint32_t v);
/* 1: HIT (replayed; does not return), 0: miss, 2: miss not worth recording, -1: no answer. */
int vrift_action_lookup(int argc, char **argv, const char *exe, const char *action_id);

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
void vrift_rec_open_before(int dirfd, const char *path, int flags); /* a write-open's absence */
void vrift_rec_open(int dirfd, const char *path, int flags, int fd);
void vrift_rec_probe(int dirfd, const char *path, int result, char how); /* how: 'f' 'l' 'a' 'm' */
void vrift_rec_stat(int dirfd, const char *path, char how);                /* an 'S' record */

/* action.c */
void vrift_action_init(int argc, char **argv);
void vrift_action_exit(int status, int via_exit); /* the end of this image */
void vrift_action_fini(void);                     /* destructor: status from on_exit */
/* exec/spawn: X record, static binary and environment checks, flush; for the tool, the
 * environment of the child (caller provides room for env_slots() pointers and 2 strings). */
void vrift_action_before_exec(const char *path, int search, char *const envp[], int replacing);
size_t vrift_action_env_slots(char *const envp[]);
char **vrift_action_child_env(char *const envp[], char **room, char *role, char *id);
int vrift_action_is_tool_child(int spawning);
void vrift_action_wall(void); /* an 'N' was written: children start actions of their own */
void vrift_action_exec_failed(void);

/* replay.c: a hit decided and replayed from the daemon's action table.  `ident` is the
 * identity part of the ACTION_LOOKUP about to be sent.  The outputs are in place and the
 * streams replayed when it returns a status (0..255): the caller exits with it.  -1: ask the
 * daemon (nothing half-done is left at a real path). */
int vrift_fast_replay(const uint8_t *ident, size_t len, const char *exe, const char *action_id);

/* clock.c: what this image may read of the real-time clock (at the start of recording) */
void vrift_clock_start(const char *exe);

/* elf.c: why an executable's file accesses cannot be seen (static, Go), or NULL */
const char *vrift_elf_invisible(const char *path);

/* stdin.c: fd 0 as an input */
void vrift_stdin_start(void);                  /* when this image starts recording */
void vrift_stdin_read(void);                   /* fd 0 was read */
void vrift_stdin_outer_pipes(void);            /* the root, at its start: pipes from outside */
int vrift_stdin_path(char *out, size_t cap);   /* the file behind fd 0 at its start, or -1 */
long long vrift_stdin_offset(void);            /* the offset of the file behind fd 0, or -1 */
void vrift_stdin_seek(unsigned long long offset);

/* cwd.c: reads of the working directory ('C') */
void vrift_cwd_start(const char *exe, int argc, char **argv); /* when this image starts recording */
void vrift_cwd_link(const char *path);                         /* readlink of /proc/<pid>/cwd */
void vrift_cwd_realpath(const char *path);                     /* realpath of a relative name */

/* tools.c */
int vrift_is_build_tool(const char *exe, const char *argv0); /* a nested make, ninja, ... */

/* capture.c (the root only) */
size_t vrift_capture_describe(char *out, size_t cap); /* fd 0/1/2 as the tool sees them: part of the key */
int vrift_capture_terminal(void);      /* one of fd 0/1/2 is a terminal */
/* A hit: the reply's stream fields (tags out_tag → fd 1, err_tag → fd 2) written in order. */
int vrift_capture_replay(const uint8_t *body, size_t len, uint16_t out_tag, uint16_t err_tag);
int vrift_capture_start(const char *action_dir, size_t len); /* 0 ok */
void vrift_capture_resume(void);        /* after an exec of the root */
void vrift_capture_cloexec(int on);     /* off just before an exec of the root, on again */
void vrift_capture_drain(void);         /* the root's end: records, output passed on */

#endif
