import EventLoop
import Foundation
import Glibc
import Synchronization
import Testing
@testable import HTTP1

/// `requestsPerTurn`: a connection with a deep pipeline answered at once does not keep
/// the loop to itself. Its turn begins with a readiness event and spans the write
/// bursts that answer its requests; past the bound it stops reading from its socket
/// until the next event, and stops serving requests it already buffered until the loop's
/// next round of events, so other connections' requests are served in between.
@Suite struct TurnFairnessTests {
    /// Sends `count` pipelined requests (`/a/0`…) on connection A, which reads its
    /// responses as they come (the server's output never blocks); connection B's one
    /// request (`/b`) is sent while A's fifth is being answered. Returns the paths in the
    /// order the responder saw them, once A has all its responses and B its one.
    private static func pipelineWithOneOther(count: Int) throws -> [String] {
        let order = Recorder<[String]>([])
        let bFD = Atomic<Int32>(-1)
        let s = try TestServer(loops: 1, responder: { req, w in
            order.update { $0.append(req.path) }
            if req.path == "/a/5" {
                let b = Array("GET /b HTTP/1.1\r\nHost: h\r\n\r\n".utf8)
                _ = b.withUnsafeBytes { Glibc.send(bFD.load(ordering: .relaxed), $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
            }
            w.respond(HTTPResponse(status: 200))
        })
        defer { s.group.shutdown() }
        let a = try TestClient(port: s.port, timeoutSeconds: 30), b = try TestClient(port: s.port, timeoutSeconds: 30)
        #expect(a.get("/warm")?.status == 200)
        #expect(b.get("/warm")?.status == 200)
        bFD.store(b.fd, ordering: .relaxed)
        order.set([])

        var pipeline: [UInt8] = []
        for i in 0..<count { pipeline += Array("GET /a/\(i) HTTP/1.1\r\nHost: h\r\n\r\n".utf8) }
        let answeredA = Atomic<Int>(0)
        let readerDone = DispatchSemaphore(value: 0)
        nonisolated(unsafe) let reader = a
        DispatchQueue.global().async {
            while answeredA.load(ordering: .relaxed) < count, reader.readResponse() != nil {
                answeredA.add(1, ordering: .relaxed)
            }
            readerDone.signal()
        }
        a.send(pipeline)
        #expect(readerDone.wait(timeout: .now() + 60) == .success)
        #expect(answeredA.load(ordering: .relaxed) == count)
        #expect(b.readResponse()?.status == 200)
        return order.get
    }

    /// 6000 pipelined requests (~210 KB: several reads of 64 KiB) on connection A;
    /// connection B's one request is sent while A's fifth is being answered. B must be
    /// served once A's turn is over — after the requests of A's first read, not after
    /// all 6000 (which is what a turn restarted by every write burst did).
    @Test func deepPipeline_YieldsToAnotherConnection_AfterItsTurn() throws {
        let count = 6000
        let seen = try TurnFairnessTests.pipelineWithOneOther(count: count)
        let served = try #require(seen.firstIndex(of: "/b"))
        let lastA = try #require(seen.lastIndex { $0.hasPrefix("/a/") })
        print("B served after \(served) of A's \(count) requests")
        #expect(served < lastA)
        #expect(served < count / 2)
    }

    /// The bound holds within one read: 1000 pipelined requests (~34 KB) arrive in one
    /// read and, each answered at once, are served from the connection's buffer by the
    /// write bursts. B's request, sent while A's fifth is answered, must be served once
    /// A's turn of `requestsPerTurn` is over — the buffer no longer serves the whole read
    /// (all 1000) before the loop gets back to its events.
    @Test func bufferedPipeline_YieldsAfterItsTurn() throws {
        let count = 1000
        #expect(count * "GET /a/999 HTTP/1.1\r\nHost: h\r\n\r\n".utf8.count < 65536)  // one read of the server's buffer
        let seen = try TurnFairnessTests.pipelineWithOneOther(count: count)
        let served = try #require(seen.firstIndex(of: "/b"))
        print("B served after \(served) of A's \(count) buffered requests")
        // A's bytes may come in more than one read (the first turn then ends with it);
        // either way no more than two turns of A go before B.
        #expect(served <= 2 * HTTPConnection.requestsPerTurn)
        // Every one of A's requests was served once, in order.
        #expect(seen.filter { $0.hasPrefix("/a/") } == (0..<count).map { "/a/\($0)" })
    }
}
