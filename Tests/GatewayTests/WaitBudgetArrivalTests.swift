import EventLoop
import Foundation
@testable import Gateway
import Glibc
import Testing
import TestSupport

/// The wait budget counts from the request's arrival (`HTTPRequest.receivedAt`), not
/// from when a busy loop got to it (SPEC §3: the caller's wait is what the budget bounds).
@Suite struct WaitBudgetArrivalTests {
    /// A keep-alive connection the gateway has accepted and served once (a stall of its
    /// loops must not hold the accept).
    private func acceptedConnection(_ h: GatewayHarness) throws -> RawConnection {
        let c = try h.connect()
        #expect(c.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"))
        #expect(c.readResponse()?.status == 200)
        return c
    }

    /// Makes every loop of the gateway (the connection is on one of them) sleep for
    /// `microseconds`; returns once all of them have started to.
    private func stallLoops(_ h: GatewayHarness, microseconds: UInt32) {
        let busy = DispatchSemaphore(value: 0)
        let loops = h.gateway.states.map(\.loop)
        for loop in loops {
            loop.execute {
                busy.signal()
                usleep(microseconds)
            }
        }
        for _ in loops { busy.wait() }
    }

    /// A request that arrives while the gateway's loop is busy for 2 s, on a route with
    /// a 1.5 s budget over an upstream that holds its answer: its budget is over by the
    /// time the loop reads it, so the `202` follows at once — about 2 s after the request
    /// was sent, not 2 + 1.5 s as when the budget started at the read. (The bound between
    /// the two leaves a second for the rest of the work on a busy, sanitized machine.)
    @Test func requestThatWaitedForABusyLoop_Gets202ByItsArrivalPlusBudget() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try GatewayHarness(routes: ["s.json": AsyncEndToEndTests.slowRoute(wait: "1500ms")],
                                   env: ["U": "http://127.0.0.1:\(up.port)"])
        let c = try acceptedConnection(h)
        stallLoops(h, microseconds: 2_000_000)
        let sent = ContinuousClock.now
        #expect(c.write("POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"n\": 1}"))
        let r = try #require(c.readResponse())
        let elapsed = ContinuousClock.now - sent
        #expect(r.status == 202)
        #expect(up.answered == 0)
        // Held by the busy loop, then answered without a second wait for the budget
        // (which would put it at 3.5 s or more).
        #expect(elapsed >= .milliseconds(1900))
        #expect(elapsed < .milliseconds(3000))
    }

    /// A request that arrives at the end of a 600 ms stall of the loop (500 ms into it),
    /// on a route with a 400 ms budget over an upstream that answers in 50 ms: it
    /// waited ~100 ms for the loop, so its run has most of its budget left and the
    /// caller gets the run's `200`. Dating it by the wait before the stall (the lower
    /// bound of when its bytes came) counts the 500 ms before it was even sent, and
    /// answers `202` at once.
    @Test func requestThatArrivedLateInABusyIteration_KeepsMostOfItsBudget() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(50))
        let h = try GatewayHarness(routes: ["s.json": AsyncEndToEndTests.slowRoute(wait: "400ms")],
                                   env: ["U": "http://127.0.0.1:\(up.port)"])
        let c = try acceptedConnection(h)
        stallLoops(h, microseconds: 600_000)
        usleep(500_000)
        let sent = ContinuousClock.now
        #expect(c.write("POST /slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"n\": 1}"))
        let r = try #require(c.readResponse())
        let elapsed = ContinuousClock.now - sent
        print("late arrival in a busy iteration: \(r.status) after \(elapsed)")
        #expect(r.status == 200)
        #expect(elapsed < .milliseconds(400))
    }
}
