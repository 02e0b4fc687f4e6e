import CLinux
import Glibc

/// An IPv4 or IPv6 socket address parsed from `host:port` (`[::1]:8080` for IPv6).
public struct SocketAddress: Sendable, CustomStringConvertible {
    /// The host as written (an IP literal; names are not resolved here).
    public let host: String
    /// The TCP port (0 = let the kernel choose).
    public let port: UInt16

    /// Parses `host:port`; `host` must be an IPv4 or bracketed IPv6 literal, or `localhost`.
    /// - Returns: nil when the text is not of that form.
    public init?(parsing text: String) {
        var h: Substring
        let p: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            h = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            p = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            h = text[..<colon]
            p = text[text.index(after: colon)...]
        }
        if h == "localhost" { h = "127.0.0.1" }
        guard let port = UInt16(p), !h.isEmpty else { return nil }
        self.host = String(h)
        self.port = port
        if !isIPv6 {
            var a = in_addr()
            guard inet_pton(AF_INET, self.host, &a) == 1 else { return nil }
        } else {
            var a = in6_addr()
            guard inet_pton(AF_INET6, self.host, &a) == 1 else { return nil }
        }
    }

    /// Creates an address from an IP literal and a port (not validated).
    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Whether the host is an IPv6 literal.
    public var isIPv6: Bool { host.contains(":") }

    public var description: String { isIPv6 ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// Calls `body` with this address as a `sockaddr` pointer and its length.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        if isIPv6 {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            _ = inet_pton(AF_INET6, host, &sa.sin6_addr)
            return withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        _ = inet_pton(AF_INET, host, &sa.sin_addr)
        return withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }
}

/// Thin wrappers over the socket system calls Switchboard needs. All are
/// non-blocking and close-on-exec; safe from any thread.
public enum Socket {
    /// Opens a listening TCP socket on `address`.
    /// - Parameters:
    ///   - reusePort: set `SO_REUSEPORT`, so each event loop can own a listener on one port.
    ///   - backlog: the `listen(2)` backlog. Default: 4096.
    /// - Returns: the descriptor and the port actually bound (useful with port 0).
    /// - Throws: `SystemError` from `socket`, `bind` or `listen`.
    public static func listen(_ address: SocketAddress, reusePort: Bool, backlog: Int32 = 4096) throws -> (fd: Int32, port: UInt16) {
        let fd = CLinux_socket_stream(address.isIPv6 ? AF_INET6 : AF_INET)
        if fd < 0 { throw SystemError.last("socket") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        let rc = address.withSockAddr { bind(fd, $0, $1) }
        if rc != 0 { let e = SystemError.last("bind \(address)"); close(fd); throw e }
        if Glibc.listen(fd, backlog) != 0 { let e = SystemError.last("listen"); close(fd); throw e }
        return (fd, boundPort(fd))
    }

    /// The local port a socket is bound to (0 when unknown).
    public static func boundPort(_ fd: Int32) -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        guard ok == 0 else { return 0 }
        let family = ss.ss_family
        return withUnsafePointer(to: &ss) { p -> UInt16 in
            if family == sa_family_t(AF_INET6) {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    /// Accepts one connection (non-blocking, close-on-exec).
    /// - Returns: the new descriptor, or nil when no connection is waiting (`EAGAIN`).
    /// - Throws: `SystemError` for any other failure (e.g. `EMFILE`).
    public static func accept(_ listener: Int32) throws -> Int32? {
        while true {
            let fd = CLinux_accept4(listener)
            if fd >= 0 { return fd }
            let e = CLinux_errno()
            if e == EINTR || e == ECONNABORTED { continue }
            if e == EAGAIN || e == EWOULDBLOCK { return nil }
            throw SystemError(errno: e, call: "accept4")
        }
    }

    /// Disables Nagle's algorithm (`TCP_NODELAY`), as every request/response server should.
    public static func setNoDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Milliseconds since the kernel last received data on TCP socket `fd`
    /// (`TCP_INFO`'s `tcpi_last_data_recv`, counted in jiffies: 1–10 ms resolution);
    /// nil when `fd` is not a TCP socket or the call fails. A system call: for when
    /// the loop cannot tell on its own (see `HTTPConnection`'s request dates).
    public static func millisecondsSinceLastDataReceived(_ fd: Int32) -> Int? {
        var info = tcp_info()
        var len = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &len) == 0 else { return nil }
        return Int(info.tcpi_last_data_recv)
    }

    /// Connects a blocking TCP client socket to `address` (for tests and tools, not the loop).
    /// - Throws: `SystemError` from `socket` or `connect`.
    public static func connectBlocking(_ address: SocketAddress) throws -> Int32 {
        let fd = socket(address.isIPv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        if fd < 0 { throw SystemError.last("socket") }
        let rc = address.withSockAddr { connect(fd, $0, $1) }
        if rc != 0 { let e = SystemError.last("connect \(address)"); close(fd); throw e }
        setNoDelay(fd)
        return fd
    }

    /// Ignores `SIGPIPE` process-wide, so a write to a closed peer returns `EPIPE`
    /// instead of killing the process. Call once at start-up.
    public static func ignoreSIGPIPE() {
        signal(SIGPIPE, SIG_IGN)
    }
}
