import CLinux
import Glibc
import Locking
import Synchronization

/// Readiness events for a file descriptor, as epoll reports them.
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Readable (`EPOLLIN`).
    public static let read = IOEvents(rawValue: CLinux_EPOLLIN)
    /// Writable (`EPOLLOUT`).
    public static let write = IOEvents(rawValue: CLinux_EPOLLOUT)
    /// Error (`EPOLLERR`); always reported, never needs registering.
    public static let error = IOEvents(rawValue: CLinux_EPOLLERR)
    /// Hang-up (`EPOLLHUP`); always reported.
    public static let hangup = IOEvents(rawValue: CLinux_EPOLLHUP)
    /// Peer closed its writing half (`EPOLLRDHUP`).
    public static let readHangup = IOEvents(rawValue: CLinux_EPOLLRDHUP)
}

/// Something that owns a file descriptor registered on an `EventLoop`.
///
/// All methods are called from within the loop's thread.
public protocol IOHandler: AnyObject {
    /// The descriptor became ready; `events` says how (read, write, error, hang-up).
    func ioReady(_ events: IOEvents)
}

/// Something with output to write in the loop's write burst (`EventLoop.deferWrite`).
///
/// Called from within the loop's thread.
public protocol DeferredWriter: AnyObject {
    /// Writes the output prepared since the writer was queued.
    func writeDeferred()
}

/// A closure queued with `EventLoop.deferWrite(_:)`.
private final class ClosureWriter: DeferredWriter {
    let write: () -> Void
    init(_ write: @escaping () -> Void) { self.write = write }
    func writeDeferred() { write() }
}

/// One event-loop thread: an epoll selector, an eventfd for wake-ups from other
/// threads, and a heap of timers keyed by absolute monotonic deadline.
///
/// Everything registered on a loop (sockets, timers, curl transfers, flow runs)
/// lives on that loop's thread, so the hot path takes no lock. Methods marked
/// "loop thread only" must be called from `run()`'s thread, i.e. from a handler,
/// a timer or a task given to `execute(_:)`. `execute(_:)` and `stop()` are safe
/// from any thread.
///
/// A loop runs once. When `run()` returns it lets go of everything that can no
/// longer run: registered handlers, scheduled timers (and their callbacks, also
/// when their owners still hold the `LoopTimer`), deferred tasks and tasks
/// given to `execute(_:)` (also those given later, which are dropped at once).
/// Their closures often hold objects that hold the loop (a connection waiting for
/// a timer to answer it), so keeping them would keep those objects, and the loop,
/// alive for the rest of the process.
public final class EventLoop: @unchecked Sendable {
    /// Position of this loop within its group (0-based); stable for the loop's life.
    public let index: Int

    private let epfd: Int32
    private let wakeFD: Int32
    private var handlers: [IOHandler?] = []
    private var generations: [UInt32] = []
    private var timers = TimerHeap()
    private var timerSequence: UInt64 = 0
    /// Tasks from other threads. A pthread mutex (`Locked`), not `Mutex`: a thread that
    /// calls `execute` while the loop stops is ordered by this lock alone, and the thread
    /// sanitizer sees pthread mutexes.
    private let pending = Locked<PendingTasks>(PendingTasks())
    private let wakePending = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    /// The running thread (`pthread_t`, an unsigned integer on Linux); 0 when not running.
    /// Atomic: `inEventLoop` reads it from any thread.
    private let threadID = Atomic<UInt>(0)
    private var cachedNow = Instant.now()
    /// See `eventsReadySince`.
    private var readySince = Instant.now()
    /// When the last `epoll_wait` returned.
    private var lastWaitReturn = Instant.now()
    private var deferred: [() -> Void] = []
    private var spareDeferred: [() -> Void] = []
    /// `run()` has returned, or is letting go of what can no longer run (`releaseAfterStop`).
    private var stopped = false
    /// Output queued by `deferWrite`, written in one burst (see there).
    private var writes: [any DeferredWriter] = []
    private var spareWrites: [any DeferredWriter] = []
    /// When the oldest queued write is due (monotonic nanoseconds; see `writeBatchWindowNs`).
    private var writesDueNs: UInt64 = 0

    /// How long a queued write may wait for the end of a long iteration, in
    /// nanoseconds (2 ms): past this, it goes out at the next check between events
    /// (every 4 events).
    public static let writeBatchWindowNs: UInt64 = 2_000_000
    /// How many writes a long iteration gathers before the next check between events
    /// sends them (8): a burst that size already wakes a peer once per 8 sends, and
    /// the first response of a busy iteration waits for a few events, not all of them.
    public static let writeBatchLimit = 8

    /// Creates a loop (the epoll and eventfd descriptors); call `run()` or
    /// `EventLoopGroup` to drive it.
    /// - Throws: `SystemError` when `epoll_create1` or `eventfd` fails.
    public init(index: Int = 0) throws {
        self.index = index
        let ep = CLinux_epoll_create()
        if ep < 0 { throw SystemError.last("epoll_create1") }
        let ev = CLinux_eventfd()
        if ev < 0 { close(ep); throw SystemError.last("eventfd") }
        epfd = ep
        wakeFD = ev
        if CLinux_epoll_ctl(epfd, EPOLL_CTL_ADD, wakeFD, CLinux_EPOLLIN, UInt64(UInt32.max)) != 0 {
            throw SystemError.last("epoll_ctl(eventfd)")
        }
    }

    deinit {
        close(epfd)
        close(wakeFD)
    }

    /// Whether the calling thread is this loop's thread.
    public var inEventLoop: Bool {
        let t = threadID.load(ordering: .acquiring)
        return t != 0 && pthread_equal(t, pthread_self()) != 0
    }

    /// The monotonic time cached at the start of the current loop iteration
    /// (cheap; at most one iteration stale). Loop thread only.
    public var now: Instant { cachedNow }

    /// About when the events this iteration handles became ready: when its wait
    /// blocked, the moment it woke (they woke it); when the loop found them at once,
    /// the moment its previous wait returned (they came while the last iteration ran —
    /// under load, milliseconds before the loop gets to them). At most `now`. Loop
    /// thread only. A request's wait budget counts from it (`HTTPRequest.receivedAt`),
    /// not from when a busy loop got to the request.
    public var eventsReadySince: Instant { readySince }

    // MARK: - Cross-thread tasks

    /// Runs `task` on the loop thread at the next iteration. Safe from any thread.
    /// A task queued before the loop stops runs as it stops; one given after it has
    /// stopped (`run()` returned) is dropped, never run.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        let accepted = pending.withLock { q -> Bool in
            guard !q.closed else { return false }
            q.tasks.append(task)
            return true
        }
        guard accepted else { return }
        if !wakePending.exchange(true, ordering: .acquiringAndReleasing) {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, 8)
        }
    }

    /// Runs `task` on the loop thread after the current batch of events, before
    /// the loop waits again. Loop thread only. Used to batch work per iteration.
    /// A task deferred by a deferred task (or by a write) runs at the end of the next
    /// iteration, which does not block: a task that keeps deferring itself — libcurl
    /// asking to be called again at once while a peer floods its socket — runs once per
    /// iteration, with the loop's events, due timers and other threads' tasks between.
    public func deferUntilEndOfIteration(_ task: @escaping () -> Void) {
        deferred.append(task)
    }

    /// Runs `write` — a task that writes output already prepared, e.g. an HTTP
    /// response encoded into a connection's buffer — together with every other write
    /// queued in this iteration, after its events and deferred tasks — or, in a long
    /// iteration under load, at the next check between events (every 4 events) once
    /// `writeBatchLimit` writes are queued or the oldest has waited
    /// `writeBatchWindowNs`. Loop thread only.
    ///
    /// Why: a send to a peer that sleeps on another CPU wakes it, and on a virtual
    /// machine the inter-processor interrupt of that wake-up costs more than the send
    /// itself. Writes made one by one between events each find the peer asleep again
    /// (it handled the last one while this loop worked on the next event); written in
    /// one burst, all but the first find it awake. Measured on the proxy benchmark:
    /// 0.4–0.6 instead of 1.1–1.6 function-call interrupts (wake-ups of an idle CPU)
    /// per request on the load generator's CPU, and about a fifth less system time.
    public func deferWrite(_ write: @escaping () -> Void) {
        deferWrite(ClosureWriter(write))
    }

    /// `deferWrite(_:)` for an object that writes: `writer.writeDeferred()` runs in the
    /// burst. Queues no closure (a closure capturing the writer is an allocation per
    /// response). Loop thread only.
    public func deferWrite(_ writer: any DeferredWriter) {
        if writes.isEmpty { writesDueNs = cachedNow.nanoseconds &+ EventLoop.writeBatchWindowNs }
        writes.append(writer)
    }

    /// Whether the loop has finished its last iteration: what runs now (tasks given to
    /// `execute` before the stop, their writes) runs once, and nothing it starts — a
    /// timer, a descriptor's events, a deferred task — will. Loop thread only (or after
    /// the loop has stopped).
    public var hasStopped: Bool { stopped }

    /// Asks `run()` to return after the current iteration. Safe from any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        execute {}
    }

    // MARK: - Descriptors

    /// Registers `fd` for `events` with `handler`. Loop thread only.
    /// - Throws: `SystemError` from `epoll_ctl`.
    public func register(fd: Int32, events: IOEvents, handler: IOHandler) throws {
        let i = Int(fd)
        if i >= handlers.count {
            let n = max(i + 1, handlers.count * 2, 64)
            handlers.append(contentsOf: repeatElement(nil, count: n - handlers.count))
            generations.append(contentsOf: repeatElement(0, count: n - generations.count))
        }
        generations[i] &+= 1
        handlers[i] = handler
        let data = UInt64(UInt32(bitPattern: fd)) | (UInt64(generations[i]) << 32)
        if CLinux_epoll_ctl(epfd, EPOLL_CTL_ADD, fd, events.rawValue, data) != 0 {
            handlers[i] = nil
            throw SystemError.last("epoll_ctl(ADD)")
        }
    }

    /// Changes the events `fd` is watched for. Loop thread only.
    /// - Throws: `SystemError` from `epoll_ctl`.
    public func modify(fd: Int32, events: IOEvents) throws {
        let i = Int(fd)
        let data = UInt64(UInt32(bitPattern: fd)) | (UInt64(generations[i]) << 32)
        if CLinux_epoll_ctl(epfd, EPOLL_CTL_MOD, fd, events.rawValue, data) != 0 {
            throw SystemError.last("epoll_ctl(MOD)")
        }
    }

    /// Stops watching `fd` (call before closing it). Loop thread only; never throws:
    /// a descriptor that is already gone is simply forgotten.
    public func unregister(fd: Int32) {
        let i = Int(fd)
        guard i < handlers.count else { return }
        handlers[i] = nil
        generations[i] &+= 1
        _ = CLinux_epoll_ctl(epfd, EPOLL_CTL_DEL, fd, 0, 0)
    }

    // MARK: - Timers

    /// Calls `callback` on the loop thread at `deadline` (or at the next iteration
    /// when it has passed). Loop thread only.
    /// - Returns: the timer, to cancel it.
    @discardableResult
    public func schedule(at deadline: Instant, _ callback: @escaping () -> Void) -> LoopTimer {
        timerSequence &+= 1
        let t = LoopTimer(deadline: deadline, sequence: timerSequence, callback: callback)
        timers.insert(t)
        return t
    }

    /// Cancels a timer that has not fired yet (it lets go of its callback); a no-op
    /// otherwise. Loop thread only.
    public func cancel(_ timer: LoopTimer?) {
        guard let timer, timer.isScheduled else { return }
        timers.remove(timer)
        let callback = timer.callback
        timer.callback = nil
        withExtendedLifetime(callback) {}  // released after the timer is consistent
    }

    /// Number of scheduled timers (for tests and metrics). Loop thread only.
    public var scheduledTimerCount: Int { timers.count }

    // MARK: - Running

    /// Runs the loop on the calling thread until `stop()`. Returns after the
    /// iteration in which `stop()` was observed.
    public func run() {
        threadID.store(pthread_self(), ordering: .releasing)
        // At most 64 events per wait: an iteration (and the per-iteration batches —
        // deferred tasks, the loop's journal records) stays a few milliseconds long
        // even when every event costs ~100 µs; one more epoll_wait per 64 events is cheap.
        let maxEvents: Int32 = 64
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(maxEvents))
        defer { events.deallocate() }
        while !stopping.load(ordering: .acquiring) {
            cachedNow = Instant.now()
            // Nanoseconds (epoll_pwait2): a timer is neither rounded up to the next
            // millisecond nor fired early.
            var timeoutNs: Int64 = -1
            if !deferred.isEmpty || !writes.isEmpty {
                timeoutNs = 0
            } else if let first = timers.first {
                timeoutNs = first.deadline <= cachedNow ? 0
                    : min(Int64(first.deadline.nanoseconds - cachedNow.nanoseconds), 3_600_000_000_000)
            }
            // A look without blocking first: events found at once became ready while the
            // last iteration ran; events that end a blocking wait, when it woke.
            var n = CLinux_epoll_wait_ns(epfd, events, maxEvents, 0)
            let blocked = n == 0 && timeoutNs != 0
            if blocked { n = CLinux_epoll_wait_ns(epfd, events, maxEvents, timeoutNs) }
            cachedNow = Instant.now()
            readySince = blocked ? cachedNow : lastWaitReturn
            lastWaitReturn = cachedNow
            // Timers that came due while the last iteration ran go before its events.
            if let first = timers.first, first.deadline <= cachedNow { runExpiredTimers() }
            if n > 0 {
                for k in 0..<Int(n) {
                    // A long batch must not hold back due timers (a wait budget's 202,
                    // a step deadline) or tasks from other threads (a journal write's
                    // completion that sends a 202): every 4 events, run them (a clock
                    // read each time; events can cost ~100 µs each under load).
                    if k & 3 == 3 {
                        cachedNow = Instant.now()
                        if let first = timers.first, first.deadline <= cachedNow { runExpiredTimers() }
                        if wakePending.load(ordering: .acquiring) { drainWakeups() }
                        if !writes.isEmpty && (writes.count >= EventLoop.writeBatchLimit || cachedNow.nanoseconds >= writesDueNs) {
                            runWrites()
                        }
                    }
                    let data = CLinux_event_data(events + k)
                    let ev = IOEvents(rawValue: CLinux_event_events(events + k))
                    if data == UInt64(UInt32.max) {
                        drainWakeups()
                        continue
                    }
                    let fd = Int(UInt32(truncatingIfNeeded: data))
                    let gen = UInt32(truncatingIfNeeded: data >> 32)
                    guard fd < handlers.count, generations[fd] == gen, let h = handlers[fd] else { continue }
                    h.ioReady(ev)
                }
            }
            runExpiredTimers()
            runDeferred()
            runWrites()
        }
        releaseAfterStop()
        threadID.store(0, ordering: .releasing)
    }

    /// Lets go of everything that can no longer run once the loop has stopped (see
    /// the type's documentation). Tasks queued with `execute` before the stop still
    /// run, once (e.g. the final log flush of a shutdown, queued just before `stop()`
    /// while the loop was mid-iteration); tasks given later are dropped. The state is
    /// emptied first and the old contents released afterwards, so a deinit that calls
    /// back into the loop (`cancel`, `unregister`, `execute`) finds it consistent.
    private func releaseAfterStop() {
        stopped = true
        let tasks = pending.withLock { q -> [@Sendable () -> Void] in
            q.closed = true
            let t = q.tasks
            q.tasks = []
            return t
        }
        for t in tasks { t() }
        // Their writes (a response given off the loop just before the stop) go out too.
        runWrites()
        let oldTimers = timers.removeAll()
        // Their owners may still hold these timers: the callbacks go, not just the heap.
        let oldCallbacks = oldTimers.map { t -> (() -> Void)? in
            defer { t.callback = nil }
            return t.callback
        }
        let oldHandlers = handlers
        handlers = [IOHandler?](repeating: nil, count: oldHandlers.count)
        let oldDeferred = deferred
        deferred = []
        let oldWrites = writes
        writes = []
        withExtendedLifetime((tasks, oldTimers, oldCallbacks, oldHandlers, oldDeferred, oldWrites)) {}
    }

    private func drainWakeups() {
        var v: UInt64 = 0
        _ = read(wakeFD, &v, 8)
        wakePending.store(false, ordering: .releasing)
        let tasks = pending.withLock { q -> [@Sendable () -> Void] in
            let t = q.tasks
            q.tasks.removeAll(keepingCapacity: true)
            return t
        }
        for t in tasks { t() }
    }

    private func runExpiredTimers() {
        let now = cachedNow
        while let first = timers.first, first.deadline <= now {
            _ = timers.popFirst()
            let callback = first.callback
            first.callback = nil
            callback?()
        }
    }

    /// Runs the queued writes, and those they queue (a connection that goes on to a
    /// pipelined request answered at once). The two arrays trade storage, so queueing
    /// allocates nothing once they have grown.
    private func runWrites() {
        while !writes.isEmpty {
            var batch = spareWrites
            spareWrites = []
            swap(&batch, &writes)
            for w in batch { w.writeDeferred() }
            batch.removeAll(keepingCapacity: true)
            spareWrites = batch
        }
    }

    /// Runs the tasks deferred so far, once; those they defer wait for the next
    /// iteration (see `deferUntilEndOfIteration`). The two arrays trade storage, as in
    /// `runWrites`.
    private func runDeferred() {
        guard !deferred.isEmpty else { return }
        var batch = spareDeferred
        spareDeferred = []
        swap(&batch, &deferred)
        for (k, t) in batch.enumerated() {
            if k > 0 {
                // A deferred task can take milliseconds (e.g. starting every upstream
                // transfer of the iteration): due timers run between tasks.
                cachedNow = Instant.now()
                if let first = timers.first, first.deadline <= cachedNow { runExpiredTimers() }
            }
            t()
        }
        batch.removeAll(keepingCapacity: true)
        spareDeferred = batch
    }
}

/// Tasks handed to `EventLoop.execute(_:)` and not run yet; `closed` once the loop
/// has stopped (later tasks are dropped).
private struct PendingTasks {
    var tasks: [@Sendable () -> Void] = []
    var closed = false
}
