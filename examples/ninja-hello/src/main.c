#include "hello.h"

int main(void) {
    print_line("ninja", scale(7));
    return 0;
}
