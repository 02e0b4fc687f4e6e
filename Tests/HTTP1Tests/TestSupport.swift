import EventLoop
import Glibc
import Locking
@testable import HTTP1

/// A response as read back by `TestClient`.
struct TestResponse {
    var status: Int
    var headers: HTTPHeaders
    var body: [UInt8]
    var bodyText: String { String(decoding: body, as: UTF8.self) }
}

/// A blocking TCP client for live tests (5 s receive timeout, so a broken server
/// fails a test instead of hanging it).
final class TestClient {
    let fd: Int32
    private var buffer: [UInt8] = []

    init(port: UInt16, timeoutSeconds: Int = 5) throws {
        fd = try Socket.connectBlocking(SocketAddress(host: "127.0.0.1", port: port))
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }

    /// Receives more bytes into the buffer; false on EOF, error or timeout. Again after
    /// a signal: with `SO_RCVTIMEO` set, `recv` fails with `EINTR` on any handled signal.
    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        var n: Int
        repeat { n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) } } while n < 0 && errno == EINTR
        guard n > 0 else { return false }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    /// Reads one response: status line, headers and a Content-Length body (none
    /// when `head` or for 1xx/204/304). Nil when the connection ends first.
    func readResponse(head: Bool = false) -> TestResponse? {
        var end: Int? = nil
        while end == nil {
            if buffer.count >= 4 {
                for i in 0...(buffer.count - 4)
                where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
                    end = i + 4
                    break
                }
            }
            if end == nil && !fill() { return nil }
        }
        let headText = String(decoding: buffer[0..<end!], as: UTF8.self)
        var lines = headText.split(separator: "\r\n", omittingEmptySubsequences: false)
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else { return nil }
        var headers = HTTPHeaders()
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.add(name: String(line[..<colon]),
                        value: String(line[line.index(after: colon)...]).trimmingSpaces)
        }
        buffer.removeFirst(end!)
        var length = Int(headers["Content-Length"] ?? "0") ?? 0
        if head || status < 200 || status == 204 || status == 304 { length = 0 }
        while buffer.count < length {
            if !fill() { return nil }
        }
        let body = Array(buffer[0..<length])
        buffer.removeFirst(length)
        return TestResponse(status: status, headers: headers, body: body)
    }

    /// Reads until the server closes. Returns what arrived and whether the end was
    /// a close (EOF or reset) rather than the receive timeout.
    func readUntilClosed() -> (data: [UInt8], closed: Bool) {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { buffer.append(contentsOf: chunk[0..<n]); continue }
            let e = errno
            let data = buffer
            buffer = []
            if n == 0 || e == ECONNRESET { return (data, true) }
            return (data, false)
        }
    }

    /// Whether the server closed the connection (reads and discards anything left).
    func isClosedByServer() -> Bool { readUntilClosed().closed }

    /// Sends a simple GET and reads the response.
    func get(_ path: String, headers: String = "") -> TestResponse? {
        send("GET \(path) HTTP/1.1\r\nHost: test\r\n\(headers)\r\n")
        return readResponse()
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// A server on 127.0.0.1:0 with its own loop group, shut down by `stop()`.
final class TestServer {
    let group: EventLoopGroup
    let server: HTTPServer

    /// The default responder: `200` with body `"METHOD PATH BODYLENGTH"`; the path
    /// `/slow` answers after a 50 ms loop timer, `/big?N` answers with N bytes.
    static func echo(_ req: HTTPRequest, _ w: HTTPResponseWriter) {
        if req.path == "/slow" {
            w.loop.schedule(at: w.loop.now + .milliseconds(50)) {
                w.respond(HTTPResponse(status: 200, body: Array("slow \(req.body.count)".utf8)))
            }
            return
        }
        if req.path == "/big", let n = Int(req.query ?? "") {
            w.respond(HTTPResponse(status: 200, headers: [("Content-Type", "application/octet-stream")],
                                   body: [UInt8](repeating: UInt8(ascii: "x"), count: n)))
            return
        }
        w.respond(HTTPResponse(status: 200, headers: [("Content-Type", "text/plain")],
                               body: Array("\(req.method) \(req.path) \(req.body.count)".utf8)))
    }

    init(loops: Int = 1, limits: HTTPLimits = HTTPLimits(), tls: TLSConfiguration? = nil,
         continueCheck: ((HTTPRequest, HTTPResponseWriter) -> Bool)? = nil,
         onRefusal: ((HTTPRefusal) -> Void)? = nil,
         responder: @escaping (HTTPRequest, HTTPResponseWriter) -> Void = TestServer.echo) throws {
        Socket.ignoreSIGPIPE()
        group = try EventLoopGroup(count: loops)
        server = HTTPServer(group: group, address: SocketAddress(host: "127.0.0.1", port: 0),
                            limits: limits, tls: tls, continueCheck: continueCheck, onRefusal: onRefusal,
                            responder: responder)
        do {
            try server.start()
        } catch {
            group.shutdown()
            throw error
        }
    }

    var port: UInt16 { server.port }

    func client() throws -> TestClient { try TestClient(port: port) }

    func stop() {
        server.shutdown()
        group.shutdown()
    }
}

/// Runs `body` with a fresh server and always stops it.
func withServer(loops: Int = 1, limits: HTTPLimits = HTTPLimits(), tls: TLSConfiguration? = nil,
                continueCheck: ((HTTPRequest, HTTPResponseWriter) -> Bool)? = nil,
                onRefusal: ((HTTPRefusal) -> Void)? = nil,
                responder: @escaping (HTTPRequest, HTTPResponseWriter) -> Void = TestServer.echo,
                _ body: (TestServer) throws -> Void) throws {
    let s = try TestServer(loops: loops, limits: limits, tls: tls, continueCheck: continueCheck,
                           onRefusal: onRefusal, responder: responder)
    defer { s.stop() }
    try body(s)
}

/// Polls `condition` every 10 ms until it holds or `seconds` pass.
func eventually(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let end = Instant.now() + .milliseconds(Int64(seconds * 1000))
    while Instant.now() < end {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A small thread-safe box for values recorded by responders.
final class Recorder<T: Sendable>: Sendable {
    private let value: Locked<T>
    init(_ initial: T) { value = Locked(initial) }
    func set(_ v: T) { value.withLock { $0 = v } }
    func update(_ f: (inout T) -> Void) { value.withLock { f(&$0) } }
    var get: T { value.withLock { $0 } }
}

// MARK: - Parser helpers

/// What a parser produced for a piece of input.
enum ParsedItem {
    case request(HTTPRequest)
    case continueExpected
    case error(HTTPParseError)

    var request: HTTPRequest? { if case .request(let r) = self { return r } else { return nil } }
    var error: HTTPParseError? { if case .error(let e) = self { return e } else { return nil } }
}

/// Feeds `bytes` to a fresh parser, in one piece or one byte at a time, and
/// collects everything it returns (stopping at the first error).
func parseAll(_ bytes: [UInt8], limits: HTTPLimits = HTTPLimits(), byteByByte: Bool) -> [ParsedItem] {
    var p = HTTPRequestParser(limits: limits)
    var items: [ParsedItem] = []
    let pieces: [[UInt8]] = byteByByte ? bytes.map { [$0] } : [bytes]
    for piece in pieces {
        var off = 0
        repeat {
            switch p.parse(piece[off...]) {
            case .needMore:
                off = piece.count
            case .request(let r, let consumed):
                precondition(consumed > 0)
                items.append(.request(r))
                off += consumed
            case .expectContinue(let consumed):
                items.append(.continueExpected)
                off += consumed
            case .error(let e):
                items.append(.error(e))
                return items
            }
        } while off < piece.count
    }
    return items
}

func parseAll(_ text: String, limits: HTTPLimits = HTTPLimits(), byteByByte: Bool) -> [ParsedItem] {
    parseAll(Array(text.utf8), limits: limits, byteByByte: byteByByte)
}
