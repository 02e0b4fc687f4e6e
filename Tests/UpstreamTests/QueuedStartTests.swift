import Dispatch
import EventLoop
import Foundation
import Glibc
import Testing
import TestSupport
import Upstream

/// What a test's completions saw, from the loop thread.
private final class Outcomes: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [(String, UpstreamResult, Instant)] = []
    func add(_ tag: String, _ r: UpstreamResult) { lock.withLock { items.append((tag, r, Instant.now())) } }
    var all: [(tag: String, result: UpstreamResult, at: Instant)] { lock.withLock { items.map { (tag: $0.0, result: $0.1, at: $0.2) } } }
}

/// `send` hands a transfer to curl in the loop's write burst (`startQueued`), not at
/// once: what happens to a transfer between the two.
@Suite struct QueuedStartTests {
    /// A transfer cancelled before curl got it gives its handle back; a transfer sent
    /// next in the same iteration takes that handle: only the new one's request goes
    /// out, exactly once, and every handle is accounted for afterwards.
    @Test func cancelledWhileQueued_HandleReusedInSameIteration() throws {
        let up = try ScriptedServer.echoingTarget()
        let h = try ClientHarness()
        let base = "http://127.0.0.1:\(up.port)"
        // One pooled handle that has served a transfer already.
        _ = try h.send { UpstreamRequest(method: "GET", url: base + "/warm", deadline: $0 + .seconds(5)) }.get()
        #expect(eventually { h.activeTransfers == 0 })  // its handle is back after its completion
        let warm = h.client.handleStats
        #expect(warm.live == 1 && warm.idle == 1, "\(warm)")

        let outcomes = Outcomes()
        let done = DispatchSemaphore(value: 0)
        let client = h.client
        nonisolated(unsafe) var inFlightAfterCancel = -1
        h.group.loops[0].execute {
            let deadline = client.loop.now + .seconds(5)
            let a = client.send(UpstreamRequest(method: "POST", url: base + "/cancelled", deadline: deadline)) { r in
                outcomes.add("cancelled", r)
            }
            a.cancel()
            inFlightAfterCancel = client.activeTransfers
            // Takes the handle `a` gave back; `a` is still in the queue.
            client.send(UpstreamRequest(method: "GET", url: base + "/next", deadline: deadline)) { r in
                outcomes.add("next", r)
                done.signal()
            }
            a.cancel()  // again: a no-op, also now that its handle serves another transfer
            let c = client.send(UpstreamRequest(method: "GET", url: base + "/also-cancelled", deadline: deadline)) { r in
                outcomes.add("also-cancelled", r)
            }
            c.cancel()
            client.send(UpstreamRequest(method: "GET", url: base + "/last", deadline: deadline)) { r in
                outcomes.add("last", r)
                done.signal()
            }
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(inFlightAfterCancel == 0)
        #expect(eventually { h.activeTransfers == 0 })
        usleep(100_000)  // a completion of a cancelled transfer, or a second request, would show by now
        let seen = outcomes.all
        #expect(seen.map(\.tag).sorted() == ["last", "next"])
        for o in seen {
            let body = try o.result.get().body
            #expect(String(decoding: body, as: UTF8.self) == "\(up.port) /\(o.tag)")
        }
        #expect(up.requests.map(\.target).sorted() == ["/last", "/next", "/warm"])
        let s = h.client.handleStats
        #expect(s.inFlight == 0 && s.unaccounted == 0 && s.idle == s.live, "\(s)")
        #expect(s.live <= 2, "two transfers in flight at once at most: \(s)")
        // A handle whose cancelled transfer never reached curl is kept, not replaced.
        #expect(s.cleanedUp == warm.cleanedUp, "\(s)")
    }

    /// `cancelAll` while transfers are queued cancels them too; transfers sent after it
    /// in the same iteration go out, each once.
    @Test func cancelAllWhileQueued_ThenNewTransfers() throws {
        let up = try ScriptedServer.echoingTarget()
        let h = try ClientHarness()
        let base = "http://127.0.0.1:\(up.port)"
        let outcomes = Outcomes()
        let done = DispatchSemaphore(value: 0)
        let client = h.client
        h.group.loops[0].execute {
            let deadline = client.loop.now + .seconds(5)
            for i in 0..<3 {
                client.send(UpstreamRequest(method: "GET", url: base + "/old\(i)", deadline: deadline)) { r in outcomes.add("old\(i)", r) }
            }
            client.cancelAll()
            for i in 0..<2 {
                client.send(UpstreamRequest(method: "GET", url: base + "/new\(i)", deadline: deadline)) { r in
                    outcomes.add("new\(i)", r)
                    done.signal()
                }
            }
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(done.wait(timeout: .now() + 10) == .success)
        #expect(eventually { h.activeTransfers == 0 })
        usleep(100_000)
        #expect(outcomes.all.map(\.tag).sorted() == ["new0", "new1"])
        #expect(up.requests.map(\.target).sorted() == ["/new0", "/new1"])
        let s = h.client.handleStats
        #expect(s.inFlight == 0 && s.unaccounted == 0 && s.idle == s.live && s.live <= 3, "\(s)")
    }

    /// A deadline that passes while the transfer waits for curl (the loop was busy
    /// for the rest of its iteration): the attempt fails as a timeout when the loop
    /// gets to it, without sending the request.
    @Test func deadlinePassedWhileQueued_FailsWithoutTheNetwork() throws {
        let up = try ScriptedServer.silent()
        defer { up.stop() }
        let h = try ClientHarness()
        let (f, late) = try QueuedStartTests.timeoutAfterBusyIteration(
            h, UpstreamRequest(method: "POST", url: "http://127.0.0.1:\(up.port)/late", body: Array("x".utf8), deadline: .distantFuture),
            deadlineAfter: .milliseconds(100), busyFor: 300_000)  // the rest of the iteration outlasts the deadline
        #expect(f.kind == .timeout, "\(f)")
        #expect(late < 380_000_000, "failed \(late / 1_000_000) ms after send, the deadline being 100 ms")
        usleep(200_000)
        #expect(up.requests.isEmpty && up.connections == 0, "a request past its deadline went out")
        #expect(eventually { h.activeTransfers == 0 })
        let s = h.client.handleStats
        #expect(s.inFlight == 0 && s.unaccounted == 0 && s.idle == s.live, "\(s)")
    }

    /// A deadline that comes closer while the transfer waits for curl: the attempt
    /// still ends at the deadline, not the wait later.
    @Test func deadlineNearerAfterWaitingInQueue_StillEndsAtTheDeadline() throws {
        let up = try ScriptedServer.silent()
        defer { up.stop() }
        let h = try ClientHarness()
        let (f, took) = try QueuedStartTests.timeoutAfterBusyIteration(
            h, UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/slow", deadline: .distantFuture),
            deadlineAfter: .milliseconds(400), busyFor: 250_000)  // the transfer waits in the queue meanwhile
        #expect(f.kind == .timeout, "\(f)")
        // Ends at about 400 ms; counted from curl's start it would be about 650.
        #expect(took >= 390_000_000 && took < 550_000_000, "ended \(took / 1_000_000) ms after send, the deadline being 400 ms")
        #expect(eventually { up.requests.count == 1 })
    }

    /// Sends `request` on the loop with its deadline `deadlineAfter` from now, then keeps
    /// the loop busy for `busyFor` microseconds in the same iteration; returns the
    /// failure the attempt ended with and the nanoseconds from `send` to its completion.
    /// Records an issue and throws when it succeeded or never completed.
    static func timeoutAfterBusyIteration(_ h: ClientHarness, _ request: UpstreamRequest, deadlineAfter: Duration,
                                          busyFor: UInt32) throws -> (UpstreamFailure, UInt64) {
        let outcomes = Outcomes()
        let done = DispatchSemaphore(value: 0)
        let client = h.client
        nonisolated(unsafe) var sentAt = Instant.now()
        nonisolated(unsafe) var request = request
        h.group.loops[0].execute {
            sentAt = Instant.now()
            request.deadline = sentAt + deadlineAfter
            client.send(request) { r in
                outcomes.add("attempt", r)
                done.signal()
            }
            usleep(busyFor)
        }
        #expect(done.wait(timeout: .now() + 10) == .success)
        let o = try #require(outcomes.all.first)
        guard case .failure(let f) = o.result else {
            Issue.record("succeeded: \(o.result)")
            throw QueuedStartTests.Unexpected()
        }
        return (f, o.at.nanoseconds - sentAt.nanoseconds)
    }

    struct Unexpected: Error {}

    /// A client stopped with transfers just sent (the loop's last iteration) frees them
    /// and their handles when it goes away.
    @Test func loopStoppingWithQueuedTransfers_FreesThem() throws {
        let up = try ScriptedServer.silent()
        defer { up.stop() }
        var h: ClientHarness? = try ClientHarness()
        let loops = h!.group.loops
        let url = "http://127.0.0.1:\(up.port)/hang"
        let transfers = WeakTransfers()
        do {
            let client = h!.client
            let loop = loops[0]
            let sent = DispatchSemaphore(value: 0)
            loop.execute {
                for _ in 0..<3 {
                    transfers.add(client.send(UpstreamRequest(method: "GET", url: url, deadline: client.loop.now + .seconds(30))) { _ in })
                }
                loop.stop()
                sent.signal()
            }
            _ = sent.wait(timeout: .now() + 10)
        }
        h = nil
        #expect(eventually { transfers.alive == 0 }, "transfers queued when the loop stopped were not freed")
        #expect(eventually { UpstreamClient.handleStats(onLoops: loops).live == 0 })
    }
}

extension QueuedStartTests {
    /// A transfer sent by a task the loop runs as it stops (after its last iteration)
    /// is never driven: its request does not go out, even over a kept-alive connection.
    @Test func sentAsTheLoopStops_RequestNeverGoesOut() throws {
        let up = try ScriptedServer.echoingTarget()
        var h: ClientHarness? = try ClientHarness()
        let base = "http://127.0.0.1:\(up.port)"
        _ = try h!.send { UpstreamRequest(method: "GET", url: base + "/warm", deadline: $0 + .seconds(5)) }.get()
        let loop = h!.group.loops[0]
        do {
            let client = h!.client
            let queued = DispatchSemaphore(value: 0)
            loop.execute {
                loop.stop()
                loop.execute {  // runs after the last iteration, as the loop stops
                    client.send(UpstreamRequest(method: "POST", url: base + "/after-stop", deadline: client.loop.now + .seconds(5))) { _ in }
                }
                queued.signal()
            }
            _ = queued.wait(timeout: .now() + 10)
        }
        h = nil
        usleep(200_000)
        #expect(up.requests.map(\.target) == ["/warm"])
    }
}
