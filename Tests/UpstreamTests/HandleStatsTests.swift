import Dispatch
import EventLoop
import Foundation
import Testing
import TestSupport
import Upstream

/// Sends `count` requests built by `build` at once on the harness's loop, waits for
/// every completion and returns the results.
private func burst(_ h: ClientHarness, _ count: Int, _ build: @escaping @Sendable (Instant) -> UpstreamRequest) -> [UpstreamResult] {
    let done = DispatchSemaphore(value: 0)
    let results = ResultBox()
    let client = h.client
    h.group.loops[0].execute {
        for _ in 0..<count {
            client.send(build(client.loop.now)) { r in results.append(r); done.signal() }
        }
    }
    for _ in 0..<count { _ = done.wait(timeout: .now() + 20) }
    return results.all
}

private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [UpstreamResult] = []
    func append(_ r: UpstreamResult) { lock.withLock { results.append(r) } }
    var all: [UpstreamResult] { lock.withLock { results } }
}

/// The easy-handle accounting of `UpstreamClient` (handles created, pooled, in
/// flight), against real sockets and real libcurl.
@Suite struct HandleStatsTests {
    /// A burst of 8 concurrent transfers creates at most 8 handles; once they finish
    /// every handle is back in the pool, and a second burst reuses them.
    @Test func burst_ReturnsEveryHandleToThePool_AndReusesIt() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(100))
        let h = try ClientHarness()
        #expect(h.client.handleStats == UpstreamHandleStats(created: 0, cleanedUp: 0, inFlight: 0, idle: 0))
        let url = "http://127.0.0.1:\(up.port)/x"

        let first = burst(h, 8) { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5)) }
        #expect(first.count == 8)
        #expect(first.allSatisfy { (try? $0.get().status) == 200 })
        #expect(eventually { h.client.handleStats.inFlight == 0 })
        let afterFirst = h.client.handleStats
        #expect(afterFirst.created >= 1 && afterFirst.created <= 8, "\(afterFirst)")
        #expect(afterFirst.idle == afterFirst.created, "\(afterFirst)")
        #expect(afterFirst.unaccounted == 0, "\(afterFirst)")

        _ = burst(h, 8) { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5)) }
        #expect(eventually { h.client.handleStats.inFlight == 0 })
        let afterSecond = h.client.handleStats
        #expect(afterSecond.created <= 8, "the pool is reused, never grown past the peak concurrency: \(afterSecond)")
        #expect(afterSecond.idle == afterSecond.created && afterSecond.unaccounted == 0, "\(afterSecond)")
    }

    /// While transfers wait on a silent upstream they count as in flight; cancelling
    /// them returns their handles to the pool — fresh ones for those whose request had
    /// gone out (curl may hold part of a head it was reading).
    @Test func cancelledTransfers_ReturnTheirHandles() throws {
        let up = try ScriptedServer.silent()
        defer { up.stop() }
        let h = try ClientHarness()
        let url = "http://127.0.0.1:\(up.port)/hang"
        let transfers = TransferBox()
        let client = h.client
        h.group.loops[0].execute {
            for _ in 0..<5 {
                transfers.append(client.send(UpstreamRequest(method: "GET", url: url, deadline: client.loop.now + .seconds(30))) { _ in })
            }
        }
        #expect(eventually { h.client.handleStats.inFlight == 5 }, "\(h.client.handleStats)")
        #expect(eventually { up.requests.count == 5 }, "\(up.requests.count) requests received")
        let during = h.client.handleStats
        #expect(during.created == 5 && during.idle == 0 && during.unaccounted == 0, "\(during)")

        let cancelled = DispatchSemaphore(value: 0)
        h.group.loops[0].execute {
            for t in transfers.all { t.cancel() }
            cancelled.signal()
        }
        _ = cancelled.wait(timeout: .now() + 10)
        #expect(eventually { h.client.handleStats.inFlight == 0 })
        let after = h.client.handleStats
        #expect(after.live == 5 && after.idle == 5 && after.unaccounted == 0, "\(after)")
        #expect(after.created == 10 && after.cleanedUp == 5, "every request had gone out: \(after)")
    }

    /// Attempts that fail before any byte is sent (deadline already passed, a
    /// protocol other than HTTP) put their handle back.
    @Test func attemptsFailingBeforeTheNetwork_DoNotKeepAHandle() throws {
        let h = try ClientHarness()
        let late = burst(h, 3) { UpstreamRequest(method: "GET", url: "http://127.0.0.1:1/", deadline: Instant(nanoseconds: $0.nanoseconds - 1_000_000)) }
        #expect(late.count == 3)
        let bad = burst(h, 3) { UpstreamRequest(method: "GET", url: "ftp://127.0.0.1:1/x", deadline: $0 + .seconds(5)) }
        #expect(bad.count == 3)
        #expect(eventually { h.client.handleStats.inFlight == 0 })
        let s = h.client.handleStats
        #expect(s.created >= 1 && s.idle == s.created && s.unaccounted == 0, "\(s)")
    }

    /// A fan-out's legs each go to their own URL: every leg takes the pooled handle
    /// last used for its URL, whatever order the previous legs finished in, so curl is
    /// given each URL once per handle (it renders a changed URL's text anew). Taking
    /// the most recently pooled handle instead changes URLs in most rounds.
    @Test func legsToSeveralURLs_TakeTheHandleLastUsedForTheirURL() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        let paths = ["/a", "/b", "/c"]
        let urls = paths.map { "http://127.0.0.1:\(up.port)\($0)" }
        let client = h.client
        let rounds = 12
        for _ in 0..<rounds {
            let done = DispatchSemaphore(value: 0)
            let results = ResultBox()
            h.group.loops[0].execute {
                for url in urls {
                    client.send(UpstreamRequest(method: "GET", url: url, deadline: client.loop.now + .seconds(5))) { r in
                        results.append(r)
                        done.signal()
                    }
                }
            }
            for _ in urls { _ = done.wait(timeout: .now() + 10) }
            #expect(results.all.count == 3 && results.all.allSatisfy { (try? $0.get().status) == 200 })
            #expect(eventually { h.client.handleStats.inFlight == 0 })
        }
        let s = h.client.handleStats
        #expect(s.created == 3 && s.idle == 3 && s.unaccounted == 0, "\(s)")
        #expect(s.urlChanges == 3, "each of the 3 handles given its URL once: \(s)")
        // Every request went to the URL it was sent for.
        let targets = up.requests.map(\.target)
        for path in paths { #expect(targets.filter { $0 == path }.count == rounds, "\(targets)") }
    }

    /// The per-loop and process-wide figures include this client; when the client
    /// goes away its pooled handles are cleaned up.
    @Test func clientGoingAway_CleansUpItsPool() throws {
        let up = try ScriptedServer.answering()
        var h: ClientHarness? = try ClientHarness()
        let loops = h!.group.loops
        _ = burst(h!, 4) { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(5)) }
        #expect(eventually { h!.client.handleStats.inFlight == 0 })
        let mine = h!.client.handleStats
        #expect(UpstreamClient.handleStats(onLoops: loops) == mine)
        let cleanedBefore = UpstreamClient.processHandleStats.cleanedUp
        h = nil  // shuts the loop down and releases the client
        #expect(eventually { UpstreamClient.handleStats(onLoops: loops).live == 0 })
        // Other tests' clients may retire at the same time: at least ours were cleaned up.
        #expect(eventually { UpstreamClient.processHandleStats.cleanedUp - cleanedBefore >= mine.created })
    }
}

extension HandleStatsTests {
    /// A client that goes away with transfers still in flight (shutdown) cancels
    /// them: their handles are cleaned up and the transfers (retained for curl while
    /// in flight) are freed, with whatever their completions hold.
    @Test func clientGoingAway_WithTransfersInFlight_FreesThem() throws {
        let up = try ScriptedServer.silent()
        defer { up.stop() }
        var h: ClientHarness? = try ClientHarness()
        let loops = h!.group.loops
        let url = "http://127.0.0.1:\(up.port)/hang"
        let weakTransfers = WeakTransfers()
        do {  // no strong reference to the client outlives this scope
            let client = h!.client
            let sent = DispatchSemaphore(value: 0)
            loops[0].execute {
                for _ in 0..<3 {
                    weakTransfers.add(client.send(UpstreamRequest(method: "GET", url: url, deadline: client.loop.now + .seconds(30))) { _ in })
                }
                sent.signal()
            }
            _ = sent.wait(timeout: .now() + 10)
        }
        #expect(eventually { up.requests.count + up.connections >= 3 })
        let cleanedBefore = UpstreamClient.processHandleStats.cleanedUp
        h = nil  // stops the loop and releases the client, transfers still in flight
        #expect(eventually { weakTransfers.alive == 0 }, "transfers in flight when the client went away were not freed")
        #expect(eventually { UpstreamClient.handleStats(onLoops: loops).live == 0 })
        #expect(eventually { UpstreamClient.processHandleStats.cleanedUp - cleanedBefore >= 3 })
    }
}

/// Weak references to transfers, from any thread: how many are still alive.
final class WeakTransfers: @unchecked Sendable {
    private struct Ref { weak var t: UpstreamTransfer? }
    private let lock = NSLock()
    private var refs: [Ref] = []
    func add(_ t: UpstreamTransfer) { lock.withLock { refs.append(Ref(t: t)) } }
    var alive: Int { lock.withLock { refs.filter { $0.t != nil }.count } }
}

private final class TransferBox: @unchecked Sendable {
    private let lock = NSLock()
    private var transfers: [UpstreamTransfer] = []
    func append(_ t: UpstreamTransfer) { lock.withLock { transfers.append(t) } }
    var all: [UpstreamTransfer] { lock.withLock { transfers } }
}
