#include "hello.h"

int add(int a, int b) { return a + b; }
int scale(int x) { return add(x, x) * 3; }
