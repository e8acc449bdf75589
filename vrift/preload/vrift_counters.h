/*
 * vrift_counters.h — layout of the VRIFT_COUNTERS file (see docs/preload.md).
 *
 * `vrift wrap` creates the file (VRIFT_COUNTERS_SIZE bytes, zero except magic and
 * version); every process of the build that ran the preload library adds its own counts
 * into it at exit (and before exec) with __atomic_fetch_add on a shared mapping, so the
 * wrapper can print one summary.  Little-endian, u64 fields, fixed offsets.
 */
#ifndef VRIFT_COUNTERS_H
#define VRIFT_COUNTERS_H

#include <stdint.h>

#define VRIFT_COUNTERS_MAGIC 0x56524354u /* "VRCT" */
#define VRIFT_COUNTERS_VERSION 1u
#define VRIFT_COUNTERS_SIZE 256u

enum vrift_counter {
    VRIFT_C_STAT_SERVED,   /* stat-family/access answered from the VDir (incl. ENOENT) */
    VRIFT_C_STAT_PASSED,   /* stat-family/access inside the project passed to the kernel */
    VRIFT_C_STAT_OUTSIDE,  /* stat-family/access outside the project (always passed) */
    VRIFT_C_COMMITTED,     /* staged files committed through the daemon */
    VRIFT_C_COMMIT_LOCAL,  /* staged files renamed into place by the library (no daemon) */
    VRIFT_C_PUBLISHED,     /* staged files published early (fd shared with another process) */
    VRIFT_C_DIRECT,        /* project files opened for writing in place (no staging) */
    VRIFT_C_INVALIDATED,   /* paths sent to the daemon with INVALIDATE */
    VRIFT_C_FALLBACKS,     /* processes that ran in fallback mode (VDir missing/corrupt) */
    VRIFT_C_DAEMON_ERRORS, /* daemon requests that failed (absent, timeout, error frame) */
    VRIFT_C_PROCESSES,     /* processes (images) that reported */
    VRIFT_C_VDIR_CORRUPT,  /* lookups that found an entry failing its checksum (passed to the kernel) */
    VRIFT_C_FAST_HITS,     /* actions replayed from the action table, without asking the daemon */
    VRIFT_C_COUNT
};

typedef struct vrift_counters_file {
    uint32_t magic;            /* 0 */
    uint32_t version;          /* 4 */
    uint64_t reserved;         /* 8 */
    uint64_t c[VRIFT_C_COUNT]; /* 16: enum vrift_counter order */
} vrift_counters_file;

_Static_assert(sizeof(vrift_counters_file) <= VRIFT_COUNTERS_SIZE, "counters fit");

#endif
