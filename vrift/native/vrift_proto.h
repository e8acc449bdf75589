/*
 * vrift_proto.h — the one definition of the daemon wire protocol's numbers (docs/protocol.md).
 *
 * Included by the preload library; vrift/daemon/protocol.py mirrors every constant and
 * tests/unit/test_protocol.py compiles this header and checks the mirror both ways (each C name
 * has its Python twin with the same value, and the other way round).  The lists are X-macros
 * so that test, and any C code that needs a name table, see every entry.
 */
#ifndef VRIFT_PROTO_H
#define VRIFT_PROTO_H

#define VRP_MAGIC 0x31505256u /* the bytes "VRP1", little-endian */
#define VRP_VERSION 1u
#define VRP_HEADER_SIZE 16u   /* magic u32 | version u16 | type u16 | request_id u32 | body_length u32 */
#define VRP_FIELD_SIZE 6u     /* tag u16 | length u32, then the value */
#define VRP_MAX_BODY (1u << 20)
#define VRP_MAX_FIELDS 4096u
#define VRP_REPLY_BIT 0x8000u /* a reply's type is its request's type | VRP_REPLY_BIT */

/* Message types: X(name, value, one_way).  A one-way notification is never answered. */
#define VRP_MESSAGES(X)             \
    X(HELLO, 0x01, 0)               \
    X(SYNC, 0x02, 0)                \
    X(COMMIT, 0x03, 0)              \
    X(BEGIN_WRITE, 0x04, 0)         \
    X(INVALIDATE, 0x05, 0)          \
    X(STATS, 0x06, 0)               \
    X(INGEST, 0x07, 0)              \
    X(SHUTDOWN, 0x08, 0)            \
    X(PING, 0x09, 0)                \
    X(VDIR_BAD, 0x0A, 0)            \
    X(ENSURE_PROJECT, 0x20, 0)      \
    X(LIST, 0x21, 0)                \
    X(STOP_PROJECT, 0x22, 0)        \
    X(ACTION_LOOKUP, 0x30, 0)       \
    X(ACTION_END, 0x31, 0)          \
    X(WRITING, 0x40, 1)             \
    X(WRITTEN, 0x41, 1)             \
    X(CHANGED, 0x42, 1)             \
    X(ACTION_REPLAYED, 0x43, 1)     \
    X(ERROR, 0x7FFF, 0)

/* Field tags: X(name, value).  Each meaning has its own tag; u32/u64 say the value's width. */
#define VRP_TAGS(X)                                                                              \
    X(PATH, 1)          /* bytes, repeatable: absolute, or relative to the project root */        \
    X(STAGING, 2)       /* bytes: a staging file (absolute) */                                    \
    X(PID, 3)           /* u32 */                                                                 \
    X(GENERATION, 4)    /* u64: the VDir publish counter */                                       \
    X(TEXT, 5)          /* UTF-8: an error's reason, a client's message */                        \
    X(JSON, 6)          /* UTF-8 JSON: rich answers only the Python tools read */                 \
    X(ROOT, 7)          /* bytes: project root (absolute, canonical) */                           \
    X(VDIR, 8)          /* bytes: path of the VDir shared-memory file */                          \
    X(SOCKET, 9)        /* bytes: path of a Unix socket */                                        \
    X(DIGEST, 10)       /* 32 bytes: BLAKE3 */                                                    \
    X(STAGING_DIR, 11)  /* bytes: the project's staging directory */                              \
    X(ERROR_CODE, 12)   /* u32: VRP_E_* */                                                        \
    X(COUNT, 13)        /* u32: how many paths a request handled */                               \
    X(FLAGS, 14)        /* u32: VRP_F_* bits of the message */                                    \
    X(SIZE, 15)         /* u64: a file's size in bytes */                                         \
    X(PROJECT_ID, 16)   /* 32 ASCII hex chars */                                                  \
    X(ARG, 17)          /* bytes, repeatable: argv[0..n] of an action, in order */                \
    X(ENV, 18)          /* bytes, repeatable: NAME=value that is part of an action's key */       \
    X(ACTION, 19)       /* 16 ASCII hex chars: an action's id */                                  \
    X(STDOUT, 20)       /* bytes, repeatable: a chunk of an action's recorded stdout */           \
    X(STDERR, 21)       /* bytes, repeatable: a chunk of an action's recorded stderr */           \
    X(STREAMS, 22)      /* ASCII: what an action's fd 0/1/2 are; part of its key */               \
    X(CWD, 23)          /* bytes: an action's working directory (absolute) */                     \
    X(STATUS, 24)       /* u32: an action's exit status */                                        \
    X(SEQUENCE, 25)     /* u64: a sequence number of the action cache's explanations */           \
    X(STDIN_OFFSET, 26) /* u64: where an action leaves the offset of its stdin file */            \
    X(HELD, 27)         /* u32: paths kept DIRTY because a writer still holds them */             \
    X(KEY_HASH, 28)     /* u64: the key hash of an action-table record (ACTION_REPLAYED) */       \
    X(IDENTITY, 29)     /* ASCII: "dev ino size mtime_ns ctime_ns" of an inode, in decimal */      \
    X(STDIN, 30)        /* bytes: the regular file behind an action's fd 0 (absolute) */          \
    X(UMASK, 31)        /* u32: an action root's umask; part of its key */

/* Tags whose value is a little-endian integer of fixed width (anything else is bytes). */
#define VRP_U32_TAGS(X) X(PID) X(ERROR_CODE) X(COUNT) X(FLAGS) X(UMASK) X(STATUS) X(HELD)
#define VRP_U64_TAGS(X) X(GENERATION) X(SIZE) X(SEQUENCE) X(STDIN_OFFSET) X(KEY_HASH)

/* Error codes: X(name, value, closes): whether the daemon closes the connection after it. */
#define VRP_ERRORS(X)          \
    X(BAD_FRAME, 1, 1)         \
    X(BAD_VERSION, 2, 1)       \
    X(TOO_LARGE, 3, 1)         \
    X(BAD_REQUEST, 4, 0)       \
    X(PATH_REJECTED, 5, 0)     \
    X(NOT_FOUND, 6, 0)         \
    X(IO_ERROR, 7, 0)          \
    X(SHUTTING_DOWN, 8, 1)     \
    X(LIMIT, 9, 0)             \
    X(INTERNAL, 10, 0)

/* FLAGS bits, per message: X(group, name, value) names VRP_F_<group>_<name>. */
#define VRP_FLAGS(X)                                                                             \
    X(LOOKUP, HIT, 1u)        /* ACTION_LOOKUP reply: outputs in place, replay and exit */         \
    X(LOOKUP, NO_RECORD, 2u)  /* ACTION_LOOKUP reply: uncacheable by configuration */              \
    X(END, RECORDING, 1u)     /* ACTION_END reply: an entry is being recorded */                   \
    X(CHANGED, SHALLOW, 1u)   /* CHANGED, INVALIDATE: only the named entries, not under a directory */ \
    X(STATS, CACHE_ONLY, 1u)  /* STATS request: only the action cache's counters */                \
    X(STATS, EXPLAIN, 2u)     /* STATS request: with explanations newer than SEQUENCE */           \
    X(STATS, INGEST, 4u)      /* STATS request: only how far a running full ingest is */          \
    X(SYNC, UNCONFIRMED_OK, 1u) /* SYNC request: answer before a restarted daemon's reconcile ends */ \
    X(SHUTDOWN, ALL, 1u)      /* SHUTDOWN to the coordinator: every project daemon too */          \
    X(SHUTDOWN, IF_IDLE, 2u)  /* SHUTDOWN to a project daemon: only if no build is connected */   \
    X(SHUTDOWN_REPLY, STOPPING, 1u) /* SHUTDOWN reply of a project daemon: it stops (0: refused) */ \
    X(ERROR, MOVED, 1u)       /* ERROR of a COMMIT: the staging file is already on the path */

#define VRP_X_ENUM_M(name, value, one_way) VRP_M_##name = value,
#define VRP_X_ENUM_T(name, value) VRP_T_##name = value,
#define VRP_X_ENUM_E(name, value, closes) VRP_E_##name = value,
#define VRP_X_ENUM_F(group, name, value) VRP_F_##group##_##name = value,
enum vrp_message { VRP_MESSAGES(VRP_X_ENUM_M) };
enum vrp_tag { VRP_TAGS(VRP_X_ENUM_T) };
enum vrp_error { VRP_ERRORS(VRP_X_ENUM_E) };
enum vrp_flag { VRP_FLAGS(VRP_X_ENUM_F) };
#undef VRP_X_ENUM_M
#undef VRP_X_ENUM_T
#undef VRP_X_ENUM_E
#undef VRP_X_ENUM_F

#endif
