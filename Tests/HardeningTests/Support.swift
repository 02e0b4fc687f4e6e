import EventLoop
import Foundation
import Gateway
import Glibc
import Routes
import TestSupport

// Shared helpers for the hardening suite: an in-process gateway, raw-socket
// helpers that never block forever, and per-port socket accounting that is
// immune to other test targets running in the same process.

/// The shared in-process gateway (TestSupport's `GatewayHarness`), with the
/// probes the hardening suite uses.
typealias HardeningGateway = GatewayHarness

extension GatewayHarness {
    /// One `GET /healthz` on a fresh connection; nil when it got no answer.
    func healthz(timeout: Duration = .seconds(10)) -> RawMessage? {
        guard let c = try? connect(timeout: timeout) else { return nil }
        return c.request("GET", "/healthz")
    }

    /// The value of a gauge or counter from `GET /metrics` (nil when absent).
    func metric(_ name: String) -> Int? {
        guard let c = try? connect(timeout: .seconds(5)), let r = c.request("GET", "/metrics") else { return nil }
        for line in r.text.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.split(separator: " ").last ?? "").map { Int($0) }
        }
        return nil
    }

    /// Sockets of this process whose local port is the gateway's (accepted caller
    /// connections), listeners excluded.
    var serverSideSockets: Int { tcpSocketCount(localPort: port) }
}

/// A route answering a fixed response without any upstream.
func fixedRoute(name: String, method: String, path: String, body: [String: Any] = ["ok": true]) -> String {
    jsonText(["name": name, "method": method, "path": path, "steps": [] as [Any],
              "response": ["status": 200, "body": body]])
}

/// A route with one step calling `url`, held synchronously (`wait` 30 s).
func upstreamRoute(name: String, path: String, url: String, timeout: String) -> String {
    jsonText(["name": name, "method": "GET", "path": path, "wait": "30s",
              "steps": [["id": "up", "request": ["method": "GET", "url": url], "timeout": timeout]]])
}

func jsonText(_ object: Any) -> String {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

func setNoDelay(_ fd: Int32) {
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

/// Sets `SO_SNDTIMEO` so a write to a peer that never reads cannot block forever.
func setSendTimeout(_ fd: Int32, _ d: Duration) {
    var tv = timeval(tv_sec: Int(d.components.seconds), tv_usec: Int(d.components.attoseconds / 1_000_000_000_000))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
}

/// Whether `fd` has bytes (or EOF) to read right now.
func isReadable(_ fd: Int32, waitMs: Int32 = 0) -> Bool {
    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    return poll(&p, 1, waitMs) > 0
}

/// A blocking connect to `127.0.0.1:port` without any HTTP on top.
func rawSocket(port: UInt16) -> Int32? {
    try? Socket.connectBlocking(SocketAddress(host: "127.0.0.1", port: port))
}

/// Seconds elapsed since `start`, as a Double.
func seconds(since start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// Socket inodes of this process's open descriptors.
private func ownSocketInodes() -> Set<UInt64> {
    var result = Set<UInt64>()
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return result }
    var buf = [CChar](repeating: 0, count: 256)
    for e in entries {
        let n = readlink("/proc/self/fd/\(e)", &buf, buf.count - 1)
        guard n > 0 else { continue }
        buf[n] = 0
        let s = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if s.hasPrefix("socket:["), let ino = UInt64(s.dropFirst(8).dropLast()) { result.insert(ino) }
    }
    return result
}

/// Open TCP sockets of *this process* (listeners excluded) whose local port, or
/// remote port, is the given one. Read from /proc/net/tcp{,6} joined with
/// /proc/self/fd, so sockets opened by tests running concurrently on other ports
/// do not disturb the count.
func tcpSocketCount(localPort: UInt16? = nil, remotePort: UInt16? = nil) -> Int {
    let mine = ownSocketInodes()
    var count = 0
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
        for line in text.split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 9 else { continue }
            let local = f[1].split(separator: ":"), remote = f[2].split(separator: ":")
            guard local.count == 2, remote.count == 2,
                  let lp = UInt16(local[1], radix: 16), let rp = UInt16(remote[1], radix: 16),
                  let ino = UInt64(f[9]) else { continue }
            if f[3] == "0A" { continue }  // LISTEN
            guard ino != 0, mine.contains(ino) else { continue }
            if let p = localPort, lp != p { continue }
            if let p = remotePort, rp != p { continue }
            count += 1
        }
    }
    return count
}

/// The resident set size of this process, in bytes.
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let kb = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) } ?? 0
        return kb * 1024
    }
    return 0
}

/// Reads whatever arrives on `fd` until EOF, error or `timeout`; returns the bytes
/// and whether EOF (or a reset) was seen.
func readUntilClose(_ fd: Int32, timeout: Duration) -> (bytes: [UInt8], closed: Bool) {
    let end = ContinuousClock.now + timeout
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while ContinuousClock.now < end {
        let left = end - ContinuousClock.now
        let ms = Int32(max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, ms) <= 0 { continue }
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n > 0 { out.append(contentsOf: chunk[0..<n]); continue }
        if n == 0 { return (out, true) }
        if errno == EAGAIN || errno == EINTR { continue }
        return (out, true)
    }
    return (out, false)
}

/// The status codes of the HTTP responses at the start of `bytes` (heads only; a
/// body is skipped by its Content-Length).
func responseStatuses(_ bytes: [UInt8]) -> [Int] {
    var statuses: [Int] = []
    var i = 0
    let crlfcrlf: [UInt8] = [13, 10, 13, 10]
    while i < bytes.count {
        var end = -1
        var j = i
        while j + 3 < bytes.count {
            if bytes[j] == 13 && Array(bytes[j..<(j + 4)]) == crlfcrlf { end = j; break }
            j += 1
        }
        guard end >= 0 else { break }
        let head = String(decoding: bytes[i..<end], as: UTF8.self)
        let lines = head.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { break }
        statuses.append(status)
        var length = 0
        for l in lines.dropFirst() {
            let kv = l.split(separator: ":", maxSplits: 1)
            if kv.count == 2, kv[0].lowercased() == "content-length" {
                length = Int(kv[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        if status / 100 == 1 { length = 0 }
        i = end + 4 + length
    }
    return statuses
}
