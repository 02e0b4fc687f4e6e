#define _GNU_SOURCE 1
#include <sys/socket.h>
#include "CLinux.h"

int CLinux_accept4(int fd) { return accept4(fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC); }

/* epoll_pwait2 (Linux 5.11) takes a timespec, so timers are not rounded up to whole
   milliseconds; kernels without it answer ENOSYS once, and epoll_wait with the
   timeout rounded up to a millisecond is used from then on. */
static int CLinux_has_epoll_pwait2 = 1;

int CLinux_epoll_wait_ns(int epfd, struct epoll_event *events, int max, long long timeout_ns) {
    if (timeout_ns <= 0) return epoll_wait(epfd, events, max, timeout_ns < 0 ? -1 : 0);
    if (__atomic_load_n(&CLinux_has_epoll_pwait2, __ATOMIC_RELAXED)) {
        struct timespec ts;
        ts.tv_sec = (time_t)(timeout_ns / 1000000000ll);
        ts.tv_nsec = (long)(timeout_ns % 1000000000ll);
        int rc = epoll_pwait2(epfd, events, max, &ts, 0);
        if (rc >= 0 || errno != ENOSYS) return rc;
        __atomic_store_n(&CLinux_has_epoll_pwait2, 0, __ATOMIC_RELAXED);
    }
    long long ms = (timeout_ns + 999999ll) / 1000000ll;
    return epoll_wait(epfd, events, max, ms > 3600000ll ? 3600000 : (int)ms);
}
