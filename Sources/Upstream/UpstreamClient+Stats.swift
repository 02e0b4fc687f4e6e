import EventLoop
import Locking
import Synchronization

/// A snapshot of libcurl easy-handle accounting, for one `UpstreamClient` or for
/// every client of the process. All values are counts of easy handles (or of
/// transfers, which hold one handle each).
///
/// At rest every live handle is either in flight or idle in a client's pool, so
/// `unaccounted` is 0; anything else is a handle that was taken from the pool and
/// never returned, or one left behind by a client that went away with transfers
/// still running.
public struct UpstreamHandleStats: Sendable, Equatable, CustomStringConvertible {
    /// Handles created with `curl_easy_init` since the process (or client) started.
    public var created: Int
    /// Handles destroyed with `curl_easy_cleanup` (a client cleans up its pool when it goes away).
    public var cleanedUp: Int
    /// Transfers added to a multi handle and not yet finished or cancelled.
    public var inFlight: Int
    /// Handles waiting in a client's pool for the next transfer.
    public var idle: Int
    /// Transfers whose handle had last been given another URL, or none (a new or
    /// replaced handle): curl renders the new URL's text for each (the pool prefers a
    /// handle last used for the same URL, `UpstreamClient.takeFreeHandle(for:)`).
    public var urlChanges: Int

    /// Handles that exist now: `created - cleanedUp`.
    public var live: Int { created - cleanedUp }
    /// Live handles that are neither in flight nor pooled (leaked); 0 when all is well.
    public var unaccounted: Int { live - inFlight - idle }

    /// Creates a snapshot from its counts.
    public init(created: Int, cleanedUp: Int, inFlight: Int, idle: Int, urlChanges: Int = 0) {
        self.created = created
        self.cleanedUp = cleanedUp
        self.inFlight = inFlight
        self.idle = idle
        self.urlChanges = urlChanges
    }

    public var description: String {
        "easy handles: \(live) live (\(created) created, \(cleanedUp) cleaned up), \(inFlight) in flight, \(idle) idle, \(unaccounted) unaccounted, \(urlChanges) URL changes"
    }
}

/// The easy-handle counters of one `UpstreamClient`. Written on the client's loop
/// thread (where the client does all its work), read from any thread (relaxed
/// atomics: a reader may see a value a moment old, never a torn one).
final class UpstreamHandleCounters: Sendable {
    private let createdCount = Atomic<Int>(0)
    private let cleanedUpCount = Atomic<Int>(0)
    private let inFlightCount = Atomic<Int>(0)
    private let idleCount = Atomic<Int>(0)
    private let urlChangeCount = Atomic<Int>(0)

    /// The client's loop (which outlives the client, so the identifier stays unique
    /// while these counters are registered).
    let loop: ObjectIdentifier

    /// Registers the counters of a client driven by `loop`.
    init(loop: EventLoop) {
        self.loop = ObjectIdentifier(loop)
        let id = ObjectIdentifier(self)
        handleRegistry.withLock { $0.clients[id] = WeakCounters(counters: self) }
    }

    deinit {
        // The owning client is gone: keep its created/cleaned-up/URL-change totals in the
        // process-wide figures (a handle it leaked stays visible as `unaccounted`).
        let id = ObjectIdentifier(self)
        let created = createdCount.load(ordering: .relaxed)
        let cleanedUp = cleanedUpCount.load(ordering: .relaxed)
        let urlChanges = urlChangeCount.load(ordering: .relaxed)
        handleRegistry.withLock { r in
            r.clients[id] = nil
            r.retiredCreated += created
            r.retiredCleanedUp += cleanedUp
            r.retiredURLChanges += urlChanges
        }
    }

    /// One handle was created with `curl_easy_init`.
    func handleCreated() { createdCount.add(1, ordering: .relaxed) }
    /// `n` handles were destroyed with `curl_easy_cleanup`.
    func handlesCleanedUp(_ n: Int) { cleanedUpCount.add(n, ordering: .relaxed) }
    /// The number of transfers in flight is now `n`.
    func setInFlight(_ n: Int) { inFlightCount.store(n, ordering: .relaxed) }
    /// The number of pooled idle handles is now `n`.
    func setIdle(_ n: Int) { idleCount.store(n, ordering: .relaxed) }
    /// A handle was given a URL other than its last one.
    func urlChanged() { urlChangeCount.add(1, ordering: .relaxed) }

    var snapshot: UpstreamHandleStats {
        UpstreamHandleStats(created: createdCount.load(ordering: .relaxed),
                            cleanedUp: cleanedUpCount.load(ordering: .relaxed),
                            inFlight: inFlightCount.load(ordering: .relaxed),
                            idle: idleCount.load(ordering: .relaxed),
                            urlChanges: urlChangeCount.load(ordering: .relaxed))
    }
}

private struct WeakCounters {
    weak var counters: UpstreamHandleCounters?
}

/// The counters of every live client, and the totals of the clients gone.
private struct HandleRegistry {
    var clients: [ObjectIdentifier: WeakCounters] = [:]
    var retiredCreated = 0
    var retiredCleanedUp = 0
    var retiredURLChanges = 0
}

private let handleRegistry = Locked(HandleRegistry())

extension UpstreamClient {
    /// This client's easy-handle accounting. Any thread; the figures are updated on
    /// the client's loop thread, so read them there (or once the loop is idle) for
    /// an exact picture.
    public var handleStats: UpstreamHandleStats { handleCounters.snapshot }

    /// The easy-handle accounting summed over every `UpstreamClient` of the
    /// process, including the created/cleaned-up and URL-change totals of clients that no longer
    /// exist. Any thread; each client's figures are as fresh as described at
    /// `handleStats`.
    public static var processHandleStats: UpstreamHandleStats { sum(retired: true) { _ in true } }

    /// The easy-handle accounting summed over the live clients driven by `loops`
    /// (for example every client of one gateway, whatever its purpose). Clients
    /// that no longer exist are not included. Any thread; each client's figures
    /// are as fresh as described at `handleStats`.
    public static func handleStats(onLoops loops: [EventLoop]) -> UpstreamHandleStats {
        let ids = Set(loops.map { ObjectIdentifier($0) })
        return sum(retired: false) { ids.contains($0.loop) }
    }

    private static func sum(retired: Bool, _ include: (UpstreamHandleCounters) -> Bool) -> UpstreamHandleStats {
        handleRegistry.withLock { r in
            var total = retired ? UpstreamHandleStats(created: r.retiredCreated, cleanedUp: r.retiredCleanedUp, inFlight: 0, idle: 0,
                                                      urlChanges: r.retiredURLChanges)
                                : UpstreamHandleStats(created: 0, cleanedUp: 0, inFlight: 0, idle: 0)
            for w in r.clients.values {
                guard let c = w.counters, include(c) else { continue }
                let s = c.snapshot
                total.created += s.created
                total.cleanedUp += s.cleanedUp
                total.inFlight += s.inFlight
                total.idle += s.idle
                total.urlChanges += s.urlChanges
            }
            return total
        }
    }
}
