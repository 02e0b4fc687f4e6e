import EventLoop
import Foundation
import Glibc
import Testing

/// `EventLoop.deferWrite`: output of an iteration goes out in one burst, after the
/// iteration's events and deferred tasks, or between events once a long iteration has
/// held it for `writeBatchWindowNs`; deferred tasks run once per iteration. A real loop
/// on its own thread, real pipes.
@Suite struct WriteBatchTests {
    /// Runs `body` on a fresh loop's thread, then stops the loop and returns what the
    /// loop-side code recorded.
    private func onLoop(_ body: @escaping @Sendable (EventLoop, Recorder) -> Void) throws -> [String] {
        let loop = try EventLoop()
        let recorder = Recorder()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread { loop.run(); done.signal() }
        thread.start()
        loop.execute { body(loop, recorder) }
        let finished = DispatchSemaphore(value: 0)
        // Stopped once the recorder says the scenario is over (or after 10 s).
        DispatchQueue.global().async {
            _ = recorder.over.wait(timeout: .now() + 10)
            loop.stop()
            finished.signal()
        }
        finished.wait()
        done.wait()
        return recorder.entries
    }

    /// Writes run after the iteration's deferred tasks, in the order queued; a write
    /// queued by a write runs in the same burst, before anything of the next iteration,
    /// and a task a write defers runs at the end of the next iteration.
    @Test func writes_RunAfterDeferredTasks_InOrder_IncludingThoseTheyQueue() throws {
        let entries = try onLoop { loop, r in
            r.add("task")
            loop.deferWrite {
                r.add("w1")
                loop.deferWrite { r.add("w3") }
                loop.deferUntilEndOfIteration { r.add("deferred by w1") }
            }
            loop.deferUntilEndOfIteration { r.add("deferred") }
            loop.deferWrite { r.add("w2") }
            loop.execute {
                r.add("next iteration")
                r.finish()
            }
        }
        #expect(entries == ["task", "deferred", "w1", "w2", "w3", "next iteration", "deferred by w1"])
    }

    /// A deferred task that defers itself again and again (libcurl asking to be called
    /// at once while a peer floods its socket) runs once per iteration: a ready
    /// descriptor's event and a due timer still run while it goes on, instead of waiting
    /// until it stops deferring itself.
    @Test func selfDeferringTask_LetsEventsAndTimersRun() throws {
        let entries = try onLoop { loop, r in
            var fds: [Int32] = [-1, -1]
            _ = pipe(&fds)
            var sawEvent = false, sawTimer = false
            let reader = PipeReader(fd: fds[0]) {
                sawEvent = true
                r.add("event")
            }
            try! loop.register(fd: fds[0], events: .read, handler: reader)
            var b: UInt8 = 1
            _ = write(fds[1], &b, 1)
            r.keep([reader])
            loop.schedule(at: loop.now + .milliseconds(5)) {
                sawTimer = true
                r.add("timer")
            }
            var runs = 0
            func again() {
                runs += 1
                if sawEvent && sawTimer {
                    r.add("released")
                } else if runs == 2_000_000 {
                    r.add("held the loop for \(runs) runs")
                } else {
                    return loop.deferUntilEndOfIteration(again)
                }
                loop.unregister(fd: fds[0])
                close(fds[0])
                close(fds[1])
                r.finish()
            }
            loop.deferUntilEndOfIteration(again)
        }
        #expect(entries == ["event", "timer", "released"])
    }

    /// How the events of `write_GoesOutAtTheIterationsEnd_OrWhenALongIterationHasGatheredEnough`
    /// behave.
    enum Scenario: CaseIterable, Sendable {
        /// Eight quick events; the first queues one write.
        case quickEvents
        /// Eight events of 1 ms each; the first queues one write.
        case slowEvents
        /// Twelve quick events, each queueing a write.
        case manyWrites
    }

    /// Descriptors ready at once are handled in one iteration. A write waits for the
    /// iteration's end while the iteration is short; in a long one it goes out at the
    /// check between events (every 4) once the window of 2 ms has passed, or once 8
    /// writes are queued — before the rest of the events.
    @Test(arguments: Scenario.allCases)
    func write_GoesOutAtTheIterationsEnd_OrWhenALongIterationHasGatheredEnough(_ scenario: Scenario) throws {
        let count = scenario == .manyWrites ? 12 : 8
        let entries = try onLoop { loop, r in
            var pipes: [(Int32, Int32)] = []
            var handled = 0
            for _ in 0..<count {
                var fds: [Int32] = [-1, -1]
                _ = pipe(&fds)
                pipes.append((fds[0], fds[1]))
            }
            let handlers = pipes.map { p in
                PipeReader(fd: p.0) {
                    handled += 1
                    r.add("event")
                    if handled == 1 || scenario == .manyWrites {
                        loop.deferWrite { r.add("write") }
                    }
                    if scenario == .slowEvents {
                        let end = Instant.now().nanoseconds + 1_000_000
                        while Instant.now().nanoseconds < end {}
                    }
                    if handled == count {
                        loop.deferUntilEndOfIteration {
                            for p in pipes { loop.unregister(fd: p.0); close(p.0); close(p.1) }
                            r.finish()
                        }
                    }
                }
            }
            for (h, p) in zip(handlers, pipes) {
                try! loop.register(fd: p.0, events: .read, handler: h)
                var b: UInt8 = 1
                _ = write(p.1, &b, 1)
            }
            r.keep(handlers)
        }
        func times(_ n: Int, _ s: String) -> [String] { Array(repeating: s, count: n) }
        switch scenario {
        case .quickEvents:
            #expect(entries == times(8, "event") + ["write"])
        case .slowEvents:
            // Checked before the fourth event: 3 ms have passed since the write was queued.
            #expect(entries == times(3, "event") + ["write"] + times(5, "event"))
        case .manyWrites:
            // Before the fourth and eighth events 3 and 7 writes are queued; before the
            // twelfth, 11.
            #expect(entries == times(11, "event") + times(11, "write") + ["event", "write"])
        }
    }
}

/// Reads its pipe dry and calls `onReady`.
private final class PipeReader: IOHandler {
    let fd: Int32
    let onReady: () -> Void
    init(fd: Int32, onReady: @escaping () -> Void) {
        self.fd = fd
        self.onReady = onReady
    }
    func ioReady(_ events: IOEvents) {
        var b: UInt8 = 0
        _ = read(fd, &b, 1)
        onReady()
    }
}

/// What the loop-side code saw, in order; written on the loop thread, read after it stopped.
private final class Recorder: @unchecked Sendable {
    private(set) var entries: [String] = []
    private var kept: [AnyObject] = []
    let over = DispatchSemaphore(value: 0)
    func add(_ s: String) { entries.append(s) }
    func keep(_ objects: [AnyObject]) { kept += objects }
    func finish() { over.signal() }
}
