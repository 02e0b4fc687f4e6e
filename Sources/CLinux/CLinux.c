#define _GNU_SOURCE 1
#include <sys/socket.h>
#include "CLinux.h"

int CLinux_accept4(int fd) { return accept4(fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC); }
