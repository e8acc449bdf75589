#include <stdio.h>
#include "hello.h"

void print_line(const char *who, int value) { printf("%s, %s: %d\n", greeting(), who, value); }
