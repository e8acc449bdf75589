/*
 * stat_bench.c — ns per stat() call over a list of paths.
 *
 *   stat_bench PATHS_FILE ROUNDS
 *
 * Reads the paths (one per line), stats each of them ROUNDS times (all paths per round),
 * and prints one line: "calls=<n> median_ns=<m> min_ns=<x> checksum=<c>".  The driver
 * (bench_stat.py) runs it with and without the preload library in the same run; the
 * checksum over (dev, ino, size, mtime) proves both runs saw the same answers.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PATHS_FILE ROUNDS\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    size_t cap = 1024, n = 0;
    char **paths = malloc(cap * sizeof *paths);
    char line[4096];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (!line[0]) continue;
        if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
        paths[n++] = strdup(line);
    }
    fclose(f);
    int rounds = atoi(argv[2]);
    if (n == 0 || rounds <= 0) {
        fprintf(stderr, "no paths or rounds\n");
        return 2;
    }
    double *per_call = malloc((size_t)rounds * sizeof *per_call);
    uint64_t checksum = 0;
    struct stat st;
    for (int r = 0; r < rounds; r++) {
        uint64_t sum = 0;
        double t0 = now_ns();
        for (size_t i = 0; i < n; i++) {
            if (stat(paths[i], &st) != 0) {
                perror(paths[i]);
                return 1;
            }
            sum += (uint64_t)st.st_ino ^ (uint64_t)st.st_size ^ (uint64_t)st.st_mtim.tv_nsec ^ (uint64_t)st.st_dev;
        }
        per_call[r] = (now_ns() - t0) / (double)n;
        if (r == 0) checksum = sum;
        else if (sum != checksum) {
            fprintf(stderr, "answers changed between rounds\n");
            return 1;
        }
    }
    qsort(per_call, (size_t)rounds, sizeof *per_call, cmp_double);
    printf("calls=%zu median_ns=%.1f min_ns=%.1f checksum=%llu\n", n * (size_t)rounds, per_call[rounds / 2],
           per_call[0], (unsigned long long)checksum);
    return 0;
}
