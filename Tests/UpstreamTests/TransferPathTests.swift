import Dispatch
import EventLoop
import Foundation
import Testing
import TestSupport
@testable import Upstream

/// What the per-transfer fast paths of `UpstreamClient` must keep exact: header lists
/// and request bodies rewritten in place on a reused easy handle, response bodies
/// sized from `Content-Length`, curl's timer kept across deadline changes, and the
/// proxy settings read once from the environment.
@Suite struct TransferPathTests {
    /// Sends `build(now)` on the harness's loop; returns its result and how long it took.
    private func timed(_ h: ClientHarness, _ build: @escaping @Sendable (Instant) -> UpstreamRequest) -> (UpstreamResult, Duration) {
        let start = ContinuousClock.now
        let r = h.send(build)
        return (r, ContinuousClock.now - start)
    }

    /// One handle serves requests with different header sets, methods and bodies in
    /// turn: each request carries exactly its own fields and body, nothing left over.
    @Test func reusedHandle_SendsExactlyEachRequestsHeadersAndBody() throws {
        let up = try ScriptedServer.answering()
        let h = try ClientHarness()
        let url = "http://127.0.0.1:\(up.port)/r"
        let long = String(repeating: "v", count: 700)  // more than the first text buffer
        let big = [UInt8](repeating: UInt8(ascii: "b"), count: 20_000)  // more than the kept body buffer
        let requests: [(String, [(String, String)], [UInt8])] = [
            ("POST", [("X-A", "1"), ("X-Long", long), ("Content-Type", "application/json")], Array("{\"n\":1}".utf8)),
            ("GET", [], []),
            ("GET", [("X-B", "2")], []),
            ("PUT", [("X-C", "3"), ("X-D", "")], big),
            ("POST", [], []),
            ("DELETE", [("X-E", "5")], []),
            ("POST", [("X-F", "6")], Array("small".utf8)),
        ]
        for (method, headers, body) in requests {
            let r = h.send { UpstreamRequest(method: method, url: url, headers: headers, body: body, deadline: $0 + .seconds(5)) }
            #expect(try r.get().status == 200)
        }
        let seen = up.requests
        #expect(seen.count == requests.count)
        #expect(up.connections == 1)
        for (i, (method, headers, body)) in requests.enumerated() where i < seen.count {
            let got = seen[i]
            #expect(got.method == method, "request \(i)")
            #expect(got.body == body, "request \(i)")
            #expect(got.header("expect") == nil, "request \(i)")
            for (n, v) in headers where !v.isEmpty {
                #expect(got.header(n) == v, "request \(i): \(n)")
            }
            // Fields of the other requests are not sent.
            let mine = Set(headers.map { $0.0.lowercased() })
            for other in ["x-a", "x-long", "x-b", "x-c", "x-e", "x-f"] where !mine.contains(other) {
                #expect(got.header(other) == nil, "request \(i) carries \(other)")
            }
            if method == "POST" || method == "PUT" || method == "DELETE" {
                #expect(got.header("content-length") == String(body.count), "request \(i)")
            }
        }
    }

    /// What curl keeps in a reused handle between transfers does not reach the next
    /// one: URL credentials (an `Authorization` line), `HEAD` (`CURLOPT_NOBODY`), a
    /// body, a custom method. With libcurl 7.88 handles were renewed after every
    /// transfer until they were reused with screened heads.
    @Test func reusedHandle_CarriesNoCredentialsMethodOrBodyOver() throws {
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                guard conn.write(req.method == "HEAD" ? head : head + "ok") else { return }
            }
        }
        let h = try ClientHarness()
        let base = "http://127.0.0.1:\(up.port)"
        let requests: [(String, String, [UInt8])] = [
            ("GET", "http://user:secret@127.0.0.1:\(up.port)/cred", []),
            ("GET", base + "/plain", []),
            ("HEAD", base + "/head", []),
            ("GET", base + "/after-head", []),
            ("PATCH", base + "/patch", Array("p".utf8)),
            ("GET", base + "/after-patch", []),
        ]
        for (method, url, body) in requests {
            let r = try h.send { UpstreamRequest(method: method, url: url, body: body, deadline: $0 + .seconds(5)) }.get()
            #expect(r.status == 200 && r.body == (method == "HEAD" ? [] : Array("ok".utf8)), "\(method) \(url)")
        }
        let seen = up.requests
        #expect(seen.map { $0.method } == requests.map { $0.0 })
        guard seen.count == requests.count else { return }
        #expect(seen[0].header("authorization") != nil)
        for i in 1..<seen.count { #expect(seen[i].header("authorization") == nil, "request \(i)") }
        #expect(seen[3].body.isEmpty && seen[3].header("content-length") == nil)
        #expect(seen[4].body == Array("p".utf8))
        #expect(seen[5].body.isEmpty && seen[5].header("content-length") == nil)
    }

    /// A body of several reads arrives complete, with a Content-Length (allocated at
    /// that size) and chunked (grown).
    @Test(arguments: [true, false])
    func largeBody_ArrivesComplete(withLength: Bool) throws {
        let body = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                if withLength {
                    guard conn.write("HTTP/1.1 200 OK\r\ncontent-length:  \(body.count) \r\n\r\n"), conn.write(body) else { return }
                } else {
                    guard conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n") else { return }
                    var i = 0
                    while i < body.count {
                        let n = min(7_000, body.count - i)
                        guard conn.write(String(n, radix: 16) + "\r\n"), conn.write(Array(body[i..<(i + n)])), conn.write("\r\n") else { return }
                        i += n
                    }
                    guard conn.write("0\r\n\r\n") else { return }
                }
            }
        }
        let h = try ClientHarness()
        for _ in 0..<2 {
            let r = h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: $0 + .seconds(10)) }
            let resp = try r.get()
            #expect(resp.body == body)
        }
    }

    /// A Content-Length above the limit is still refused, and a HEAD answer's
    /// Content-Length allocates no body.
    @Test func contentLength_AboveLimitOrWithoutBody() throws {
        let up = try ScriptedServer.answering(body: String(repeating: "x", count: 3000))
        let h = try ClientHarness()
        let url = "http://127.0.0.1:\(up.port)/"
        let tooBig = h.send { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5), maxBodyBytes: 2999) }
        guard case .failure(let f) = tooBig else { Issue.record("expected failure"); return }
        #expect(f.kind == .protocol)
        let head = try h.send { UpstreamRequest(method: "HEAD", url: url, deadline: $0 + .seconds(5)) }.get()
        #expect(head.status == 200)
        #expect(head.body.isEmpty)
        let get = try h.send { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5)) }.get()
        #expect(get.body.count == 3000)
    }

    /// A transfer with an earlier deadline started after one with a later deadline
    /// times out at its own deadline; the first at its own.
    @Test func earlierDeadlineAfterLaterOne_BothTimeOutOnTime() throws {
        let up = try ScriptedServer.answering(delay: .seconds(6))
        let h = try ClientHarness()
        let loop = h.group.loops[0]
        let client = h.client
        let url = "http://127.0.0.1:\(up.port)/"
        let done = DispatchSemaphore(value: 0)
        let times = Times()
        let start = ContinuousClock.now
        loop.execute {
            client.send(UpstreamRequest(method: "GET", url: url, deadline: loop.now + .milliseconds(1500))) { r in
                times.set("late", ContinuousClock.now - start, r); done.signal()
            }
            client.send(UpstreamRequest(method: "GET", url: url, deadline: loop.now + .milliseconds(300))) { r in
                times.set("early", ContinuousClock.now - start, r); done.signal()
            }
        }
        for _ in 0..<2 { _ = done.wait(timeout: .now() + 10) }
        let early = try #require(times.get("early"))
        let late = try #require(times.get("late"))
        #expect(early.0 >= .milliseconds(250) && early.0 < .milliseconds(1200))
        #expect(late.0 >= .milliseconds(1400) && late.0 < .milliseconds(3500))
        #expect(early.1 == .timeout)
        #expect(late.1 == .timeout)
    }

    /// After a short-deadline transfer finished early (its timer may still be armed),
    /// a slow transfer with a later deadline times out at that deadline — not sooner,
    /// and not never.
    @Test func laterDeadlineAfterShortTransferFinished_TimesOutOnTime() throws {
        let fast = try ScriptedServer.answering()
        let slow = try ScriptedServer.answering(delay: .seconds(6))
        let h = try ClientHarness()
        for _ in 0..<2 {
            _ = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(fast.port)/", deadline: $0 + .milliseconds(300)) }.get()
            let (r, elapsed) = timed(h) { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(slow.port)/", deadline: $0 + .milliseconds(900)) }
            guard case .failure(let f) = r else { Issue.record("expected a timeout"); return }
            #expect(f.kind == .timeout)
            #expect(elapsed >= .milliseconds(850) && elapsed < .milliseconds(3000))
        }
    }

    /// A connect that never completes ends at the connect timeout when that is the
    /// earlier bound, and at the attempt's deadline when that is.
    @Test func stalledConnect_EndsAtTheEarlierOfConnectTimeoutAndDeadline() throws {
        let port = try StalledListener()
        let h = try ClientHarness()
        let url = "http://127.0.0.1:\(port.port)/"
        for (connect, deadline) in [(Duration.milliseconds(300), Duration.seconds(4)), (.seconds(5), .milliseconds(400))] {
            let (r, elapsed) = timed(h) { UpstreamRequest(method: "GET", url: url, deadline: $0 + deadline, connectTimeout: connect) }
            guard case .failure(let f) = r else { Issue.record("expected failure"); return }
            #expect(f.kind == .timeout)
            #expect(elapsed >= .milliseconds(250) && elapsed < .milliseconds(2500), "connect \(connect), deadline \(deadline): \(elapsed)")
        }
    }

    /// The proxy variables are picked as libcurl picks them.
    @Test func proxyEnvironment_PicksAsCurlDoes() {
        func env(_ vars: [String: String]) -> ProxyEnvironment { ProxyEnvironment { vars[$0] } }
        #expect(env([:]) == env(["HTTP_PROXY": "http://ignored:1"]))  // never upper-case HTTP_PROXY
        let none = env([:])
        #expect(none.http == "" && none.https == "" && none.noProxy == "")
        let all = env(["ALL_PROXY": "http://all:1", "https_proxy": "http://s:2", "NO_PROXY": "a.example"])
        #expect(all.http == "http://all:1" && all.https == "http://s:2" && all.noProxy == "a.example")
        let lower = env(["all_proxy": "http://lower:1", "ALL_PROXY": "http://upper:1", "HTTPS_PROXY": "http://S:2",
                         "no_proxy": "b.example", "NO_PROXY": "a.example", "http_proxy": "http://h:3"])
        #expect(lower.http == "http://h:3" && lower.https == "http://S:2" && lower.noProxy == "b.example")
        // A variable set to "" counts as unset (curl_getenv).
        let empty = env(["http_proxy": "", "all_proxy": "http://all:1", "no_proxy": "", "NO_PROXY": "c.example"])
        #expect(empty.http == "http://all:1" && empty.https == "http://all:1" && empty.noProxy == "c.example")
    }

        /// A proxy's answer to `CONNECT` (200, then closed; or 407) whose first field line is
    /// folded, on a handle whose previous transfer stored fields (curl #11101 with libcurl
    /// before 8.1.0: CONNECT heads are suppressed there): the tunnel fails cleanly and the
    /// handle goes on serving.
    @Test func foldedConnectAnswer_OnAReusedHandle_FailsCleanly() throws {
        let proxy = try ScriptedServer { conn, server in
            guard let req = conn.readRequest() else { return }
            server.record(req)
            _ = conn.write(server.requests.count % 2 == 1 ? "HTTP/1.1 200 Connection established\r\n\tX: y\r\n\r\n"
                           : "HTTP/1.1 407 Proxy Authentication Required\r\n X: y\r\nContent-Length: 0\r\n\r\n")
            shutdown(conn.fd, Int32(SHUT_WR))
            _ = conn.isClosedByPeer()
        }
        let direct = try ScriptedServer.answering()
        let h = try ClientHarness()
        h.useProxies(["https_proxy": "http://127.0.0.1:\(proxy.port)", "no_proxy": "127.0.0.1"])
        for _ in 0..<2 {
            #expect(try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(direct.port)/d", deadline: $0 + .seconds(5)) }.get().status == 200)
            let tunneled = h.send { UpstreamRequest(method: "GET", url: "https://upstream.invalid/x", deadline: $0 + .seconds(5)) }
            if case .success(let r) = tunneled { Issue.record("expected a failed tunnel, got \(r.status)") }
        }
        #expect(try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(direct.port)/d", deadline: $0 + .seconds(5)) }.get().status == 200)
        #expect(proxy.requests.count == 2 && proxy.requests.allSatisfy { $0.method == "CONNECT" })
    }

    /// Requests go through the configured proxy for their scheme, unless `no_proxy`
    /// covers the host; one handle switches between schemes.
    @Test func proxySettings_AreAppliedPerScheme() throws {
        let proxy = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                guard conn.write("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n") else { return }
            }
        }
        let direct = try ScriptedServer.answering()
        let closed = try ScriptedServer.answering()
        let closedPort = closed.port
        closed.stop()
        let h = try ClientHarness()
        h.useProxies(["https_proxy": "http://127.0.0.1:\(proxy.port)", "no_proxy": "127.0.0.1"])
        // https → the proxy (a CONNECT, refused with 502).
        let viaProxy = h.send { UpstreamRequest(method: "GET", url: "HTTPS://upstream.invalid/x", deadline: $0 + .seconds(5)) }
        if case .success(let r) = viaProxy { Issue.record("expected a failure through the refusing proxy, got \(r.status)") }
        #expect(proxy.requests.first?.method == "CONNECT")
        #expect(proxy.requests.first?.target == "upstream.invalid:443")
        // http → direct (no http proxy configured), on the same handle.
        let r = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(direct.port)/d", deadline: $0 + .seconds(5)) }.get()
        #expect(r.status == 200)
        #expect(direct.requests.first?.target == "/d")
        // https again, to a host no_proxy covers: direct, to a closed port.
        let skipped = h.send { UpstreamRequest(method: "GET", url: "https://127.0.0.1:\(closedPort)/x", deadline: $0 + .seconds(5)) }
        guard case .failure(let f) = skipped else { Issue.record("expected failure"); return }
        #expect(f.kind == .connect)
        #expect(proxy.requests.count == 1)
    }
}

private final class Times: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [String: (Duration, UpstreamFailureKind?)] = [:]
    func set(_ k: String, _ d: Duration, _ r: UpstreamResult) {
        let kind: UpstreamFailureKind? = if case .failure(let f) = r { f.kind } else { nil }
        lock.withLock { values[k] = (d, kind) }
    }
    func get(_ k: String) -> (Duration, UpstreamFailureKind?)? { lock.withLock { values[k] } }
}

/// A listening socket whose accept queue is full (backlog 0, filled, never accepted):
/// the kernel drops further SYNs, so a connect to it neither succeeds nor fails.
private final class StalledListener {
    let port: UInt16
    private var fds: [Int32] = []

    init() throws {
        let l = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_addr.s_addr = inet_addr("127.0.0.1")
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(l, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(l, 0)
        fds.append(l)
        port = Socket.boundPort(l)
        sa.sin_port = port.bigEndian
        // Fill the queue: connects that complete (queued) until one does not.
        for _ in 0..<4 {
            let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            fds.append(c)
        }
        usleep(50_000)
    }

    deinit { for fd in fds { close(fd) } }
}

extension ClientHarness {
    /// Gives the client `variables` as its proxy environment (`https_proxy`, `no_proxy`
    /// …), set on the loop; returns once it is set.
    func useProxies(_ variables: [String: String]) {
        let settings = ProxyEnvironment { variables[$0] }
        let client = self.client
        let set = DispatchSemaphore(value: 0)
        group.loops[0].execute { client.proxies = settings; set.signal() }
        set.wait()
    }
}
