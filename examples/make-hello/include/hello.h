#ifndef HELLO_H
#define HELLO_H

#define GREETING "hello"

const char *greeting(void);
int add(int a, int b);
int scale(int x);
void print_line(const char *who, int value);

#endif
