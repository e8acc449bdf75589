/*
 * tools.c — which programs are build tools (docs/cache.md, "Nested build tools").
 *
 * A build tool started inside a build (a sub-make, ninja under `cmake --build`, make run by a
 * build script) is not an action: it becomes a tool like the one `vrift wrap` started, so the
 * commands it runs are actions of their own.  It is recognised by name: the basename of the
 * executable (symlinks resolved) or of argv[0] matching a glob of VRIFT_CACHE_TOOLS (set by
 * `vrift wrap` from `cache.tools`; ':'-separated), or the built-in list when the variable is
 * not set.  make's own signs (MAKEFLAGS, MAKELEVEL, the jobserver fds) are inherited by every
 * recipe, so they cannot tell a sub-make from a compile.
 */
#include "vrift_preload.h"

#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

static const char default_tools[] = "make:gmake:bmake:pmake:remake:ninja:samu";

static const char *base(const char *p) {
    const char *s = p ? strrchr(p, '/') : NULL;
    return s ? s + 1 : p;
}

static int listed(const char *list, const char *name) {
    if (!name || !*name) return 0;
    for (const char *p = list; *p;) {
        const char *s = p;
        while (*p && *p != ':') p++;
        size_t n = (size_t)(p - s);
        if (*p) p++;
        if (n == 0 || n >= 256) continue;
        char glob[256];
        memcpy(glob, s, n);
        glob[n] = '\0';
        if (fnmatch(glob, name, 0) == 0) return 1;
    }
    return 0;
}

int vrift_is_build_tool(const char *exe, const char *argv0) {
    const char *list = getenv("VRIFT_CACHE_TOOLS");
    if (!list) list = default_tools;
    return listed(list, base(exe)) || listed(list, base(argv0));
}
