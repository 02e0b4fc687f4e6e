import EventLoop
import Foundation
import Glibc

/// A parsed HTTP/1.1 message head and body as seen on the wire by a test.
public struct RawMessage: Sendable {
    /// Status code (responses) or 0 (requests).
    public var status: Int
    /// Request line or status line.
    public var startLine: String
    /// Header fields, names lowercased.
    public var headers: [(String, String)]
    public var body: [UInt8]

    /// The first header named `name` (case-insensitive).
    public func header(_ name: String) -> String? {
        headers.first { $0.0 == name.lowercased() }?.1
    }
    /// The body as UTF-8 text.
    public var text: String { String(decoding: body, as: UTF8.self) }
    /// The body parsed with Foundation's JSONSerialization (tests only).
    public var json: Any? { try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) }
    /// The method of a request (first word of the start line).
    public var method: String { String(startLine.split(separator: " ").first ?? "") }
    /// The target of a request (second word of the start line).
    public var target: String { startLine.split(separator: " ").count > 1 ? String(startLine.split(separator: " ")[1]) : "" }
}

/// A blocking TCP connection for tests: write raw bytes, read whole HTTP messages.
/// Every read has a timeout (default 10 s), so a test never hangs forever.
public final class RawConnection: @unchecked Sendable {
    public let fd: Int32
    private var buffer: [UInt8] = []

    /// Wraps an already connected descriptor.
    public init(fd: Int32, timeout: Duration = .seconds(10)) {
        self.fd = fd
        setTimeout(timeout)
    }

    /// Connects to `127.0.0.1:port`.
    public convenience init(port: UInt16, timeout: Duration = .seconds(10)) throws {
        let fd = try Socket.connectBlocking(SocketAddress(host: "127.0.0.1", port: port))
        self.init(fd: fd, timeout: timeout)
    }

    /// Closes the descriptor. Tests must not `close(fd)` themselves: this would close it
    /// again, and in a test process other threads reuse descriptor numbers at once (a
    /// second close can cut another test's connection). `shutdown(fd, …)` is fine.
    deinit { close(fd) }

    /// `recv(2)` into `buffer`, again after a signal: with `SO_RCVTIMEO` set a socket
    /// call fails with `EINTR` on any handled signal, `SA_RESTART` or not (signal(7)),
    /// and the test process gets them (children started by other tests exit).
    static func receive(_ fd: Int32, into buffer: inout [UInt8]) -> Int {
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            return n
        }
    }

    /// Sets the receive timeout (`SO_RCVTIMEO`).
    public func setTimeout(_ d: Duration) {
        var tv = timeval(tv_sec: Int(d.components.seconds), tv_usec: Int(d.components.attoseconds / 1_000_000_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// Writes all of `bytes`. Returns false when the peer is gone.
    @discardableResult
    public func write(_ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }

    /// Writes `text` as UTF-8.
    @discardableResult
    public func write(_ text: String) -> Bool { write(Array(text.utf8)) }

    /// Reads more bytes into the buffer; false on EOF, error or timeout.
    private func fill() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = RawConnection.receive(fd, into: &chunk)
        if n <= 0 { return false }
        buffer.append(contentsOf: chunk[0..<n])
        return true
    }

    /// Reads one response (status line, headers, body by Content-Length or
    /// chunked, or until close). `headRequest` means the response has no body.
    /// - Returns: nil when the connection closed or timed out first.
    public func readResponse(headRequest: Bool = false) -> RawMessage? { readMessage(isResponse: true, noBody: headRequest) }

    /// Reads one request (for scripted upstream servers).
    public func readRequest() -> RawMessage? { readMessage(isResponse: false, noBody: false) }

    private func readMessage(isResponse: Bool, noBody: Bool) -> RawMessage? {
        var headEnd: Int? = nil
        while headEnd == nil {
            if let r = findCRLFCRLF() { headEnd = r; break }
            if !fill() { return nil }
        }
        let head = String(decoding: buffer[0..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        var lines = head.components(separatedBy: "\r\n")
        let start = lines.removeFirst()
        var headers: [(String, String)] = []
        for l in lines {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers.append((l[..<c].lowercased(), l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)))
        }
        var status = 0
        if isResponse { status = Int(start.split(separator: " ").dropFirst().first ?? "") ?? 0 }
        var msg = RawMessage(status: status, startLine: start, headers: headers, body: [])
        if noBody || (isResponse && (status / 100 == 1 || status == 204 || status == 304)) { return msg }
        if let te = msg.header("transfer-encoding"), te.lowercased().contains("chunked") {
            while true {
                guard let line = readLine() else { return nil }
                let size = Int(line.split(separator: ";").first ?? "", radix: 16) ?? 0
                if size == 0 {
                    while let t = readLine(), !t.isEmpty {}
                    return msg
                }
                while buffer.count < size + 2 { if !fill() { return nil } }
                msg.body.append(contentsOf: buffer[0..<size])
                buffer.removeFirst(size + 2)
            }
        }
        if let cl = msg.header("content-length"), let n = Int(cl) {
            while buffer.count < n { if !fill() { return nil } }
            msg.body = Array(buffer[0..<n])
            buffer.removeFirst(n)
            return msg
        }
        if !isResponse { return msg }
        while fill() {}
        msg.body = buffer
        buffer.removeAll()
        return msg
    }

    private func readLine() -> String? {
        while true {
            if let i = buffer.firstIndex(of: 0x0A), i > 0, buffer[i - 1] == 0x0D {
                let s = String(decoding: buffer[0..<(i - 1)], as: UTF8.self)
                buffer.removeFirst(i + 1)
                return s
            }
            if !fill() { return nil }
        }
    }

    private func findCRLFCRLF() -> Int? {
        guard buffer.count >= 4 else { return nil }
        for i in 0...(buffer.count - 4) where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
            return i
        }
        return nil
    }

    /// Whether the peer closed the connection (EOF) within the read timeout,
    /// after discarding anything still buffered.
    public func isClosedByPeer() -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = RawConnection.receive(fd, into: &chunk)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    /// Sends one request and reads its response. Adds `Host` and `Content-Length`.
    public func request(_ method: String, _ target: String, headers: [(String, String)] = [], body: [UInt8] = []) -> RawMessage? {
        var s = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        for (n, v) in headers { s += "\(n): \(v)\r\n" }
        if !body.isEmpty || method == "POST" || method == "PUT" { s += "Content-Length: \(body.count)\r\n" }
        s += "\r\n"
        guard write(Array(s.utf8) + body) else { return nil }
        return readResponse(headRequest: method == "HEAD")
    }
}

/// A scripted upstream for tests: listens on `127.0.0.1:0` and runs `handler`
/// on its own thread for each accepted connection. The handler decides what
/// to read and write (answer normally, stall, send garbage, reset …).
public final class ScriptedServer: @unchecked Sendable {
    /// The port it listens on.
    public let port: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private var _requests: [RawMessage] = []
    private var _connections = 0
    private var _answered = 0
    private var stopped = false

    /// Starts listening; `handler` gets each connection and the server (to record requests).
    public init(handler: @escaping @Sendable (RawConnection, ScriptedServer) -> Void) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_addr.s_addr = inet_addr("127.0.0.1")
        sa.sin_port = 0
        _ = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        listen(fd, 512)
        listenFD = fd
        port = Socket.boundPort(fd)
        // The accept thread owns the listening descriptor and closes it when it ends
        // (`stop()` only shuts it down): were it closed under the thread, the thread's
        // next `accept` could take a connection from whatever socket got that number
        // next in this process (another test's server) and close it unanswered.
        let t = Thread { [weak self] in
            defer { close(fd) }
            while true {
                let c = accept(fd, nil, nil)
                guard let server = self else { if c >= 0 { close(c) }; return }
                if c < 0 {
                    if server.isStopped { return }
                    continue
                }
                server.lock.withLock { server._connections += 1 }
                let conn = RawConnection(fd: c, timeout: .seconds(30))
                Thread { handler(conn, server) }.start()
            }
        }
        t.start()
    }

    /// An upstream answering every request with `status` and `body` (keep-alive),
    /// after `delay`, recording each request. With `heldBy`, each answer also waits
    /// until the gate opens (at most 30 s); with `meeting`, until every party of the
    /// rendezvous has a request in hand (at most 10 s). Counts its answers in `answered`.
    public static func answering(status: Int = 200, body: String = "{\"ok\":true}", headers: [(String, String)] = [("Content-Type", "application/json")], delay: Duration = .zero,
                                 heldBy gate: Gate? = nil, meeting rendezvous: Rendezvous? = nil) throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                if delay > .zero { Thread.sleep(forTimeInterval: Double(delay.milliseconds) / 1000) }
                _ = gate?.wait(timeout: .seconds(30))
                rendezvous?.arrive(timeout: .seconds(10))
                var s = "HTTP/1.1 \(status) X\r\nContent-Length: \(body.utf8.count)\r\n"
                for (n, v) in headers { s += "\(n): \(v)\r\n" }
                s += "\r\n\(body)"
                server.lock.withLock { server._answered += 1 }
                if !conn.write(s) { return }
            }
        }
    }

    /// An upstream answering every request (keep-alive) with `200` and a body of its
    /// own port and the request target ("PORT TARGET"), recording each request: tells
    /// which server and URL a response came from when many are in flight.
    public static func echoingTarget() throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let body = "\(server.port) \(req.target)"
                if !conn.write("HTTP/1.1 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)") { return }
            }
        }
    }

    /// An upstream that records each connection's first request and never answers,
    /// holding the connection until the client closes it (or 20 s pass).
    public static func silent() throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            if let r = conn.readRequest() { server.record(r) }
            conn.setTimeout(.seconds(20))
            _ = conn.isClosedByPeer()
        }
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    /// Records a request the handler received.
    public func record(_ r: RawMessage) { lock.withLock { _requests.append(r) } }
    /// Requests recorded so far.
    public var requests: [RawMessage] { lock.withLock { _requests } }
    /// Connections accepted so far.
    public var connections: Int { lock.withLock { _connections } }
    /// Answers an `answering` server has started to write so far.
    public var answered: Int { lock.withLock { _answered } }

    /// Stops accepting (already-running handlers go on until their peer closes).
    public func stop() {
        let first = lock.withLock { () -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return }
        // Refuses new connections and wakes the accept thread, which closes the
        // descriptor on its way out (see `init`).
        shutdown(listenFD, Int32(SHUT_RDWR))
    }

    deinit { stop() }
}

/// A latch a test opens to release the upstream answers it holds, so that "the
/// caller was answered before the upstream" is shown by order, not by a clock.
public final class Gate: @unchecked Sendable {
    private let condition = NSCondition()
    private var isOpen = false

    public init() {}

    /// Opens the gate for every waiter, now and later.
    public func open() {
        condition.withLock { isOpen = true; condition.broadcast() }
    }

    /// Blocks until the gate is open or `timeout` passes.
    /// - Returns: whether it opened.
    public func wait(timeout: Duration) -> Bool {
        let end = Date(timeIntervalSinceNow: Double(timeout.milliseconds) / 1000)
        return condition.withLock {
            while !isOpen { if !condition.wait(until: end) { return isOpen } }
            return true
        }
    }
}

/// A meeting point for `parties` threads (upstream handlers holding one request
/// each): shows that requests were in flight at the same time without measuring time.
public final class Rendezvous: @unchecked Sendable {
    private let condition = NSCondition()
    private let parties: Int
    private var arrived = 0
    private var brokenByTimeout = false
    private var met = false

    /// - Parameter parties: how many arrivals make the meeting.
    public init(parties: Int) { self.parties = parties }

    /// Arrives and waits until all parties have, or `timeout` passes (which breaks the meeting).
    public func arrive(timeout: Duration) {
        let end = Date(timeIntervalSinceNow: Double(timeout.milliseconds) / 1000)
        condition.withLock {
            arrived += 1
            if arrived == parties {
                met = !brokenByTimeout
                condition.broadcast()
                return
            }
            while arrived < parties {
                if !condition.wait(until: end) { brokenByTimeout = true; return }
            }
        }
    }

    /// Whether all parties arrived before any of them gave up waiting.
    public var everyPartyMet: Bool { condition.withLock { met } }
}

/// The loopback ports a `switchboard serve` child reported in its `listening` log line
/// (`"address":"127.0.0.1:PORT"`, and `"admin_address"` when it has an admin listener),
/// read from the file its output goes to; nil until that line is there. Lets a test
/// start the child on `127.0.0.1:0` instead of guessing a free port, which another
/// test running in parallel can take first.
public func listeningPorts(inLogAt path: String) -> (address: UInt16, admin: UInt16?)? {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    func port(after key: String, in line: Substring) -> UInt16? {
        guard let r = line.range(of: "\"\(key)\":\"127.0.0.1:") else { return nil }
        return UInt16(line[r.upperBound...].prefix { $0.isNumber })
    }
    for line in text.split(separator: "\n") where line.contains("\"msg\":\"listening\"") {
        if let address = port(after: "address", in: line) { return (address, port(after: "admin_address", in: line)) }
    }
    return nil
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
/// - Returns: whether it held.
public func eventually(timeout: Duration = .seconds(10), _ condition: () -> Bool) -> Bool {
    let end = ContinuousClock.now + timeout
    while ContinuousClock.now < end {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Number of open file descriptors of this process (entries of /proc/self/fd).
public func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}
