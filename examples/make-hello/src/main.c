#include "hello.h"

int main(void) {
    print_line("make", scale(7));
    return 0;
}
