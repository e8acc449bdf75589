/*
 * clock.c — reading the real-time clock makes an action uncacheable (docs/cache.md, "The
 * clock").  `date > stamp` must run in every build: a replay would give the recording's time.
 *
 * time, gettimeofday, clock_gettime (realtime clocks), ftime and timespec_get are interposed;
 * they check only while recording (one predictable branch otherwise).  Programs reach the vDSO
 * through these libc symbols, so dynamically linked callers are seen; a read inside libc
 * itself, or a raw syscall, is not (docs/cache.md, "Known limits").
 *
 * With SOURCE_DATE_EPOCH set for the action the reads are not checked: the build asked for
 * reproducible times and the variable is part of the key (cache.env).  A few reads, found by
 * measuring the usual tools, do not reach an output and are allowed by where they come from:
 *   - cc1, cc1plus, lto1, ... gettimeofday() from toplev::main (init_local_tick; the value is
 *     used only as the coverage stamp, written consistently into the object and its .gcno);
 *   - bash: gettimeofday() from main and seedrand/seedrand32 at start-up ($SECONDS' origin and
 *     $RANDOM's seed; $SECONDS, $EPOCHSECONDS and printf %(..)T read the clock again, from
 *     elsewhere, and are caught);
 *   - Python: the first time() from the interpreter (the time module's init_timezone; every
 *     clock read of a script comes later: time.time() and datetime use clock_gettime).
 */
#include "vrift_preload.h"

#include <dlfcn.h>
#include <fnmatch.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { ALLOW_NONE, ALLOW_GCC, ALLOW_BASH, ALLOW_PYTHON };
static int checking;      /* recording, without SOURCE_DATE_EPOCH */
static int allow;         /* which evidence-based exception applies to this image */
static int reported;
static int python_first = 1;
static char image[256]; /* this image's executable, for the reason's detail */

void vrift_clock_start(const char *exe) {
    checking = getenv("SOURCE_DATE_EPOCH") == NULL;
    reported = 0;
    python_first = 1;
    snprintf(image, sizeof image, "%s", exe ? exe : "");
    const char *b = exe ? strrchr(exe, '/') : NULL;
    b = b ? b + 1 : exe ? exe : "";
    if (fnmatch("cc1*", b, 0) == 0 || strcmp(b, "lto1") == 0 || strcmp(b, "f951") == 0)
        allow = ALLOW_GCC;
    else if (strcmp(b, "bash") == 0)
        allow = ALLOW_BASH;
    else if (fnmatch("python*", b, 0) == 0)
        allow = ALLOW_PYTHON;
    else
        allow = ALLOW_NONE;
}

/* The function `caller` is in (a dynamic symbol covering the address), or NULL. */
static const char *function_of(void *caller, const char **object) {
    Dl_info info;
    const ElfW(Sym) *sym = NULL;
    if (!dladdr1(caller, &info, (void **)&sym, RTLD_DL_SYMENT)) return NULL;
    *object = info.dli_fname;
    if (!sym || !info.dli_sname || !info.dli_saddr) return NULL;
    uintptr_t start = (uintptr_t)info.dli_saddr, at = (uintptr_t)caller;
    return at >= start && at < start + sym->st_size ? info.dli_sname : NULL;
}

static int allowed(const char *fn, void *caller) {
    const char *object = NULL, *f;
    switch (allow) {
    case ALLOW_GCC:
        f = function_of(caller, &object);
        return strcmp(fn, "gettimeofday") == 0 && f && strcmp(f, "_ZN6toplev4mainEiPPc") == 0;
    case ALLOW_BASH:
        f = function_of(caller, &object);
        return strcmp(fn, "gettimeofday") == 0 && f &&
               (strcmp(f, "main") == 0 || strcmp(f, "seedrand") == 0 || strcmp(f, "seedrand32") == 0);
    case ALLOW_PYTHON: {
        if (strcmp(fn, "time") != 0 || !python_first) return 0;
        python_first = 0;
        /* from the object that holds the time module (libpython or the executable) */
        void *init = dlsym(RTLD_DEFAULT, "PyInit_time");
        Dl_info a, b;
        return init && dladdr(init, &a) && dladdr(caller, &b) && a.dli_fbase == b.dli_fbase;
    }
    }
    return 0;
}

static void clock_read(const char *fn, void *caller) {
    if (!checking || reported || allowed(fn, caller)) return;
    reported = 1;
    char detail[300];
    snprintf(detail, sizeof detail, "%s() in %s", fn, image);
    vrift_rec_uncacheable("reads the real-time clock:", detail);
}

static int realtime(clockid_t c) {
    return c == CLOCK_REALTIME || c == CLOCK_REALTIME_COARSE || c == CLOCK_TAI || c == CLOCK_REALTIME_ALARM;
}

EXPORT time_t time(time_t *t) {
    if (UNLIKELY(vrift_recording)) clock_read("time", __builtin_return_address(0));
    if (REAL(time)) return vrift_real.time(t);
    time_t now = (time_t)syscall(SYS_time, NULL);
    if (t) *t = now;
    return now;
}

EXPORT int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    if (UNLIKELY(vrift_recording)) clock_read("gettimeofday", __builtin_return_address(0));
    if (REAL(gettimeofday)) return vrift_real.gettimeofday(tv, tz);
    return (int)syscall(SYS_gettimeofday, tv, tz);
}

EXPORT int clock_gettime(clockid_t c, struct timespec *ts) {
    if (UNLIKELY(vrift_recording) && realtime(c)) clock_read("clock_gettime", __builtin_return_address(0));
    if (REAL(clock_gettime)) return vrift_real.clock_gettime(c, ts);
    return (int)syscall(SYS_clock_gettime, c, ts);
}

EXPORT int timespec_get(struct timespec *ts, int base) {
    if (UNLIKELY(vrift_recording)) clock_read("timespec_get", __builtin_return_address(0));
    return REAL(timespec_get) ? vrift_real.timespec_get(ts, base) : 0;
}

EXPORT int ftime(struct timeb *tb) {
    if (UNLIKELY(vrift_recording)) clock_read("ftime", __builtin_return_address(0));
    return REAL(ftime) ? vrift_real.ftime(tb) : -1;
}
