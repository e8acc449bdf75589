#include "strbuf.h"

#include <stdlib.h>
#include <string.h>

void sb_init(strbuf *b) {
    b->data = NULL;
    b->len = b->cap = 0;
}

void sb_append(strbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->data = realloc(b->data, b->cap);
    }
    memcpy(b->data + b->len, s, n + 1);
    b->len += n;
}

void sb_free(strbuf *b) {
    free(b->data);
    sb_init(b);
}
