/*
 * vrift_write.h — what the two halves of the write path share (write.c: fd table, staging,
 * close/publish/commit; open.c: the write-opens).  Included by those two files only.
 */
#ifndef VRIFT_WRITE_H
#define VRIFT_WRITE_H

#include "vrift_preload.h"

#define VRIFT_FD_MAX 1024
#define VRIFT_COPY_MAX (64ll << 20) /* larger files kept by the mode are written in place */

enum { S_FREE = 0, S_STAGED, S_PUBLISHED, S_DIRECT };

typedef struct fd_slot {
    int state;
    pid_t owner;
    uint64_t seq; /* staging file <staging>/<owner>.<seq> */
    char virt[VRIFT_PATH_MAX];
} fd_slot;

/* The fd table: one slot per fd below VRIFT_FD_MAX, under vrift_fds_lock. */
extern fd_slot vrift_fds[VRIFT_FD_MAX];
extern int vrift_fds_high;         /* highest fd whose slot was ever used (write.c says why) */
extern int vrift_fds_staged;       /* S_STAGED slots of this process */
extern vrift_spinlock vrift_fds_lock;
extern uint64_t vrift_staging_seq; /* last <seq> of a staging file of this process */

int vrift_copy_content(int src, int dst);
int vrift_ensure_staging_dir(dev_t *dev);
int vrift_staging_gone(dev_t *dev);
void vrift_invalidate_path(const char *abs);
void vrift_parent_of(const char *abs, char *out);
int vrift_place_staging(const char *staging, const char *virt);
int vrift_open_raw(const char *path, int flags, mode_t mode);
int vrift_close_raw(int fd);
void vrift_staging_path(char *out, pid_t owner, uint64_t seq);
int vrift_finish_slot(fd_slot *s);
int vrift_take_slot(int fd, fd_slot *out);

#endif
