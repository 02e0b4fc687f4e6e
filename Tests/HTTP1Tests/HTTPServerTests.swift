import EventLoop
import Glibc
import Testing
@testable import HTTP1

@Suite struct HTTPServerTests {
    /// Several requests are answered on one keep-alive connection, which stays open.
    @Test func server_KeepsConnectionOpen_WhenRequestsAreKeepAlive() throws {
        try withServer { s in
            let c = try s.client()
            for path in ["/a", "/b", "/c"] {
                let r = try #require(c.get(path))
                #expect(r.status == 200)
                #expect(r.bodyText == "GET \(path) 0")
                #expect(r.headers["Connection"] == nil)
                #expect(r.headers["Date"] != nil)
            }
            #expect(s.server.openConnections == 1)
        }
    }

    /// Three requests in one write are answered in order, even when the first answers late.
    @Test func server_AnswersInOrder_WhenRequestsArePipelined() throws {
        try withServer { s in
            let c = try s.client()
            c.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"
                + "POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                + "GET /three HTTP/1.1\r\nHost: h\r\n\r\n")
            let bodies = (0..<3).map { _ in c.readResponse()?.bodyText }
            #expect(bodies == ["slow 0", "POST /two 3", "GET /three 0"])
        }
    }

    /// A chunked request body reaches the responder de-chunked.
    @Test func server_DechunksBody_WhenRequestIsChunked() throws {
        try withServer { s in
            let c = try s.client()
            c.send("POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n")
            let r = try #require(c.readResponse())
            #expect(r.bodyText == "POST /c 11")
            #expect(c.get("/after")?.status == 200)
        }
    }

    /// `Expect: 100-continue` gets `100 Continue` before the body is sent, then the final response.
    @Test func server_Sends100Continue_BeforeReadingBody() throws {
        try withServer { s in
            let c = try s.client()
            c.send("PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            let interim = try #require(c.readResponse())
            #expect(interim.status == 100)
            c.send("data")
            let r = try #require(c.readResponse())
            #expect(r.status == 200)
            #expect(r.bodyText == "PUT /u 4")
        }
    }

    /// A continue check sees the head (body empty) before `100 Continue`: a refusal goes out
    /// instead — no `100`, the body never read, the connection closed after it — while a
    /// head it lets through gets `100` and reaches the responder with its body.
    @Test func continueCheck_AnswersFromTheHead_OrLetsTheBodyCome() throws {
        let check: (HTTPRequest, HTTPResponseWriter) -> Bool = { head, w in
            #expect(head.body.isEmpty)
            guard head.path == "/locked" else { return false }
            w.respond(HTTPResponse(status: 401, body: Array("no \(head.method) \(head.headers["x-n"] ?? "")".utf8)))
            return true
        }
        try withServer(continueCheck: check) { s in
            let refused = try s.client()
            refused.send("PUT /locked HTTP/1.1\r\nHost: h\r\nX-N: 7\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            let r = try #require(refused.readResponse())
            #expect(r.status == 401)
            #expect(r.bodyText == "no PUT 7")
            #expect(r.headers["Connection"]?.lowercased() == "close")
            #expect(refused.isClosedByServer())

            let let_through = try s.client()
            let_through.send("PUT /open HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            #expect(let_through.readResponse()?.status == 100)
            let_through.send("data")
            let ok = try #require(let_through.readResponse())
            #expect(ok.status == 200)
            #expect(ok.bodyText == "PUT /open 4")
            // Without Expect the check is not asked: the request goes straight to the responder.
            #expect(let_through.get("/locked")?.status == 200)
        }
    }

    /// A connection refused from the head closes under the linger timer like any other
    /// refused one, also while the client keeps its end open (or goes on sending).
    @Test func continueCheck_RefusedConnection_ClosesWhileTheClientHoldsIt() throws {
        let check: (HTTPRequest, HTTPResponseWriter) -> Bool = { _, w in
            w.respond(HTTPResponse(status: 401))
            return true
        }
        try withServer(continueCheck: check) { s in
            let held = try (0..<3).map { _ in try s.client() }
            for c in held {
                c.send("POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 500\r\n\r\n")
                #expect(c.readResponse()?.status == 401)
                c.send("part of the body")
            }
            // The clients never close; the server's linger (2 s) must.
            #expect(eventually(seconds: 8) { s.server.openConnections == 0 }, "\(s.server.openConnections) open")
            withExtendedLifetime(held) {}
        }
    }

    /// A continue check may answer later (after a timer); the connection waits for it.
    @Test func continueCheck_MayAnswerLater() throws {
        let check: (HTTPRequest, HTTPResponseWriter) -> Bool = { _, w in
            w.loop.schedule(at: w.loop.now + .milliseconds(30)) { w.respond(HTTPResponse(status: 404)) }
            return true
        }
        try withServer(continueCheck: check) { s in
            let c = try s.client()
            c.send("POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            #expect(c.readResponse()?.status == 404)
            #expect(c.isClosedByServer())
        }
    }

    /// `Expect: 100-continue` with a body over the limit gets 413 (no 100) and the connection closes.
    @Test func server_Sends413AndCloses_WhenExpectedBodyIsTooLarge() throws {
        try withServer(limits: HTTPLimits(bodyBytes: 10)) { s in
            let c = try s.client()
            c.send("PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n")
            let r = try #require(c.readResponse())
            #expect(r.status == 413)
            #expect(c.isClosedByServer())
        }
    }

    /// A HEAD response has the GET body's Content-Length but no body, and the connection stays usable.
    @Test func server_SendsHeadersWithoutBody_WhenMethodIsHEAD() throws {
        try withServer { s in
            let c = try s.client()
            c.send("HEAD /x HTTP/1.1\r\nHost: h\r\n\r\nGET /y HTTP/1.1\r\nHost: h\r\n\r\n")
            let head = try #require(c.readResponse(head: true))
            #expect(head.status == 200)
            #expect(head.headers["Content-Length"] == String("HEAD /x 0".utf8.count))
            let next = try #require(c.readResponse())
            #expect(next.bodyText == "GET /y 0")
        }
    }

    /// Every framing rule is answered live with its status and a problem body, then the connection closes.
    @Test(arguments: FramingCase.all)
    func server_RejectsAndCloses_WhenFramingIsInvalid(_ fc: FramingCase) throws {
        try withServer(limits: fc.limits) { s in
            let c = try s.client()
            c.send(fc.raw)
            let r = try #require(c.readResponse())
            #expect(r.status == fc.error.status)
            #expect(r.headers["Content-Type"] == "application/problem+json")
            #expect(r.headers["Connection"] == "close")
            #expect(r.bodyText.contains("\"status\":\(fc.error.status)"))
            #expect(c.isClosedByServer())
        }
    }

    /// A head that is not complete within `headerTimeout` gets 408 and the connection closes.
    @Test func server_Sends408AndCloses_WhenHeadIsTooSlow() throws {
        try withServer(limits: HTTPLimits(headerTimeout: .milliseconds(300))) { s in
            let c = try s.client()
            c.send("GET / HTTP/1.1\r\nHo")
            let r = try #require(c.readResponse())
            #expect(r.status == 408)
            #expect(c.isClosedByServer())
        }
    }

    /// A body that stalls for longer than `idleTimeout` gets 408 and the connection closes.
    @Test func server_Sends408AndCloses_WhenBodyStalls() throws {
        try withServer(limits: HTTPLimits(idleTimeout: .milliseconds(300))) { s in
            let c = try s.client()
            c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
            let r = try #require(c.readResponse())
            #expect(r.status == 408)
            #expect(c.isClosedByServer())
        }
    }

    /// A keep-alive connection with no new request within `idleTimeout` is closed without a response.
    @Test func server_ClosesSilently_WhenIdleTimeoutPasses() throws {
        try withServer(limits: HTTPLimits(idleTimeout: .milliseconds(300))) { s in
            let c = try s.client()
            #expect(c.get("/")?.status == 200)
            let (data, closed) = c.readUntilClosed()
            #expect(closed)
            #expect(data.isEmpty)
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// A new connection that sends nothing within `headerTimeout` is closed without a response.
    @Test func server_ClosesSilently_WhenNewConnectionSendsNothing() throws {
        try withServer(limits: HTTPLimits(headerTimeout: .milliseconds(300))) { s in
            let c = try s.client()
            let (data, closed) = c.readUntilClosed()
            #expect(closed)
            #expect(data.isEmpty)
        }
    }

    /// Beyond `maxConnections` a new connection gets a 503 and is closed; the admitted one
    /// keeps working. The refusal is reported to `onRefusal` once, on the accepting loop:
    /// `tooManyConnections` (503), no method or path, its 503 sent (`answered`, the
    /// problem body's bytes).
    @Test func server_Refuses503AndReportsIt_WhenMaxConnectionsReached() throws {
        let refusals = Recorder<[HTTPRefusal]>([])
        let onLoop = Recorder<Bool>(false)
        try withServer(limits: HTTPLimits(maxConnections: 1), onRefusal: { r in
            onLoop.set(r.loop.inEventLoop)
            refusals.update { $0.append(r) }
        }) { s in
            let a = try s.client()
            #expect(a.get("/a")?.status == 200)
            let b = try s.client()
            b.send("GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
            let (data, closed) = b.readUntilClosed()
            #expect(closed)
            let text = String(decoding: data, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 503 "))
            #expect(eventually { refusals.get.count == 1 })
            let r = try #require(refusals.get.first)
            #expect(r.error == .tooManyConnections && r.error.status == 503)
            #expect(r.method == nil && r.path == nil)
            #expect(r.answered && r.detail == "too many open connections")
            let body = text.components(separatedBy: "\r\n\r\n").last ?? ""
            #expect(r.bytes == body.utf8.count && r.bytes > 0)
            #expect(onLoop.get)
            #expect(a.get("/a2")?.status == 200)
            #expect(s.server.openConnections == 1)
            #expect(refusals.get.count == 1)
        }
    }

    /// A responder that answers after a 50 ms loop timer is waited for.
    @Test func server_WaitsForResponse_WhenResponderAnswersLater() throws {
        try withServer { s in
            let c = try s.client()
            let r = try #require(c.get("/slow"))
            #expect(r.bodyText == "slow 0")
            #expect(c.get("/after")?.status == 200)
        }
    }

    /// When the client goes away before a late response, the writer reports closed, the response is ignored and the descriptor is released.
    @Test func server_IgnoresLateResponse_WhenClientClosedFirst() throws {
        let wasOpen = Recorder<Bool?>(nil)
        try withServer(responder: { _, w in
            w.loop.schedule(at: w.loop.now + .milliseconds(200)) {
                wasOpen.set(w.isOpen)
                w.respond(HTTPResponse(status: 200))
            }
        }) { s in
            do {
                let c = try s.client()
                c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                #expect(eventually { s.server.openConnections == 1 })
            } // the client closes here
            #expect(eventually { wasOpen.get != nil })
            #expect(wasOpen.get == false)
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// `Connection: close` is honoured: the response says so and the connection closes.
    @Test func server_ClosesAfterResponse_WhenConnectionCloseRequested() throws {
        try withServer { s in
            let c = try s.client()
            let r = try #require(c.get("/", headers: "Connection: close\r\n"))
            #expect(r.status == 200)
            #expect(r.headers["Connection"] == "close")
            #expect(c.isClosedByServer())
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// HTTP/1.0 closes by default and stays open with `Connection: keep-alive`.
    @Test func server_FollowsHTTP10Persistence_WhenKeepAliveAskedOrNot() throws {
        try withServer { s in
            let plain = try s.client()
            plain.send("GET /p HTTP/1.0\r\n\r\n")
            #expect(plain.readResponse()?.headers["Connection"] == "close")
            #expect(plain.isClosedByServer())

            let kept = try s.client()
            kept.send("GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            #expect(kept.readResponse()?.headers["Connection"] == "keep-alive")
            kept.send("GET /k2 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            #expect(kept.readResponse()?.bodyText == "GET /k2 0")
        }
    }

    /// `closeIdleConnections` closes an idle keep-alive connection at once and a busy one after its response.
    @Test func server_ClosesIdleAndDrainsBusy_WhenCloseIdleConnectionsCalled() throws {
        let held = Recorder<HTTPResponseWriter?>(nil)
        try withServer(responder: { req, w in
            if req.path == "/hold" { held.set(w) } else { w.respond(HTTPResponse(status: 200)) }
        }) { s in
            let idle = try s.client()
            #expect(idle.get("/")?.status == 200)
            let busy = try s.client()
            busy.send("GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
            #expect(eventually { held.get != nil })
            s.server.closeIdleConnections()
            #expect(idle.isClosedByServer())
            held.get?.respond(HTTPResponse(status: 202))
            let r = try #require(busy.readResponse())
            #expect(r.status == 202)
            #expect(r.headers["Connection"] == "close")
            #expect(busy.isClosedByServer())
            #expect(eventually { s.server.openConnections == 0 })
            // The responder captures `held`: a writer left there would keep its
            // connection, and through it the server's loop state, alive for good.
            held.set(nil)
        }
    }

    /// After `stopAccepting` new connections are refused while open ones keep working.
    @Test func server_RefusesNewConnections_WhenStopAcceptingCalled() throws {
        try withServer(loops: 2) { s in
            let c = try s.client()
            #expect(c.get("/")?.status == 200)
            s.server.stopAccepting()
            #expect(throws: SystemError.self) { _ = try s.client() }
            #expect(c.get("/again")?.status == 200)
        }
    }

    /// `shutdown` closes every connection, including one whose response is pending.
    @Test func server_ClosesAllConnections_WhenShutdown() throws {
        let s = try TestServer(responder: { req, w in
            if req.path != "/hold" { w.respond(HTTPResponse(status: 200)) }
        })
        defer { s.group.shutdown() }
        let a = try s.client()
        #expect(a.get("/")?.status == 200)
        let b = try s.client()
        b.send("GET /hold HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(eventually { s.server.openConnections == 2 })
        s.server.shutdown()
        #expect(s.server.openConnections == 0)
        #expect(a.isClosedByServer())
        #expect(b.isClosedByServer())
    }

    /// A response larger than the socket buffer is written completely (EAGAIN path) and the connection stays usable.
    @Test func server_WritesWholeResponse_WhenLargerThanSocketBuffer() throws {
        try withServer { s in
            let c = try s.client()
            let r = try #require(c.get("/big?4000000"))
            #expect(r.body.count == 4_000_000)
            #expect(r.body.allSatisfy { $0 == UInt8(ascii: "x") })
            #expect(c.get("/after")?.bodyText == "GET /after 0")
        }
    }

    /// A large request body arriving over many reads is buffered whole.
    @Test func server_ReceivesWholeBody_WhenSentInManyReads() throws {
        try withServer { s in
            let c = try s.client()
            let n = 900_000
            c.send(Array("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: \(n)\r\n\r\n".utf8) + [UInt8](repeating: 0x61, count: n))
            #expect(c.readResponse()?.bodyText == "POST /up \(n)")
        }
    }

    /// With two loops, one port serves many clients and the open count returns to zero once they leave.
    @Test func server_ServesManyClients_WhenSeveralLoopsShareThePort() throws {
        try withServer(loops: 2) { s in
            var clients: [TestClient] = []
            for i in 0..<20 {
                let c = try s.client()
                #expect(c.get("/\(i)")?.bodyText == "GET /\(i) 0")
                clients.append(c)
            }
            #expect(s.server.openConnections == 20)
            clients.removeAll()
            #expect(eventually { s.server.openConnections == 0 })
        }
    }

    /// While the client waits, the writer reports the connection open, before and after responding.
    @Test func writer_ReportsOpen_WhileClientWaits() throws {
        let seen = Recorder<[Bool]>([])
        try withServer(responder: { _, w in
            w.loop.schedule(at: w.loop.now + .milliseconds(50)) {
                seen.update { $0.append(w.isOpen) }
                w.respond(HTTPResponse(status: 204))
                seen.update { $0.append(w.isOpen) }
            }
        }) { s in
            let c = try s.client()
            #expect(c.get("/")?.status == 204)
            // The second observation runs just after the response is handed to the socket.
            #expect(eventually { seen.get.count == 2 })
            #expect(seen.get == [true, true])
        }
    }

    /// A second `respond` for the same request is ignored; the connection goes on normally.
    @Test func server_IgnoresSecondResponse_WhenResponderAnswersTwice() throws {
        try withServer(responder: { req, w in
            w.respond(HTTPResponse(status: 200, body: Array(req.path.utf8)))
            w.respond(HTTPResponse(status: 500, body: Array("again".utf8)))
        }) { s in
            let c = try s.client()
            #expect(c.get("/one")?.bodyText == "/one")
            #expect(c.get("/two")?.bodyText == "/two")
        }
    }

    /// A client that leaves in the middle of a request head gets no response and its descriptor is released.
    @Test func server_ClosesSilently_WhenClientLeavesMidRequest() throws {
        let calls = Recorder(0)
        try withServer(responder: { _, w in
            calls.update { $0 += 1 }
            w.respond(HTTPResponse(status: 200))
        }) { s in
            do {
                let c = try s.client()
                c.send("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")
                #expect(eventually { s.server.openConnections == 1 })
            }
            #expect(eventually { s.server.openConnections == 0 })
            #expect(calls.get == 0)
        }
    }

    /// A responder may answer from another thread; the answer is carried to the loop.
    @Test func server_DeliversResponse_WhenRespondCalledOffLoop() throws {
        try withServer(responder: { _, w in
            Thread.detach { w.respond(HTTPResponse(status: 200, body: Array("off-loop".utf8))) }
        }) { s in
            let c = try s.client()
            #expect(c.get("/")?.bodyText == "off-loop")
        }
    }
}

/// Starts a detached POSIX thread (tests only).
enum Thread {
    static func detach(_ body: @escaping @Sendable () -> Void) {
        final class Box: @unchecked Sendable { let f: @Sendable () -> Void; init(_ f: @escaping @Sendable () -> Void) { self.f = f } }
        let arg = Unmanaged.passRetained(Box(body)).toOpaque()
        var t = pthread_t()
        pthread_create(&t, nil, { p in
            Unmanaged<Box>.fromOpaque(p!).takeRetainedValue().f()
            return nil
        }, arg)
        pthread_detach(t)
    }
}
