import Foundation
import Glibc
import TestSupport
import Testing

/// A misbehaving upstream, the status and error kind the caller must get, and
/// the route's step timeout.
struct UpstreamFault: Sendable, CustomTestStringConvertible {
    let name: String
    let status: Int
    let error: String
    /// What the upstream does with each connection (nil: nothing listens).
    let behaviour: (@Sendable (RawConnection) -> Void)?
    var testDescription: String { name }
}

/// Blocks until the peer (the gateway's curl) closes or resets the connection.
private func waitForPeerClose(_ c: RawConnection) {
    c.setTimeout(.seconds(20))
    _ = c.isClosedByPeer()
}

/// Closes the socket with a reset (SO_LINGER 0) while keeping the descriptor
/// number valid (it becomes /dev/null), so RawConnection's own close stays safe.
private func reset(_ c: RawConnection) {
    var l = linger(l_onoff: 1, l_linger: 0)
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    let null = open("/dev/null", O_RDWR)
    dup2(null, c.fd)
    close(null)
}

/// The faulty route's step deadline: 1 s, or 5 s under a sanitizer (`make test-tsan` /
/// `test-asan` set SWITCHBOARD_SANITIZER), whose slowdown would otherwise let a 10 MB body
/// or a garbled answer run into the deadline (504) before it is recognised (502).
private let stepTimeoutSeconds = ProcessInfo.processInfo.environment["SWITCHBOARD_SANITIZER"] == nil ? 1.0 : 5.0
private let stepTimeout = "\(Int(stepTimeoutSeconds))s"
let upstreamBodyLimit = 64 * 1024

let upstreamFaults: [UpstreamFault] = [
    UpstreamFault(name: "accepts and never answers", status: 504, error: "timeout") { c in
        _ = c.readRequest()
        waitForPeerClose(c)
    },
    UpstreamFault(name: "sends headers then stalls", status: 504, error: "timeout") { c in
        _ = c.readRequest()
        c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":")
        waitForPeerClose(c)
    },
    UpstreamFault(name: "resets mid-body", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":")
        usleep(50_000)
        reset(c)
    },
    UpstreamFault(name: "drips one byte a second", status: 504, error: "timeout") { c in
        _ = c.readRequest()
        for b in Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".utf8) {
            if !c.write([b]) { return }
            sleep(1)
        }
    },
    UpstreamFault(name: "endless chunked body", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        guard c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n") else { return }
        let chunk = "1000\r\n" + String(repeating: " ", count: 4096) + "\r\n"
        for _ in 0..<10_000 where c.write(chunk) {}
    },
    UpstreamFault(name: "endless close-delimited body", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        guard c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n") else { return }
        let block = String(repeating: " ", count: 8192)
        for _ in 0..<5_000 where c.write(block) {}
    },
    UpstreamFault(name: "oversized Content-Length", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        guard c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n") else { return }
        let block = String(repeating: " ", count: 8192)
        for _ in 0..<1280 where c.write(block) {}
    },
    UpstreamFault(name: "endless trailer section", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        guard c.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n") else { return }
        let fields = (0..<64).map { "X-T\($0): " + String(repeating: "t", count: 100) + "\r\n" }.joined()
        for _ in 0..<10_000 where c.write(fields) {}
    },
    UpstreamFault(name: "malformed status line", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        c.write("HTTP/1.1 OK-ish\r\n\r\n")
        waitForPeerClose(c)
    },
    UpstreamFault(name: "not HTTP at all", status: 502, error: "protocol") { c in
        _ = c.readRequest()
        c.write("SSH-2.0-OpenSSH_9.6\r\n\u{0}\u{1}\u{2}garbage\r\n\r\n")
        waitForPeerClose(c)
    },
    UpstreamFault(name: "closes before answering", status: 502, error: "protocol") { c in
        _ = c.readRequest()
    },
    UpstreamFault(name: "refuses connections", status: 502, error: "connect", behaviour: nil),
]

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
func closedPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sa = sockaddr_in()
    sa.sin_family = sa_family_t(AF_INET)
    sa.sin_addr.s_addr = inet_addr("127.0.0.1")
    sa.sin_port = 0
    _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    var out = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &out) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    close(fd)
    return UInt16(bigEndian: out.sin_port)
}

@Suite struct UpstreamFaultTests {
    /// A storm of 20 concurrent requests against each faulty upstream: every caller gets the right 502/504 with its error kind within the step deadline plus slack; gateway, curl and upstream sockets return to baseline; no libcurl transfer stays in flight, every easy handle is back in its client's pool, and the pool is no larger than the storm's concurrency. (Heap usage: `UpstreamFaultMemoryTests`.)
    @Test(arguments: upstreamFaults)
    func upstreamFault_AnswersRightStatusWithinDeadline_AndReleasesSockets(_ fault: UpstreamFault) throws {
        var server: ScriptedServer? = nil
        let upstreamPort: UInt16
        if let b = fault.behaviour {
            let s = try ScriptedServer { conn, _ in b(conn) }
            server = s
            upstreamPort = s.port
        } else {
            upstreamPort = closedPort()
        }
        let gw = try HardeningGateway(routes: [
            "fault.json": upstreamRoute(name: "fault", path: "/fault", url: "http://127.0.0.1:\(upstreamPort)/x", timeout: stepTimeout),
        ]) { config in
            config.upstreamBodyBytes = upstreamBodyLimit
        }
        let baseline = gw.serverSideSockets
        #expect(!gw.eventLoops.isEmpty, "the gateway's event loops are visible to the handle accounting")
        let poolsBefore = gw.upstreamHandlesPerLoop.map(\.live)
        let results = Shared<[(Int, String, Double)]>([])
        let workers = (0..<20).map { _ in
            Background {
                let start = ContinuousClock.now
                let r = try? gw.connect(timeout: .seconds(15)).request("GET", "/fault")
                let kind = (r?.json as? [String: Any])?["error"] as? String ?? ""
                results.with { $0.append((r?.status ?? 0, kind, seconds(since: start))) }
            }
        }
        for w in workers { w.join() }
        let all = results.get
        #expect(all.count == 20)
        for (status, kind, took) in all {
            #expect(status == fault.status, "\(fault.name): status \(status), expected \(fault.status)")
            #expect(kind == fault.error, "\(fault.name): error kind \(kind), expected \(fault.error)")
            #expect(took < stepTimeoutSeconds + 2.5, "\(fault.name): answered after \(took)s")
        }
        // Descriptors back to baseline: the gateway's caller sockets, curl's sockets to the
        // upstream, and (once curl has let go) the scripted upstream's own sockets.
        #expect(eventually(timeout: .seconds(10)) { gw.serverSideSockets == baseline }, "\(fault.name): caller sockets leaked")
        #expect(eventually(timeout: .seconds(10)) { tcpSocketCount(remotePort: upstreamPort) == 0 }, "\(fault.name): curl sockets to the upstream leaked: \(tcpSocketCount(remotePort: upstreamPort))")
        #expect(eventually(timeout: .seconds(10)) { gw.metric("switchboard_jobs_running") == 0 }, "\(fault.name): a run was left behind")
        // libcurl easy handles: nothing in flight, every handle pooled, pool bounded by the concurrency.
        #expect(eventually(timeout: .seconds(10)) { gw.upstreamHandles.inFlight == 0 }, "\(fault.name): transfers left in flight: \(gw.upstreamHandles)")
        let handles = gw.upstreamHandles
        #expect(handles.unaccounted == 0 && handles.live == handles.idle, "\(fault.name): easy handles not back in the pool: \(handles)")
        let poolsAfter = gw.upstreamHandlesPerLoop.map(\.live)
        #expect(zip(poolsBefore, poolsAfter).allSatisfy { $1 <= $0 + 20 }, "\(fault.name): a loop pooled more handles than there were concurrent requests: \(poolsBefore) -> \(poolsAfter)")
        // Each `metric` call's connection closes on the gateway's side once it reads the
        // client's FIN, which may come after the next scrape: wait for the count to settle.
        #expect(eventually(timeout: .seconds(10)) { gw.metric("switchboard_connections_open") == 1 },
                "\(fault.name): only the /metrics connection itself is open")
        #expect(gw.healthz()?.status == 200, "\(fault.name): the gateway still answers")
        server?.stop()
    }

    /// An upstream that floods its connection with a chunk extension that never ends
    /// keeps libcurl reading until the step's deadline, asking to be called again at once
    /// after each read: the same (single) event loop still answers other requests
    /// meanwhile — `/healthz` here, before the flooded call ends. (Not under a sanitizer:
    /// the flood takes both CPUs for the step's deadline, which the parallel tests'
    /// timeouts would feel; `WriteBatchTests` checks the loop's rule under one.)
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SWITCHBOARD_SANITIZER"] == nil))
    func floodingUpstream_DoesNotHoldItsLoop() throws {
        let server = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            guard conn.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=") else { return }
            let block = String(repeating: "e", count: 65536)
            while conn.write(block) {}
        }
        let gw = try HardeningGateway(routes: [
            "flood.json": upstreamRoute(name: "flood", path: "/flood", url: "http://127.0.0.1:\(server.port)/x",
                                        timeout: "2s"),
        ]) { config in
            config.eventLoops = 1
        }
        let flooded = Shared<Int?>(nil)
        let call = Background {
            let status = (try? gw.request("GET", "/flood"))?.status ?? 0
            flooded.with { $0 = status }
        }
        #expect(eventually { server.connections == 1 }, "the flooded call reached its upstream")
        usleep(200_000)
        let health = gw.healthz()
        #expect(flooded.get == nil, "/healthz waited for the flooded call to end")
        #expect(health?.status == 200)
        call.join()
        #expect(flooded.get == 504)
        server.stop()
    }

    /// A step whose upstream answers with differing `Content-Length` values (here as one
    /// list, which libcurl alone would read as its first number) fails: the caller gets a
    /// `502` problem naming the step, error kind `protocol` and why (RFC 9112 §6.3), and
    /// the upstream sees the next call on a new connection.
    @Test func differingContentLength_Answers502ProblemNamingTheStep() throws {
        let server = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                if !conn.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2, 12\r\n\r\n{}") { return }
            }
        }
        // One loop, so both calls share one client: a reused connection would show.
        let gw = try HardeningGateway(routes: [
            "framing.json": upstreamRoute(name: "framing", path: "/framing", url: "http://127.0.0.1:\(server.port)/x", timeout: stepTimeout),
        ]) { config in
            config.eventLoops = 1
        }
        for call in 1...2 {
            let r = try gw.request("GET", "/framing")
            #expect(r.status == 502, "call \(call)")
            #expect(r.header("content-type") == "application/problem+json", "call \(call)")
            let problem = r.json as? [String: Any] ?? [:]
            #expect(problem["step"] as? String == "up", "call \(call): \(r.text)")
            #expect(problem["error"] as? String == "protocol", "call \(call): \(r.text)")
            #expect(problem["detail"] as? String == "step up failed: invalid response framing: differing Content-Length values (RFC 9112 §6.3)",
                    "call \(call): \(r.text)")
        }
        #expect(server.requests.count == 2)
        #expect(server.connections == 2, "the connection of the invalid response was reused")
        server.stop()
    }
}
