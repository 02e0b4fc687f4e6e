import EventLoop
import Foundation
import Glibc
import Testing

/// `EventLoop.eventsReadySince`: about when the events an iteration handles became
/// ready — the wake-up of a wait that blocked, or the previous wait's return when the
/// loop found them at once (they came while it was busy). A real loop on its own
/// thread, a real pipe.
@Suite struct EventsReadySinceTests {
    /// What the pipe's handler saw, written on the loop thread.
    private final class Seen: @unchecked Sendable {
        var readySince: Instant?
        var now: Instant?
        var taskNow: Instant?
        let handled = DispatchSemaphore(value: 0)
    }

    private final class Reader: IOHandler, @unchecked Sendable {
        let fd: Int32
        let loop: EventLoop
        let seen: Seen
        init(fd: Int32, loop: EventLoop, seen: Seen) {
            self.fd = fd
            self.loop = loop
            self.seen = seen
        }
        func ioReady(_ events: IOEvents) {
            var b: UInt8 = 0
            _ = read(fd, &b, 1)
            guard seen.readySince == nil else { return }
            seen.readySince = loop.eventsReadySince
            seen.now = loop.now
            seen.handled.signal()
        }
    }

    /// Starts a loop with a pipe's read end registered; returns the loop, the write
    /// end and what the handler will see. The caller stops the loop.
    private func start() throws -> (EventLoop, Int32, Seen, DispatchSemaphore) {
        let loop = try EventLoop()
        let seen = Seen()
        var fds: [Int32] = [-1, -1]
        #expect(pipe(&fds) == 0)
        let stopped = DispatchSemaphore(value: 0)
        Thread { loop.run(); stopped.signal() }.start()
        let registered = DispatchSemaphore(value: 0)
        let readEnd = fds[0]
        let reader = Reader(fd: readEnd, loop: loop, seen: seen)
        loop.execute {
            try? loop.register(fd: readEnd, events: [.read], handler: reader)
            registered.signal()
        }
        registered.wait()
        return (loop, fds[1], seen, stopped)
    }

    /// A byte that arrives while the loop runs a 100 ms task is handled in the next
    /// iteration, which finds it at once: its readiness dates from before that task
    /// (the previous wait's return), not from when the loop got to it.
    @Test func eventsThatCameWhileTheLoopWasBusy_DateFromThePreviousWait() throws {
        let (loop, writeEnd, seen, stopped) = try start()
        loop.execute {
            seen.taskNow = loop.now
            var b: UInt8 = 1
            _ = write(writeEnd, &b, 1)
            usleep(100_000)
        }
        #expect(seen.handled.wait(timeout: .now() + 10) == .success)
        loop.stop()
        stopped.wait()
        let readySince = try #require(seen.readySince), now = try #require(seen.now), taskNow = try #require(seen.taskNow)
        #expect(readySince <= taskNow)
        #expect(now.nanoseconds - readySince.nanoseconds >= 100_000_000)
        close(writeEnd)
    }

    /// A byte that wakes an idle loop dates from the wake-up: no earlier than it was
    /// written, and no later than the loop's time when handling it.
    @Test func eventsThatWakeAnIdleLoop_DateFromTheWakeUp() throws {
        let (loop, writeEnd, seen, stopped) = try start()
        usleep(300_000)  // the loop is blocked in its wait (long since, even on a busy machine)
        let written = Instant.now()
        var b: UInt8 = 1
        _ = write(writeEnd, &b, 1)
        #expect(seen.handled.wait(timeout: .now() + 10) == .success)
        loop.stop()
        stopped.wait()
        let readySince = try #require(seen.readySince), now = try #require(seen.now)
        #expect(readySince >= written)
        #expect(readySince <= now)
        close(writeEnd)
    }
}
