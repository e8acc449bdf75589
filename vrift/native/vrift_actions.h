/*
 * vrift_actions.h — the one description of the action table (docs/cache.md, "The action
 * table"): the shared-memory file in which the daemon publishes, per lookup identity, one
 * fingerprint the preload library can check and replay without asking it.
 *
 * Included by the preload library (vrift/preload/replay.c, the reader) and by the helper
 * library the daemon loads with ctypes (vrift/native/vdir_native.c: the checksum and the
 * hash, so both sides compute them with the same code).  vrift/cache/fasttable.py writes the
 * file; tests/unit/test_layout.py checks its constants against this header.
 *
 * The file is a snapshot: written whole under a temporary name, then renamed onto
 * <shm>/vrift-<euid>/vrift_actions_<id16>, and never written again.  A reader opens the name,
 * checks the header, finds the record by the FNV-1a 64 of the identity bytes, checks the
 * record's checksum and compares the identity bytes whole.  Every offset is checked against
 * the mapping before use.
 */
#ifndef VRIFT_ACTIONS_H
#define VRIFT_ACTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define VRIFT_ACTIONS_MAGIC 0x56524143u /* "VRAC" */
#define VRIFT_ACTIONS_VERSION 1u
#define VRIFT_ACTIONS_NAME_PREFIX "vrift_actions_" /* + the same id as the VDir's name */
#define VRIFT_ACTIONS_HEADER_SIZE 4096u
#define VRIFT_ACTIONS_CAS_OFFSET 128u      /* the CAS root, NUL terminated */
#define VRIFT_ACTIONS_CAS_MAX 3968u        /* includes the NUL */
#define VRIFT_ACTIONS_SLOT_SIZE 16u
#define VRIFT_ACTIONS_RECORD_HEAD 80u      /* fixed part of a record */
#define VRIFT_ACTIONS_CHECK_HEAD 88u       /* fixed part of a check */
#define VRIFT_ACTIONS_OUTPUT_HEAD 32u      /* fixed part of an output */

/* check kinds */
#define VRIFT_CK_FILE 'F'   /* a file read: stat identity as verified, or a clean VDir entry with its digest */
#define VRIFT_CK_ABSENT 'A' /* lstat ('l') or stat ('f') answers ENOENT/ENOTDIR */
#define VRIFT_CK_STAT 'S'   /* a stat observation: the fields in `mask` */
#define VRIFT_CK_FOUND 'Q'  /* a name found through PATH: executable regular file, realpath == extra */

/* check mask bits */
#define VRIFT_CM_TYPE 1u
#define VRIFT_CM_PERM 2u   /* mode & 07777 */
#define VRIFT_CM_X 4u      /* mode & 0111 */
#define VRIFT_CM_SIZE 8u
#define VRIFT_CM_MTIME 16u
#define VRIFT_CM_TARGET 32u /* readlink == extra */

/* output types */
#define VRIFT_OUT_FILE 1u
#define VRIFT_OUT_DIR 2u

typedef struct vrift_actions_header {
    uint32_t magic;          /*  0 */
    uint32_t version;        /*  4 */
    uint64_t generation;     /*  8 snapshot number */
    uint64_t file_size;      /* 16 */
    uint32_t slot_count;     /* 24 power of two */
    uint32_t record_count;   /* 28 */
    uint64_t slots_offset;   /* 32 */
    uint64_t records_offset; /* 40 */
    uint64_t records_size;   /* 48 */
    uint32_t cas_len;        /* 56 strlen of the CAS root at VRIFT_ACTIONS_CAS_OFFSET */
    uint32_t header_sum;     /* 60 vrift_act_sum32 of bytes 0..59 and the CAS root */
} vrift_actions_header;

typedef struct vrift_actions_slot {
    uint64_t hash;    /* FNV-1a 64 of the identity bytes */
    uint32_t offset;  /* of the record, from records_offset */
    uint32_t length;  /* 0: empty slot */
} vrift_actions_slot;

typedef struct vrift_actions_record {
    uint32_t length;     /*  0 whole record, a multiple of 8 */
    uint32_t sum;        /*  4 vrift_act_sum32 of bytes 8..length */
    uint64_t hash;       /*  8 */
    uint32_t ident_len;  /* 16 */
    uint32_t n_checks;   /* 20 */
    uint32_t n_outputs;  /* 24 */
    uint32_t streams_len;/* 28 stdout/stderr as STDOUT/STDERR fields, in order */
    uint32_t status;     /* 32 */
    uint32_t flags;      /* 36 zero */
    uint64_t exe_dev;    /* 40 the executable's identity when its digest was taken */
    uint64_t exe_ino;    /* 48 */
    int64_t exe_size;    /* 56 */
    int64_t exe_mtime_ns;/* 64 */
    int64_t exe_ctime_ns;/* 72 */
    /* 80: identity bytes, padded to 8; checks; outputs; streams, padded to 8 */
} vrift_actions_record;

typedef struct vrift_actions_check {
    uint8_t kind;        /*  0 VRIFT_CK_* */
    uint8_t how;         /*  1 'f' stat, 'l' lstat */
    uint16_t mask;       /*  2 VRIFT_CM_* */
    uint32_t path_len;   /*  4 without its NUL */
    uint32_t extra_len;  /*  8 without its NUL */
    uint32_t mode;       /* 12 */
    uint64_t dev;        /* 16 */
    uint64_t ino;        /* 24 */
    int64_t size;        /* 32 */
    int64_t mtime_ns;    /* 40 */
    int64_t ctime_ns;    /* 48 */
    uint8_t digest[32];  /* 56 BLAKE3 (F) */
    /* 88: path, NUL, extra, NUL, padded to 8 */
} vrift_actions_check;

typedef struct vrift_actions_output {
    uint32_t type;       /*  0 VRIFT_OUT_* */
    uint32_t mode;       /*  4 permission bits */
    uint64_t size;       /*  8 */
    uint64_t sum;        /* 16 vrift_act_sum64 of the content */
    uint32_t path_len;   /* 24 absolute path, without its NUL */
    uint32_t blob_len;   /* 28 blob path relative to the CAS root, without its NUL */
    /* 32: path, NUL, blob, NUL, padded to 8 */
} vrift_actions_output;

_Static_assert(sizeof(vrift_actions_header) == 64, "header layout");
_Static_assert(sizeof(vrift_actions_slot) == VRIFT_ACTIONS_SLOT_SIZE, "slot layout");
_Static_assert(sizeof(vrift_actions_record) == VRIFT_ACTIONS_RECORD_HEAD, "record layout");
_Static_assert(sizeof(vrift_actions_check) == VRIFT_ACTIONS_CHECK_HEAD, "check layout");
_Static_assert(sizeof(vrift_actions_output) == VRIFT_ACTIONS_OUTPUT_HEAD, "output layout");

static inline uint64_t vrift_act_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

/*
 * The checksum of a record and of an output's content: two lanes of xor, rotate and multiply
 * by an odd constant over 8-byte words (each step invertible, so a change confined to one
 * word always changes the lane), the tail and the length folded in last.  It catches damage
 * (a bit flip in a blob, a stray write), not an adversary: the blob's BLAKE3 was verified by
 * the daemon when it computed this.  A few GB/s.
 */
static inline uint64_t vrift_act_sum64(const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t a = 0x243f6a8885a308d3ull, b = 0x13198a2e03707344ull;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint64_t w0, w1;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + i + 8, 8);
        a = vrift_act_rotl(a ^ w0, 29) * 0x9e3779b97f4a7c15ull;
        b = vrift_act_rotl(b ^ w1, 31) * 0xc2b2ae3d27d4eb4full;
    }
    uint64_t tail[2] = {0, 0};
    memcpy(tail, p + i, n - i);
    a = vrift_act_rotl(a ^ tail[0], 29) * 0x9e3779b97f4a7c15ull;
    b = vrift_act_rotl(b ^ tail[1], 31) * 0xc2b2ae3d27d4eb4full;
    uint64_t h = a ^ vrift_act_rotl(b, 17) ^ (uint64_t)n * 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 29;
    return h;
}

static inline uint32_t vrift_act_sum32(const void *data, size_t n) {
    uint64_t h = vrift_act_sum64(data, n);
    return (uint32_t)(h ^ (h >> 32));
}

static inline uint64_t vrift_act_hash(const void *data, size_t n) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a 64, as the VDir's path hash */
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static inline uint64_t vrift_act_pad8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

#endif
