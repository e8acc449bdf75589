/* proto.c — request framing of docs/protocol.md (pending: until then every request reports
 * the daemon as unusable, and the callers keep the filesystem correct on their own). */
#include "vrift_preload.h"

int vrift_proto_hello(int fd, long deadline) {
    (void)fd;
    (void)deadline;
    return -1;
}

int vrift_daemon_commit(const char *virt, const char *staging) {
    (void)virt;
    (void)staging;
    return -1;
}

int vrift_daemon_invalidate(const char *const *paths, int n) {
    (void)paths;
    (void)n;
    return -1;
}
