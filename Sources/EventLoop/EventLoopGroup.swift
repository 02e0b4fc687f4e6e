import Glibc

/// A fixed set of `EventLoop`s, each on its own thread (one per core by default).
///
/// Safe to use from any thread. `shutdown()` stops every loop and joins the threads.
public final class EventLoopGroup: @unchecked Sendable {
    /// The loops, in index order.
    public let loops: [EventLoop]
    private var threads: [pthread_t] = []

    /// Starts `count` loop threads.
    /// - Parameter count: number of loops; default: the number of online CPUs.
    /// - Throws: `SystemError` when a loop cannot be created.
    public init(count: Int = EventLoopGroup.defaultCount) throws {
        precondition(count > 0, "an EventLoopGroup needs at least one loop")
        loops = try (0..<count).map { try EventLoop(index: $0) }
        for loop in loops {
            let box = Unmanaged.passRetained(loop).toOpaque()
            var tid = pthread_t()
            let rc = pthread_create(&tid, nil, { arg in
                let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
                loop.run()
                return nil
            }, box)
            if rc != 0 { throw SystemError(errno: rc, call: "pthread_create") }
            threads.append(tid)
        }
    }

    /// The number of online CPUs (at least 1).
    public static var defaultCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    private let counter = RoundRobin()

    /// The next loop in round-robin order, for work that has no loop of its own yet.
    public func next() -> EventLoop { loops[counter.next(loops.count)] }

    /// Stops every loop and waits for its thread to end. Call once, not from a loop thread.
    public func shutdown() {
        for l in loops { l.stop() }
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
    }
}

import Synchronization

final class RoundRobin: Sendable {
    private let value = Atomic<Int>(0)
    func next(_ n: Int) -> Int { (value.add(1, ordering: .relaxed).newValue & Int.max) % n }
}
