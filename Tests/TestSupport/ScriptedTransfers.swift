import Dispatch
import EventLoop
import Glibc
import Locking
import Upstream

/// Sends one GET per element of `answers`, one after the other, through one
/// `UpstreamClient` on one loop, to an upstream that answers the n-th connection with
/// `answers[n]` (raw bytes; the last one again once they run out), then ends its half
/// of the connection. Returns each result (nil when none came within 20 s) and the
/// client's easy-handle counts once its handles are back in the pool — one handle
/// serves every transfer unless one was replaced.
public func runScriptedTransfers(_ answers: [String]) throws -> ([UpstreamResult?], UpstreamHandleStats) {
    let next = Locked(0)
    let up = try ScriptedServer { conn, _ in
        _ = conn.readRequest()
        let i = next.withLock { n -> Int in n += 1; return n - 1 }
        _ = conn.write(answers[min(i, answers.count - 1)])
        shutdown(conn.fd, Int32(SHUT_WR))
        _ = conn.isClosedByPeer()
    }
    let group = try EventLoopGroup(count: 1)
    defer { group.shutdown() }
    let loop = group.loops[0]
    nonisolated(unsafe) var client: UpstreamClient?
    loop.execute { client = UpstreamClient(loop: loop) }
    var results: [UpstreamResult?] = []
    for _ in answers {
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: UpstreamResult?
        loop.execute {
            client!.send(UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: loop.now + .seconds(10))) { r in
                result = r
                done.signal()
            }
        }
        _ = done.wait(timeout: .now() + 20)
        results.append(result)
    }
    // The handle goes back to the pool right after the completion ran.
    _ = eventually { UpstreamClient.handleStats(onLoops: [loop]).inFlight == 0 }
    let stats = UpstreamClient.handleStats(onLoops: [loop])
    loop.execute { client = nil }
    return (results, stats)
}
