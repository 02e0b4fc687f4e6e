import EventLoop
import Foundation
import Glibc
import Synchronization
import Testing
@testable import HTTP1

/// A pipelining client that does not read for a while: the server's output blocks, the
/// connection buffers the pipeline up to its cap and stops reading its socket
/// (`readPaused`). Once the client reads, every request must be answered, in order —
/// also when the buffer runs out just as a turn of `requestsPerTurn` requests ends
/// (the turn then yielded with reading still paused, and nothing ever resumed it).
@Suite struct PausedPipelineTests {
    /// `count` pipelined requests of exactly 128 bytes each; those from `bigFrom` on, 40
    /// of them, are answered with 256 KiB (the output blocks), the others with their own
    /// path. The client reads nothing for 300 ms, then everything (5 s receive timeout).
    /// Returns how many responses came and whether the small ones came in order.
    static func run(count: Int, bigFrom: Int) throws -> (answered: Int, inOrder: Bool) {
        let big = 40
        let s = try TestServer(loops: 1, responder: { req, w in
            w.respond(HTTPResponse(status: 200, body: req.path.hasPrefix("/big")
                ? [UInt8](repeating: 120, count: 262_144) : Array(req.path.utf8)))
        })
        defer { s.group.shutdown() }
        let a = try TestClient(port: s.port, timeoutSeconds: 5)
        var pipeline: [UInt8] = []
        for i in 0..<count {
            let path = (bigFrom..<bigFrom + big).contains(i) ? "/big/\(i)" : "/s/\(i)"
            let bare = "GET \(path) HTTP/1.1\r\nHost: h\r\nX-Pad: \r\n\r\n"
            let padding = String(repeating: "p", count: 128 - bare.utf8.count)
            pipeline += Array("GET \(path) HTTP/1.1\r\nHost: h\r\nX-Pad: \(padding)\r\n\r\n".utf8)
        }
        nonisolated(unsafe) let sender = a
        let bytes = pipeline
        let sent = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { sender.send(bytes); sent.signal() }
        usleep(300_000)
        var answered = 0
        var inOrder = true
        while answered < count, let r = a.readResponse() {
            if !(bigFrom..<bigFrom + big).contains(answered) && r.bodyText != "/s/\(answered)" { inOrder = false }
            answered += 1
        }
        _ = sent.wait(timeout: .now() + 5)
        return (answered, inOrder)
    }

    @Test(arguments: [0, 8, 15, 16, 17, 24, 31])
    func pausedPipeline_IsAnsweredWhole(bigFrom: Int) throws {
        let (answered, inOrder) = try PausedPipelineTests.run(count: 4000, bigFrom: bigFrom)
        print("big responses from request \(bigFrom): answered \(answered) of 4000")
        #expect(answered == 4000)
        #expect(inOrder)
    }
}
