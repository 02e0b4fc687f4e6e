import EventLoop
import Foundation
import Glibc
import Synchronization
import Testing
@testable import HTTP1

/// Pipelines across the turn boundaries (`requestsPerTurn` = 32): whatever a request
/// is — answered at once, answered after a timer (`/slow`), with a body, with
/// `Expect: 100-continue`, the last one with `Connection: close` — every response comes,
/// once, in request order; also when the client half-closes after its pipeline and when
/// several connections pipeline on one loop at once.
@Suite struct PipelineOrderTests {
    /// `n` requests: `GET /r/i` (`POST` with a body at `bodyAt` and `expectAt`, the
    /// latter with `Expect: 100-continue`), `/slow` at `slowAt`, `Connection: close` at `closeAt`.
    static func pipeline(_ n: Int, slowAt: Set<Int>, bodyAt: Set<Int>, expectAt: Set<Int>, closeAt: Int?) -> [UInt8] {
        var p: [UInt8] = []
        for i in 0..<n {
            let path = slowAt.contains(i) ? "/slow" : "/r/\(i)"
            var h = "Host: h\r\nX-I: \(i)\r\n"
            if closeAt == i { h += "Connection: close\r\n" }
            var body = ""
            if bodyAt.contains(i) || expectAt.contains(i) { body = String(repeating: "b", count: 10 + i); h += "Content-Length: \(body.utf8.count)\r\n" }
            if expectAt.contains(i) { h += "Expect: 100-continue\r\n" }
            p += Array("\(bodyAt.contains(i) || expectAt.contains(i) ? "POST" : "GET") \(path) HTTP/1.1\r\n\(h)\r\n\(body)".utf8)
        }
        return p
    }

    /// Slow requests, bodies and `Expect` placed at the turn boundaries (31–33, 63–65).
    @Test(arguments: [0, 1, 2, 3]) func mixedPipeline_InOrder(variant: Int) throws {
        let s = try TestServer(loops: 1)
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 5)
        let n = 120
        let slow: Set<Int> = variant & 1 == 1 ? [31, 32, 33, 64] : [40]
        let bodies: Set<Int> = [30, 31, 32, 63, 64, 65, 95, 96]
        let expects: Set<Int> = variant & 2 == 2 ? [31, 32, 33, 63, 64] : [50]
        let closeAt = 100
        c.send(PipelineOrderTests.pipeline(n, slowAt: slow, bodyAt: bodies, expectAt: expects, closeAt: closeAt))
        var got: [String] = []
        while let r = c.readResponse() {
            if r.status == 100 { continue }
            got.append(r.bodyText)
            if got.count > n { break }
        }
        var want: [String] = []
        for i in 0...closeAt {
            let hasBody = bodies.contains(i) || expects.contains(i)
            let len = hasBody ? 10 + i : 0
            want.append(slow.contains(i) ? "slow \(len)" : "\(hasBody ? "POST" : "GET") /r/\(i) \(len)")
        }
        #expect(got == want)
    }

    /// The client half-closes right after writing its pipeline.
    @Test(arguments: [100, 500, 1000]) func halfClosedPipeline_AllAnswered(n: Int) throws {
        let s = try TestServer(loops: 1)
        defer { s.stop() }
        let c = try TestClient(port: s.port, timeoutSeconds: 5)
        c.send(PipelineOrderTests.pipeline(n, slowAt: [], bodyAt: [], expectAt: [], closeAt: nil))
        shutdown(c.fd, Int32(SHUT_WR))
        var got = 0
        while let r = c.readResponse(), r.bodyText == "GET /r/\(got) 0" { got += 1 }
        #expect(got == n)
    }

    /// Several connections pipelining at once on one loop: each in order, all answered.
    @Test func concurrentPipelines() throws {
        let s = try TestServer(loops: 1)
        defer { s.stop() }
        let k = 6, n = 700
        let results = Recorder<[Int]>([])
        let group = DispatchGroup()
        for _ in 0..<k {
            let c = try TestClient(port: s.port, timeoutSeconds: 10)
            nonisolated(unsafe) let cc = c
            let p = PipelineOrderTests.pipeline(n, slowAt: [100, 300], bodyAt: [], expectAt: [], closeAt: nil)
            DispatchQueue.global().async(group: group) {
                let done = DispatchSemaphore(value: 0)
                DispatchQueue.global().async { cc.send(p); done.signal() }
                var got = 0
                while got < n, let r = cc.readResponse() {
                    let ok = [100, 300].contains(got) ? r.bodyText == "slow 0" : r.bodyText == "GET /r/\(got) 0"
                    if !ok { break }
                    got += 1
                }
                done.wait()
                results.update { $0.append(got) }
            }
        }
        #expect(group.wait(timeout: .now() + 60) == .success)
        #expect(results.get == Array(repeating: n, count: k))
    }
}
