#define _GNU_SOURCE 1
#include <sys/socket.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>
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

/* Signal catching for the command line: the handler only writes the signal number to a
   pipe, which a thread reads (outside signal context) to act on it. Installed with
   sigaction before the process announces itself, so a signal sent from then on is never
   dropped (SIG_IGN inherited from the parent, or set while waiting for a handler to be
   installed elsewhere, discards it at the moment it is sent). */
static int CLinux_signal_write_fd = -1;

static void CLinux_signal_handler(int signo) {
    int saved = errno;
    unsigned char byte = (unsigned char)signo;
    int fd = __atomic_load_n(&CLinux_signal_write_fd, __ATOMIC_SEQ_CST);
    if (fd >= 0) { ssize_t rc = write(fd, &byte, 1); (void)rc; }
    errno = saved;
}

int CLinux_catch_signal(int signo, int write_fd) {
    __atomic_store_n(&CLinux_signal_write_fd, write_fd, __ATOMIC_SEQ_CST);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = CLinux_signal_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, 0) != 0) return -1;
    /* A mask inherited from the parent (one that spawned from a thread with signals
       blocked) would keep the signal pending forever; threads started from here on
       inherit the unblocked mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, signo);
    int rc = pthread_sigmask(SIG_UNBLOCK, &set, 0);
    if (rc != 0) { errno = rc; return -1; }
    return 0;
}
