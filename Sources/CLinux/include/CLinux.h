// Linux system calls that Glibc's Swift overlay does not expose.
#ifndef SWITCHBOARD_CLINUX_H
#define SWITCHBOARD_CLINUX_H
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <errno.h>
#include <time.h>
#include <malloc.h>
#include <signal.h>

static inline int CLinux_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
static inline int CLinux_epoll_ctl(int epfd, int op, int fd, unsigned int events, unsigned long long data) {
    struct epoll_event ev; ev.events = events; ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}
/// epoll_wait with a timeout in nanoseconds (< 0: none, 0: poll): epoll_pwait2 where the
/// kernel has it (Linux 5.11+), else epoll_wait with the timeout rounded up to whole
/// milliseconds. Defined in CLinux.c.
int CLinux_epoll_wait_ns(int epfd, struct epoll_event *events, int max, long long timeout_ns);
static inline unsigned int CLinux_event_events(struct epoll_event *e) { return e->events; }
static inline unsigned long long CLinux_event_data(struct epoll_event *e) { return e->data.u64; }
static inline int CLinux_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }
/// accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); defined in CLinux.c (needs _GNU_SOURCE).
int CLinux_accept4(int fd);
static inline int CLinux_socket_stream(int domain) { return socket(domain, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0); }
static inline int CLinux_errno(void) { return errno; }
static inline unsigned long long CLinux_monotonic_ns(void) {
    struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}
static inline long long CLinux_realtime_ms(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000ll + ts.tv_nsec / 1000000;
}
/// Bytes of heap memory the process's malloc has handed out and not had back: glibc's
/// mallinfo2() `uordblks` (in use in every arena) + `hblkhd` (in use in mmap'ed chunks).
/// Whole-process figure; a snapshot that other threads may change at any moment.
static inline unsigned long long CLinux_malloc_bytes_in_use(void) {
    struct mallinfo2 m = mallinfo2();
    return (unsigned long long)m.uordblks + (unsigned long long)m.hblkhd;
}
/// Installs a handler for signal `signo` (SA_RESTART) that writes the signal number, as
/// one byte, to `write_fd` (a non-blocking pipe: a full pipe drops the byte rather than
/// block the handler). The handler is async-signal-safe (one write(2), errno kept). One
/// descriptor for the whole process: each call replaces it for every caught signal.
/// Also unblocks `signo` in the calling thread (threads it starts later inherit that),
/// so a signal mask inherited from the parent cannot hold the signal back.
/// Returns 0, or -1 with errno set (sigaction(2), pthread_sigmask(3)). Defined in CLinux.c.
int CLinux_catch_signal(int signo, int write_fd);
static const unsigned int CLinux_EPOLLIN = EPOLLIN;
static const unsigned int CLinux_EPOLLOUT = EPOLLOUT;
static const unsigned int CLinux_EPOLLERR = EPOLLERR;
static const unsigned int CLinux_EPOLLHUP = EPOLLHUP;
static const unsigned int CLinux_EPOLLRDHUP = EPOLLRDHUP;
#endif
