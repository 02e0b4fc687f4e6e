import Dispatch
import EventLoop
import Foundation
import Testing
import TestSupport
import Upstream

/// One loop thread with an `UpstreamClient` on it, for the duration of a test.
final class ClientHarness: @unchecked Sendable {
    let group: EventLoopGroup
    let client: UpstreamClient

    init() throws {
        group = try EventLoopGroup(count: 1)
        let loop = group.loops[0]
        let made = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var c: UpstreamClient?
        loop.execute { c = UpstreamClient(loop: loop); made.signal() }
        made.wait()
        client = c!
    }

    deinit { group.shutdown() }

    /// Sends `build(now)` on the loop and waits for its result.
    func send(_ build: @escaping @Sendable (Instant) -> UpstreamRequest) -> UpstreamResult {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: UpstreamResult?
        let client = self.client
        group.loops[0].execute {
            client.send(build(client.loop.now)) { r in result = r; done.signal() }
        }
        _ = done.wait(timeout: .now() + 20)
        return result!
    }

    /// Sends every request of `build(now)` on the loop in one go (all in flight at
    /// once) and waits for their results, in the order of the requests.
    func sendAll(_ build: @escaping @Sendable (Instant) -> [UpstreamRequest]) -> [UpstreamResult?] {
        let done = DispatchSemaphore(value: 0)
        let lock = NSLock()
        nonisolated(unsafe) var results: [UpstreamResult?] = []
        nonisolated(unsafe) var count = 0
        let client = self.client
        group.loops[0].execute {
            let requests = build(client.loop.now)
            lock.withLock { results = Array(repeating: nil, count: requests.count); count = requests.count }
            for (i, r) in requests.enumerated() {
                client.send(r) { result in
                    lock.withLock { results[i] = result }
                    done.signal()
                }
            }
            done.signal()
        }
        _ = done.wait(timeout: .now() + 20)
        for _ in 0..<lock.withLock({ count }) { _ = done.wait(timeout: .now() + 20) }
        return lock.withLock { results }
    }

    /// `client.parsedURLCount`, read on the loop.
    var parsedURLCount: Int { onLoop { $0.parsedURLCount } }

    /// Number of transfers in flight, read on the loop.
    var activeTransfers: Int { onLoop { $0.activeTransfers } }

    /// `read(client)`, run on the client's loop thread.
    private func onLoop(_ read: @escaping @Sendable (UpstreamClient) -> Int) -> Int {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var n = 0
        let client = self.client
        group.loops[0].execute { n = read(client); done.signal() }
        done.wait()
        return n
    }
}

@Suite struct UpstreamClientTests {
    /// A GET returns the upstream's status, headers and body.
    @Test func get_ReturnsStatusHeadersAndBody() throws {
        let up = try ScriptedServer.answering(status: 201, body: "{\"a\":1}", headers: [("X-Test", "yes")])
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/x", deadline: $0 + .seconds(5)) }
        let resp = try r.get()
        #expect(resp.status == 201)
        #expect(resp.header("x-test") == "yes")
        #expect(String(decoding: resp.body, as: UTF8.self) == "{\"a\":1}")
        #expect(h.activeTransfers == 0)
    }

    /// A POST sends its method, headers and body to the upstream, without `Expect: 100-continue`.
    @Test func post_SendsHeadersAndBody() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        let body = Array("{\"amount\":42}".utf8)
        _ = try h.send { UpstreamRequest(method: "POST", url: "http://127.0.0.1:\(up.port)/payments", headers: [("Idempotency-Key", "k1"), ("Content-Type", "application/json")], body: body, deadline: $0 + .seconds(5)) }.get()
        let req = try #require(up.requests.first)
        #expect(req.method == "POST")
        #expect(req.target == "/payments")
        #expect(req.header("idempotency-key") == "k1")
        #expect(req.header("expect") == nil)
        #expect(req.body == body)
    }

    /// A route's own `Content-Type` is sent as given; a POST without one — with a body
    /// or without — carries none, rather than curl's `application/x-www-form-urlencoded`.
    @Test func contentType_OnlyTheRoutesOwn() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        let url = "http://127.0.0.1:\(up.port)/c"
        _ = try h.send { UpstreamRequest(method: "POST", url: url, deadline: $0 + .seconds(5)) }.get()
        _ = try h.send { UpstreamRequest(method: "POST", url: url, body: Array("a=1".utf8), deadline: $0 + .seconds(5)) }.get()
        _ = try h.send { UpstreamRequest(method: "PUT", url: url, headers: [("content-TYPE", "text/plain")], body: Array("x".utf8), deadline: $0 + .seconds(5)) }.get()
        let reqs = up.requests
        try #require(reqs.count == 3)
        #expect(reqs[0].header("content-type") == nil)
        #expect(reqs[0].header("content-length") == "0")
        #expect(reqs[0].header("expect") == nil)
        #expect(reqs[1].header("content-type") == nil)
        #expect(reqs[1].body == Array("a=1".utf8))
        #expect(reqs[2].header("content-type") == "text/plain")
        #expect(reqs[2].method == "PUT")
    }

    /// PUT and DELETE use their own method names.
    @Test func customMethod_IsSent() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        _ = try h.send { UpstreamRequest(method: "DELETE", url: "http://127.0.0.1:\(up.port)/r/1", deadline: $0 + .seconds(5)) }.get()
        #expect(up.requests.first?.method == "DELETE")
    }

    /// Sequential requests to one upstream reuse a single kept-alive connection.
    @Test func sequentialRequests_ReuseConnection() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        for _ in 0..<5 {
            _ = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(5)) }.get()
        }
        #expect(up.requests.count == 5)
        #expect(up.connections == 1)
    }

    /// One pooled handle serving one URL after another (given to curl parsed, and
    /// parsed again only when the text changes) reaches each URL's own upstream, path
    /// and query, also when a URL comes back after another.
    @Test func changingURLs_EachReachesItsOwnTarget() throws {
        let a = try ScriptedServer.answering(body: "{\"from\":\"a\"}")
        let b = try ScriptedServer.answering(body: "{\"from\":\"b\"}")
        let h = try ClientHarness()
        let urls = ["http://127.0.0.1:\(a.port)/one?x=1", "http://127.0.0.1:\(b.port)/two", "http://127.0.0.1:\(b.port)/two",
                    "http://127.0.0.1:\(a.port)/one?x=1", "http://127.0.0.1:\(a.port)/three?y=%20"]
        for url in urls {
            let r = try h.send { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5)) }.get()
            let from = url.contains(":\(a.port)/") ? "a" : "b"
            #expect(String(decoding: r.body, as: UTF8.self) == "{\"from\":\"\(from)\"}", "\(url)")
        }
        #expect(a.requests.map(\.target) == ["/one?x=1", "/one?x=1", "/three?y=%20"])
        #expect(b.requests.map(\.target) == ["/two", "/two"])
    }

    /// Transfers in flight together to a few URLs (a fan-out's legs, again and again)
    /// share one parsed URL per text: each reaches its own upstream and target, and
    /// the client keeps exactly those URLs parsed.
    @Test func fanOutLegs_ShareParsedURLs_EachReachesItsTarget() throws {
        let servers = try (0..<3).map { _ in try ScriptedServer.echoingTarget() }
        let h = try ClientHarness()
        let urls = servers.enumerated().map { i, s in "http://127.0.0.1:\(s.port)/leg\(i)?n=\(i)" }
        for _ in 0..<4 {
            let results = h.sendAll { now in urls.map { UpstreamRequest(method: "GET", url: $0, deadline: now + .seconds(10)) } }
            for (i, r) in results.enumerated() {
                let body = try #require(try r?.get().body, "leg \(i)")
                #expect(String(decoding: body, as: UTF8.self) == "\(servers[i].port) /leg\(i)?n=\(i)")
            }
        }
        #expect(h.parsedURLCount == 3)
        for (i, s) in servers.enumerated() { #expect(s.requests.map(\.target) == Array(repeating: "/leg\(i)?n=\(i)", count: 4)) }
        #expect(h.activeTransfers == 0)
    }

    /// More distinct URLs than the client keeps parsed, many in flight at once: when
    /// the cache starts over, transfers still holding a URL it let go of reach their
    /// own targets, and the cache never keeps more than `parsedURLCapacity`.
    @Test func moreURLsThanKept_EachStillReachesItsTarget() throws {
        let up = try ScriptedServer.echoingTarget()
        let h = try ClientHarness()
        let n = UpstreamClient.parsedURLCapacity + 40
        for round in 0..<2 {
            let results = h.sendAll { now in
                (0..<n).map { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/item/\($0)", deadline: now + .seconds(10)) }
            }
            #expect(results.count == n)
            for (i, r) in results.enumerated() {
                let body = try #require(try r?.get().body, "round \(round), URL \(i)")
                #expect(String(decoding: body, as: UTF8.self) == "\(up.port) /item/\(i)")
            }
            #expect(h.parsedURLCount <= UpstreamClient.parsedURLCapacity)
            #expect(h.parsedURLCount > 0)
        }
        #expect(up.requests.count == 2 * n)
    }

    /// A URL longer than the client keeps parsed (2048 bytes) is parsed for its
    /// transfer only, every time it is used, and still reaches its target.
    @Test func longURL_ReachesItsTarget_AndIsNotKept() throws {
        let up = try ScriptedServer.echoingTarget()
        let h = try ClientHarness()
        let path = "/long/" + String(repeating: "x", count: 3000)
        for _ in 0..<2 {
            let r = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)\(path)", deadline: $0 + .seconds(10)) }.get()
            #expect(String(decoding: r.body, as: UTF8.self) == "\(up.port) \(path)")
        }
        #expect(h.parsedURLCount == 0)
        _ = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/short", deadline: $0 + .seconds(10)) }.get()
        #expect(h.parsedURLCount == 1)
    }

    /// "/café" with a precomposed é (C3 A9) and with a combining accent (65 CC 81) are
    /// equal Swift strings but different URLs on the wire: in flight together (two
    /// handles) or one after the other (one handle), each reaches its own bytes.
    @Test func canonicallyEquivalentURLs_EachReachesItsOwnBytes() throws {
        let up = try ScriptedServer.echoingTarget()
        let h = try ClientHarness()
        let nfc = "http://127.0.0.1:\(up.port)/caf\u{E9}", nfd = "http://127.0.0.1:\(up.port)/cafe\u{301}"
        #expect(nfc == nfd && Array(nfc.utf8) != Array(nfd.utf8))
        // curl percent-encodes the bytes it sends.
        let together = h.sendAll { now in [nfc, nfd].map { UpstreamRequest(method: "GET", url: $0, deadline: now + .seconds(10)) } }
        #expect(try together.map { String(decoding: try #require($0).get().body, as: UTF8.self) }
                == ["\(up.port) /caf%c3%a9", "\(up.port) /cafe%cc%81"])
        for url in [nfc, nfd, nfc] {
            _ = try h.send { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(10)) }.get()
        }
        #expect(up.requests.suffix(3).map(\.target) == ["/caf%c3%a9", "/cafe%cc%81", "/caf%c3%a9"])
        #expect(h.parsedURLCount == 2)
    }

    /// A URL curl cannot parse fails the attempt as `protocol` without a connection,
    /// and the handle serves the next, valid, URL.
    @Test func malformedURL_IsProtocolFailure_AndTheHandleServesTheNext() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        for bad in ["http://[::1/x", "http://127.0.0.1:99999/", ""] {
            let r = h.send { UpstreamRequest(method: "GET", url: bad, deadline: $0 + .seconds(5)) }
            guard case .failure(let f) = r else { Issue.record("expected a failure for \(bad)"); continue }
            #expect(f.kind == .protocol, "\(bad)")
            #expect(f.message.contains("URL"), "\(bad): \(f.message)")
        }
        _ = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/ok", deadline: $0 + .seconds(5)) }.get()
        #expect(up.requests.map(\.target) == ["/ok"])
        #expect(h.activeTransfers == 0)
        #expect(h.parsedURLCount == 1)  // only the valid one is kept
    }

    /// An upstream slower than the deadline yields a `timeout` failure at the deadline.
    @Test func slowUpstream_TimesOutAtDeadline() throws {
        let up = try ScriptedServer.answering(delay: .seconds(3))
        let h = try ClientHarness()
        let start = ContinuousClock.now
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .milliseconds(200)) }
        let elapsed = ContinuousClock.now - start
        guard case .failure(let f) = r else { Issue.record("expected failure"); return }
        #expect(f.kind == .timeout)
        #expect(elapsed < .seconds(2))
    }

    /// A refused connection yields a `connect` failure.
    @Test func refusedConnection_IsConnectFailure() throws {
        let up = try ScriptedServer.answering()
        let port = up.port
        up.stop()
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(port)/", deadline: $0 + .seconds(5)) }
        guard case .failure(let f) = r else { Issue.record("expected failure"); return }
        #expect(f.kind == .connect)
    }

    /// Garbage instead of an HTTP response yields a `protocol` failure.
    @Test func garbageResponse_IsProtocolFailure() throws {
        let up = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            conn.write("this is not http\r\n\r\n")
            shutdown(conn.fd, Int32(SHUT_RDWR))  // the descriptor itself is closed once, by RawConnection
        }
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(5)) }
        guard case .failure(let f) = r else { Issue.record("expected failure, got \(r)"); return }
        #expect(f.kind == .protocol)
    }

    /// A connection closed mid-body yields a `protocol` failure.
    @Test func closeMidBody_IsProtocolFailure() throws {
        let up = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial\":")
            shutdown(conn.fd, Int32(SHUT_RDWR))
        }
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(5)) }
        guard case .failure(let f) = r else { Issue.record("expected failure"); return }
        #expect(f.kind == .protocol)
    }

    /// A body larger than `maxBodyBytes` is refused as `protocol`, with or without Content-Length.
    @Test(arguments: [true, false])
    func oversizedBody_IsProtocolFailure(withLength: Bool) throws {
        let up = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            let body = String(repeating: "x", count: 5000)
            if withLength {
                conn.write("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n\(body)")
            } else {
                conn.write("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n\(body)")
                shutdown(conn.fd, Int32(SHUT_RDWR))  // the descriptor itself is closed once, by RawConnection
            }
        }
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(5), maxBodyBytes: 1000) }
        guard case .failure(let f) = r else { Issue.record("expected failure"); return }
        #expect(f.kind == .protocol)
        #expect(h.activeTransfers == 0)
    }

    /// Three transfers on one loop are in flight at once, not one after another: the
    /// upstream answers none of them until it holds all three requests.
    @Test func concurrentTransfers_RunInParallel() throws {
        let meeting = Rendezvous(parties: 3)
        let up = try ScriptedServer.answering(meeting: meeting)
        let h = try ClientHarness()
        let loop = h.group.loops[0]
        let client = h.client
        let done = DispatchSemaphore(value: 0)
        let lock = NSLock()
        nonisolated(unsafe) var succeeded = 0
        loop.execute {
            for _ in 0..<3 {
                client.send(UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: loop.now + .seconds(20))) { r in
                    if case .success(let response) = r, response.status == 200 { lock.withLock { succeeded += 1 } }
                    done.signal()
                }
            }
        }
        for _ in 0..<3 { _ = done.wait(timeout: .now() + 30) }
        #expect(meeting.everyPartyMet)
        #expect(up.requests.count == 3)
        #expect(lock.withLock { succeeded } == 3)
    }
}
