#ifndef STRBUF_H
#define STRBUF_H
#include <stddef.h>

/* A tiny growable string, shared (as identical copies) by both projects. */
typedef struct {
    char *data;
    size_t len, cap;
} strbuf;

void sb_init(strbuf *b);
void sb_append(strbuf *b, const char *s);
void sb_free(strbuf *b);

#endif
