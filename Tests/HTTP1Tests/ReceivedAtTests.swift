import EventLoop
import Foundation
import Glibc
import Testing
@testable import HTTP1

/// `HTTPRequest.receivedAt`: when the server had the whole request — the read that
/// completed it — over real sockets.
@Suite struct ReceivedAtTests {
    /// What the responder saw for one request.
    struct Seen: Sendable {
        var path: String
        var receivedAt: Instant?
        var dispatchedAt: Instant
    }

    /// A server whose `/hold` answers after `hold`; every other path at once. Records
    /// each request's `receivedAt` and when it was dispatched.
    /// The first request seen is dated no earlier than `notBefore` (when its last bytes
    /// were sent) and no later than its dispatch.
    private func expectFirstDated(_ seen: Recorder<[Seen]>, notBefore: Instant) throws {
        let one = try #require(seen.get.first)
        let at = try #require(one.receivedAt)
        #expect(at >= notBefore)
        #expect(at <= one.dispatchedAt)
    }

    private func server(hold: Duration = .milliseconds(800)) throws -> (TestServer, Recorder<[Seen]>) {
        let seen = Recorder<[Seen]>([])
        let s = try TestServer(loops: 1, responder: { req, w in
            seen.update { $0.append(Seen(path: req.path, receivedAt: req.receivedAt, dispatchedAt: w.loop.now)) }
            if req.path == "/hold" {
                w.loop.schedule(at: w.loop.now + hold) { w.respond(HTTPResponse(status: 200)) }
            } else {
                w.respond(HTTPResponse(status: 200))
            }
        })
        return (s, seen)
    }

    private func ms(_ a: Instant, _ b: Instant) -> Int64 { (a - b).milliseconds }

    /// Two requests pipelined in one write behind a slow one, then — while the first is
    /// still being answered — the first bytes of a third. The second request was whole
    /// at the first read; it is dated by that read, not by the later read that brought
    /// another request's bytes (which would hold its caller past a budget counted from
    /// its arrival).
    @Test func pipelinedRequest_IsDatedByTheReadThatCompletedIt_NotByALaterRead() throws {
        let (s, seen) = try server()
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 10)
        #expect(c.get("/warm")?.status == 200)
        seen.set([])

        let sent = Instant.now()
        c.send("GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n")
        usleep(400_000)
        c.send("GET /thi")  // part of a third request, while /hold is in progress
        #expect(c.readResponse()?.status == 200)
        #expect(c.readResponse()?.status == 200)
        c.send("rd HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(c.readResponse()?.status == 200)

        let all = seen.get
        #expect(all.map(\.path) == ["/hold", "/second", "/third"])
        guard all.count == 3 else { return }
        let first = try #require(all[0].receivedAt), second = try #require(all[1].receivedAt)
        let third = try #require(all[2].receivedAt)
        print("receivedAt after the send: /hold \(ms(first, sent)) ms, /second \(ms(second, sent)) ms, /third \(ms(third, sent)) ms")
        // Both came in the first write, read (and dated) at the same time.
        #expect(second == first)
        #expect(ms(second, sent) < 300)
        // The third was completed by the last write.
        #expect(ms(third, sent) >= 700)
        #expect(third <= all[2].dispatchedAt)
    }

    /// A head trickled over ~600 ms is dated by its last byte (the client's own
    /// slowness is not part of the server's wait), never after its dispatch.
    @Test func trickledHead_IsDatedByItsLastRead() throws {
        let (s, seen) = try server()
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 10)
        #expect(c.get("/warm")?.status == 200)
        seen.set([])

        c.send("GET /tr")
        usleep(300_000)
        c.send("ickle HTTP/1.1\r\nHo")
        usleep(300_000)
        let last = Instant.now()
        c.send("st: h\r\n\r\n")
        #expect(c.readResponse()?.status == 200)
        try expectFirstDated(seen, notBefore: last)
    }

    /// `Expect: 100-continue`: the head comes first, the body ~300 ms after the `100`.
    /// The request is dated by the body's read.
    @Test func expectContinue_IsDatedByTheBody() throws {
        let (s, seen) = try server()
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 10)
        #expect(c.get("/warm")?.status == 200)
        seen.set([])

        c.send("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        #expect(c.readResponse()?.status == 100)
        usleep(300_000)
        let bodySent = Instant.now()
        c.send("hello")
        #expect(c.readResponse()?.status == 200)
        try expectFirstDated(seen, notBefore: bodySent)
    }

    /// An HTTP/1.0 request (no keep-alive) is dated too.
    @Test func http10Request_IsDated() throws {
        let (s, seen) = try server()
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 10)
        usleep(200_000)  // the accept is handled and the loop waits again
        let before = Instant.now()
        c.send("GET /ten HTTP/1.0\r\n\r\n")
        #expect(c.readResponse()?.status == 200)
        try expectFirstDated(seen, notBefore: before)
    }

    /// The pipelined case on a TLS listener: `/hold` and `/second` in one write, the
    /// start of a third request 400 ms later. `/second` is dated by the read that
    /// decrypted it, as on a plain connection.
    @Test func pipelinedRequest_OnTLS_IsDatedByTheReadThatCompletedIt() throws {
        let dir = try CertificateDirectory()
        defer { dir.remove() }
        let tls = try dir.make("server", commonName: "localhost")
        let seen = Recorder<[Seen]>([])
        let s = try TestServer(loops: 1, tls: tls, responder: { req, w in
            seen.update { $0.append(Seen(path: req.path, receivedAt: req.receivedAt, dispatchedAt: w.loop.now)) }
            if req.path == "/hold" {
                w.loop.schedule(at: w.loop.now + .milliseconds(800)) { w.respond(HTTPResponse(status: 200)) }
            } else {
                w.respond(HTTPResponse(status: 200))
            }
        })
        defer { s.stop() }
        let script = #"""
        import socket, ssl, sys, time
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10))
        time.sleep(0.2)
        sent = time.monotonic_ns()
        s.sendall(b"GET /hold HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.4)
        s.sendall(b"GET /thi")
        data = b""
        while data.count(b"HTTP/1.1 200") < 2:
            data += s.recv(65536)
        s.sendall(b"rd HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print(sent)
        print(data.count(b"HTTP/1.1 200"))
        """#
        let r = try runProcess(["python3", "-W", "ignore", "-c", script, String(s.port)], in: dir.path)
        #expect(r.status == 0, "python: \(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.count == 2 && lines[1] == "3")
        let sent = Instant(nanoseconds: UInt64(lines.first ?? "") ?? 0)
        let all = seen.get
        #expect(all.map(\.path) == ["/hold", "/second", "/third"])
        guard all.count == 3 else { return }
        let first = try #require(all[0].receivedAt), second = try #require(all[1].receivedAt)
        print("TLS receivedAt after the send: /hold \(ms(first, sent)) ms, /second \(ms(second, sent)) ms")
        #expect(ms(second, sent) < 300)
        #expect(ms(all[2].receivedAt!, sent) >= 700)
    }
}
