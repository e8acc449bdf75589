#include <stdio.h>

#include "strbuf.h"

int main(void) {
    strbuf b;
    sb_init(&b);
    sb_append(&b, "app-a: ");
    sb_append(&b, "built from shared code");
    puts(b.data);
    sb_free(&b);
    return 0;
}
