import EventLoop
import Foundation
import Glibc
import Locking
import Synchronization
import Testing
@testable import HTTP1

/// Responses queued for the loop's write burst (`EventLoop.deferWrite`): none lost to a
/// close, a shutdown or a loop stop in the same iteration, none doubled, pipelines in order.
@Suite struct QueuedResponseTests {
}



extension QueuedResponseTests {
    /// A request answered by the responder (`respond` returned) in the same loop
    /// iteration in which `shutdown()` runs: the response is still queued for the write
    /// burst when `closeAll` closes the connection, and must go out before the close.
    @Test func shutdown_InTheIterationOfAnAnswer_StillDeliversIt() throws {
        let answered = Atomic<Int>(0)
        let s = try TestServer(loops: 1, responder: { req, w in
            if req.path == "/block" { usleep(300_000) }
            if req.path == "/x" { answered.add(1, ordering: .relaxed) }
            w.respond(HTTPResponse(status: 200, body: Array("ok".utf8)))
        })
        defer { s.group.shutdown() }
        let c = try s.client(), x = try s.client()
        #expect(c.get("/warm")?.status == 200)
        #expect(x.get("/warm")?.status == 200)
        c.send("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
        usleep(50_000)  // the loop sleeps in /block's responder
        x.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        usleep(20_000)  // x's bytes are in before shutdown's wake-up
        s.server.shutdown()
        #expect(answered.load(ordering: .relaxed) == 1)
        let (data, closed) = x.readUntilClosed()
        let text = String(decoding: data, as: UTF8.self)
        print("x got \(data.count) bytes: \(text.prefix(20).debugDescription) closed=\(closed)")
        #expect(text.hasPrefix("HTTP/1.1 200"))
    }

    /// The same with a responder answering from another thread just before the loop
    /// stops (`respond` → `loop.execute`, then `group.shutdown()`): the task runs in
    /// `releaseAfterStop`, and the write it queues must still go out.
    @Test func loopStop_RightAfterAnOffLoopAnswer_StillDeliversIt() throws {
        let held = Recorder<HTTPResponseWriter?>(nil)
        let s = try TestServer(loops: 1, responder: { req, w in
            if req.path == "/block" { usleep(300_000); w.respond(HTTPResponse(status: 200)); return }
            if req.path == "/x" { held.set(w); return }
            w.respond(HTTPResponse(status: 200))
        })
        let c = try s.client(), x = try s.client()
        x.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(eventually { held.get != nil })
        c.send("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
        usleep(50_000)  // the loop sleeps in /block's responder
        held.get?.respond(HTTPResponse(status: 200, body: Array("late".utf8)))  // off loop: execute
        held.set(nil)
        s.group.shutdown()  // stop() while the loop is mid-iteration
        // The loop has stopped; nothing closes x's socket, so read just one response.
        let r = x.readResponse()
        print("x got \(r.map { "\($0.status) \($0.bodyText)" } ?? "nothing")")
        #expect(r?.bodyText == "late")
    }
}

extension QueuedResponseTests {
    /// A client half-closes (FIN after its request) and its late response is given by
    /// a timer in the iteration whose events include that FIN: the timer runs first
    /// and answers; the FIN then finds the connection busy (`flushQueued`) and
    /// `busyRead` closes it — after writing the response the responder already gave.
    @Test func halfClose_SeenInTheIterationOfTheAnswer_StillGetsIt() throws {
        let held = Recorder<HTTPResponseWriter?>(nil)
        try withServer(loops: 1, responder: { req, w in
            if req.path == "/x" { held.set(w); return }
            if req.path == "/block" {
                // Due before this iteration ends, but the loop's clock is the one cached
                // at its start: it fires first thing in the next iteration.
                let x = held.get
                w.loop.schedule(at: w.loop.now + .milliseconds(100)) {
                    x?.respond(HTTPResponse(status: 200, body: Array("late".utf8)))
                }
                held.set(nil)
                usleep(300_000)
            }
            w.respond(HTTPResponse(status: 200))
        }) { s in
            let c = try s.client(), x = try s.client()
            x.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(eventually { held.get != nil })
            c.send("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
            usleep(50_000)  // the loop sleeps in /block's responder
            Glibc.shutdown(x.fd, Int32(SHUT_WR))
            let r = x.readResponse()
            print("x got \(r.map { "\($0.status) \($0.bodyText)" } ?? "nothing")")
            #expect(r?.bodyText == "late")
        }
    }
}

extension QueuedResponseTests {
    /// One write: a late answer, HEAD, a sync answer, `Connection: close`, and a request
    /// after the close that must never be answered.
    @Test func pipeline_MixedLateSyncHeadAndClose() throws {
        try withServer { s in
            let c = try s.client()
            c.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
                + "HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n"
                + "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                + "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                + "GET /never HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(c.readResponse()?.bodyText == "slow 0")
            let h = c.readResponse(head: true)
            #expect(h?.status == 200)
            #expect(h?.headers["Content-Length"] == "9")
            #expect(c.readResponse()?.bodyText == "GET /a 0")
            let cl = c.readResponse()
            #expect(cl?.bodyText == "GET /c 0")
            #expect(cl?.headers["Connection"] == "close")
            let rest = c.readUntilClosed()
            #expect(rest.closed)
            #expect(rest.data.isEmpty, "\(String(decoding: rest.data, as: UTF8.self))")
        }
    }

    /// A bad request right after good ones: the good get their answers in order, then the
    /// error problem, then the close (400, 431, 413).
    @Test(arguments: [
        ("GARBAGE\r\n\r\n", 400),
        ("GET /x HTTP/1.1\r\nHost: h\r\nX-Big: " + String(repeating: "a", count: 20000) + "\r\n\r\n", 431),
        ("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999\r\n\r\n", 413),
    ])
    func pipeline_GoodThenBad(bad: String, status: Int) throws {
        try withServer { s in
            let c = try s.client()
            c.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n" + bad)
            #expect(c.readResponse()?.bodyText == "slow 0")
            #expect(c.readResponse()?.bodyText == "GET /a 0")
            let e = c.readResponse()
            #expect(e?.status == status)
            #expect(c.isClosedByServer())
        }
    }

    /// `Expect: 100-continue` pipelined right after a good request: refused by the check
    /// (401, close), or let through (100, then the answer).
    @Test func pipeline_GoodThenExpectContinue() throws {
        let check: (HTTPRequest, HTTPResponseWriter) -> Bool = { head, w in
            guard head.path == "/locked" else { return false }
            w.respond(HTTPResponse(status: 401))
            return true
        }
        try withServer(continueCheck: check) { s in
            let r = try s.client()
            r.send("GET /a HTTP/1.1\r\nHost: h\r\n\r\nPUT /locked HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            #expect(r.readResponse()?.bodyText == "GET /a 0")
            #expect(r.readResponse()?.status == 401)
            #expect(r.isClosedByServer())

            let o = try s.client()
            o.send("GET /a HTTP/1.1\r\nHost: h\r\n\r\nPUT /open HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            #expect(o.readResponse()?.bodyText == "GET /a 0")
            #expect(o.readResponse()?.status == 100)
            o.send("data")
            #expect(o.readResponse()?.bodyText == "PUT /open 4")
            #expect(o.get("/z")?.status == 200)
        }
    }

    /// A client that does not read while a big response blocks the socket (outPending)
    /// and another request is pipelined behind it: both arrive, in order.
    @Test func pipeline_BlockedBigResponseThenAnother() throws {
        try withServer { s in
            let c = try s.client()
            c.send("GET /big?8000000 HTTP/1.1\r\nHost: h\r\n\r\nGET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n")
            usleep(300_000)
            #expect(c.readResponse()?.body.count == 8_000_000)
            #expect(c.readResponse()?.bodyText == "slow 0")
            #expect(c.readResponse()?.bodyText == "GET /a 0")
        }
    }

    /// Drain while a response is queued (it was answered in the iteration in which
    /// `closeIdleConnections` runs): the response arrives and the connection closes at
    /// once, without waiting for a timeout. And a pipelined request behind it is
    /// answered with `Connection: close`.
    @Test func drain_WhileAResponseIsQueued() throws {
        try withServer(loops: 1, responder: { req, w in
            if req.path == "/block" { usleep(300_000) }
            w.respond(HTTPResponse(status: 200, body: Array(req.path.utf8)))
        }) { s in
            let c = try s.client(), x = try s.client(), y = try s.client()
            #expect(x.get("/warm")?.status == 200)
            #expect(y.get("/warm")?.status == 200)
            c.send("GET /block HTTP/1.1\r\nHost: h\r\n\r\n")
            usleep(50_000)
            x.send("GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
            y.send("GET /y1 HTTP/1.1\r\nHost: h\r\n\r\nGET /y2 HTTP/1.1\r\nHost: h\r\n\r\n")
            usleep(20_000)
            let t0 = Instant.now()
            s.server.closeIdleConnections()
            let rx = x.readResponse()
            #expect(rx?.bodyText == "/x")
            #expect(x.isClosedByServer())
            #expect(y.readResponse()?.bodyText == "/y1")
            #expect(y.readResponse()?.bodyText == "/y2")
            #expect(y.isClosedByServer())
            // "At once" against the 60 s idle timeout it would otherwise wait for; the bound
            // leaves room for a slow (sanitized, shared) machine.
            let ms = (Instant.now().nanoseconds - t0.nanoseconds) / 1_000_000
            #expect(ms < 3000, "closed after \(ms) ms")
            #expect(eventually(seconds: 3) { s.server.openConnections <= 1 })
        }
    }

    /// Idle timeout right after a response and after a pipelined pair.
    @Test func idleTimeout_AfterQueuedResponses() throws {
        var limits = HTTPLimits()
        limits.idleTimeout = .milliseconds(300)
        try withServer(limits: limits) { s in
            let c = try s.client()
            c.send("GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(c.readResponse()?.bodyText == "GET /a 0")
            #expect(c.readResponse()?.bodyText == "GET /b 0")
            let t0 = Instant.now()
            #expect(c.isClosedByServer())
            let ms = (Instant.now().nanoseconds - t0.nanoseconds) / 1_000_000
            // Not before the 300 ms idle timeout counted from the last response; the upper
            // bound stays under the client's 5 s receive timeout with room for a slow machine.
            #expect(ms >= 200 && ms < 4000, "\(ms) ms")
        }
    }
}

extension QueuedResponseTests {
    /// A continue check refuses a head at once (401), and the head's own deadline passes
    /// before the iteration's write burst: the head timer must not fire meanwhile (the
    /// linger timer is only set once the queued response is flushed) and append a 408
    /// behind the 401 — two final responses to one request.
    @Test func continueRefusal_HeadDeadlineBeforeTheBurst_NoSecond408() throws {
        var limits = HTTPLimits()
        limits.headerTimeout = .milliseconds(600)
        let refusals = Recorder<[Int]>([])
        let check: (HTTPRequest, HTTPResponseWriter) -> Bool = { _, w in
            w.respond(HTTPResponse(status: 401))
            return true
        }
        try withServer(loops: 1, limits: limits, continueCheck: check, onRefusal: { r in
            refusals.update { $0.append(r.error.response.status) }
        }, responder: { req, w in
            if req.path == "/block1" { usleep(300_000) }
            if req.path == "/block2" { usleep(400_000) }
            w.respond(HTTPResponse(status: 200))
        }) { s in
            let x = try s.client(), c1 = try s.client(), c2 = try s.client(), d = try s.client(), e = try s.client()
            x.send("PUT /x HTTP/1.1\r\nHost: h\r\n")  // the head's deadline: now + 600 ms
            usleep(100_000)
            c1.send("GET /block1 HTTP/1.1\r\nHost: h\r\n\r\n")  // loop busy until ~400 ms
            usleep(50_000)
            x.send("Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            usleep(10_000)
            c2.send("GET /block2 HTTP/1.1\r\nHost: h\r\n\r\n")  // after x's event: busy until ~800 ms
            usleep(10_000)
            d.send("GET /d HTTP/1.1\r\nHost: h\r\n\r\n")
            usleep(10_000)
            e.send("GET /e HTTP/1.1\r\nHost: h\r\n\r\n")
            let (data, closed) = x.readUntilClosed()
            let text = String(decoding: data, as: UTF8.self)
            let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
            print("x got statuses \(statuses), closed=\(closed); refusals \(refusals.get)")
            #expect(statuses == ["401"])
            #expect(refusals.get.isEmpty)
        }
    }
}
