import CLinux
import Dispatch
import EventLoop
import Glibc
import Locking
import Synchronization

/// A request, or a connection, the server refused on its own, without its
/// responder (see `HTTPServer.init(…onRefusal:…)`):
/// - a request that was unparseable, over a limit or too slow, answered with its
///   problem response and a close;
/// - a connection accepted over `HTTPLimits.maxConnections`
///   (`HTTPParseError.tooManyConnections`), closed before any request byte was
///   read: a plain-HTTP listener first sends a best-effort `503` problem, a TLS
///   listener sends nothing (a plain-text `503` means nothing to a TLS client);
/// - a connection that could not be set up (`.connectionSetupFailed`: no TLS
///   session, or the loop could not watch it), closed without an answer.
public struct HTTPRefusal: Sendable {
    /// Why; the status sent (or, when `answered` is false, the one that would have
    /// been) is `error.status`.
    public let error: HTTPParseError
    /// The request's method and path when its head had been read whole (a body over
    /// the limit, a bad chunk, a body timeout); nil when the head was the problem
    /// and for a refused connection.
    public let method: String?
    public let path: String?
    /// When the request began: its first byte when the head was being read, else
    /// when it was refused (for a refused connection: the loop iteration that
    /// accepted it).
    public let start: Instant
    /// Bytes of the problem body sent (0 when `answered` is false).
    public let bytes: Int
    /// The loop of the connection (the observer is called on its thread).
    public let loop: EventLoop
    /// Whether the problem response went out: false when the connection was closed
    /// without it — over `maxConnections` on a TLS listener, a connection that could
    /// not be set up, or a `503` the socket did not take whole. True for every
    /// request refusal (its response is queued like any other).
    public let answered: Bool

    public init(error: HTTPParseError, method: String?, path: String?, start: Instant, bytes: Int, loop: EventLoop,
                answered: Bool = true) {
        self.error = error
        self.method = method
        self.path = path
        self.start = start
        self.bytes = bytes
        self.loop = loop
        self.answered = answered
    }

    /// A short text for a log line: `error.reason`, followed by
    /// ` (closed without a response)` when `answered` is false.
    public var detail: String {
        answered ? error.reason : error.reason + " (closed without a response)"
    }
}

/// State shared by every loop of one server. Immutable apart from the atomic counter.
final class ServerShared: @unchecked Sendable {
    let limits: HTTPLimits
    /// Called on a loop thread; the server's user guarantees it may run on several loops at once.
    let responder: (consuming HTTPRequest, HTTPResponseWriter) -> Void
    /// See `HTTPServer.init(…continueCheck:…)`.
    let continueCheck: ((HTTPRequest, HTTPResponseWriter) -> Bool)?
    /// See `HTTPServer.init(…onRefusal:…)`.
    let onRefusal: ((HTTPRefusal) -> Void)?
    /// Open client connections across all loops (lingering ones included).
    let openCount = Atomic<Int>(0)

    init(limits: HTTPLimits, continueCheck: ((HTTPRequest, HTTPResponseWriter) -> Bool)?,
         onRefusal: ((HTTPRefusal) -> Void)?, responder: @escaping (consuming HTTPRequest, HTTPResponseWriter) -> Void) {
        self.limits = limits
        self.continueCheck = continueCheck
        self.onRefusal = onRefusal
        self.responder = responder
    }
}

/// The part of a server that lives on one loop: its listener, its connections, a
/// read buffer shared by those connections, and the cached Date line.
/// Confined to the loop's thread; `Sendable` only so it can be named in tasks
/// handed to `EventLoop.execute`.
final class LoopContext: @unchecked Sendable {
    static let readBufferSize = 65536

    let loop: EventLoop
    let shared: ServerShared
    let readBuffer: UnsafeMutableRawPointer
    var dateCache = DateCache()
    /// The TLS context for new connections (nil: plain HTTP). Replaced by
    /// `HTTPServer.reloadTLS()`; open sessions keep the context they started with.
    var tlsContext: TLSContext? = nil
    private var listener: Listener? = nil
    private var connections: [HTTPConnection] = []

    init(loop: EventLoop, shared: ServerShared) {
        self.loop = loop
        self.shared = shared
        readBuffer = UnsafeMutableRawPointer.allocate(byteCount: LoopContext.readBufferSize, alignment: 16)
    }

    deinit { readBuffer.deallocate() }

    func startListening(fd: Int32) throws {
        let l = Listener(fd: fd, context: self)
        try loop.register(fd: fd, events: [.read], handler: l)
        listener = l
    }

    func stopListening() {
        listener?.close()
        listener = nil
    }

    /// Takes a freshly accepted descriptor: counts it against `maxConnections`,
    /// sets `TCP_NODELAY` and registers a connection for it. A descriptor over the
    /// limit, or one that cannot be set up, is refused (see `refuse`).
    func accepted(_ cfd: Int32) {
        let open = shared.openCount.add(1, ordering: .relaxed).newValue
        if open > shared.limits.maxConnections {
            shared.openCount.subtract(1, ordering: .relaxed)
            refuse(cfd, .tooManyConnections)
            return
        }
        Socket.setNoDelay(cfd)
        var session: TLSSession? = nil
        if let tlsContext {
            session = TLSSession(context: tlsContext, fd: cfd)
            if session == nil {
                shared.openCount.subtract(1, ordering: .relaxed)
                refuse(cfd, .connectionSetupFailed)
                return
            }
        }
        let c = HTTPConnection(fd: cfd, context: self, tls: session)
        do {
            try loop.register(fd: cfd, events: [.read], handler: c)
        } catch {
            shared.openCount.subtract(1, ordering: .relaxed)
            refuse(cfd, .connectionSetupFailed)
            return
        }
        c.slot = connections.count
        connections.append(c)
        c.started()
    }

    /// Closes an accepted descriptor the server will not serve and tells the
    /// `onRefusal` observer. For `.tooManyConnections` on a plain-HTTP listener it
    /// first sends the pre-encoded `503` (one non-blocking `send`, best effort),
    /// shuts down writing and discards what the client already sent (into the
    /// loop's read buffer, one non-blocking `read`), so closing does not send a
    /// reset; otherwise it just closes. Allocates nothing but the observer's own
    /// work. Loop thread.
    private func refuse(_ cfd: Int32, _ error: HTTPParseError) {
        var bodyBytes = 0
        if error == .tooManyConnections && tlsContext == nil {
            let response = ResponseEncoder.serviceUnavailable
            let sent = response.withUnsafeBytes { b in send(cfd, b.baseAddress!, b.count, Int32(MSG_NOSIGNAL)) }
            if sent == response.count { bodyBytes = ResponseEncoder.serviceUnavailableBodyBytes }
            Glibc.shutdown(cfd, Int32(SHUT_WR))
            _ = Glibc.read(cfd, readBuffer, LoopContext.readBufferSize)
        }
        Glibc.close(cfd)
        shared.onRefusal?(HTTPRefusal(error: error, method: nil, path: nil, start: loop.now, bytes: bodyBytes,
                                      loop: loop, answered: bodyBytes > 0))
    }

    func remove(_ c: HTTPConnection) {
        let i = c.slot
        guard i >= 0, i < connections.count, connections[i] === c else { return }
        let last = connections.removeLast()
        if last !== c {
            connections[i] = last
            last.slot = i
        }
        c.slot = -1
    }

    func closeIdle() {
        for c in connections { c.closeIfIdle() }
    }

    func closeAll() {
        for c in connections { c.close() }
    }
}

/// A listening socket on one loop. Accepts up to `acceptsPerEvent` connections per
/// readiness event (epoll reports the listener again while more wait); when the
/// process or system runs out of descriptors (or memory) it stops watching the socket
/// for 100 ms instead of spinning on a listener it cannot drain.
final class Listener: IOHandler {
    /// Connections accepted per readiness event: 64 for plain HTTP (an accept costs
    /// microseconds), 4 for TLS, whose handshake starts at once (a ClientHello sent with
    /// the connection is answered: ~1–1.5 ms of signing here). Accepting until `EAGAIN`
    /// let a client that opens connections faster than they are handshaken hold the
    /// loop — its timers and every other connection — for as long as it kept on.
    static let acceptsPerEvent = (plain: 64, tls: 4)
    let fd: Int32
    let context: LoopContext
    private var resumeTimer: LoopTimer? = nil
    private var closed = false

    init(fd: Int32, context: LoopContext) {
        self.fd = fd
        self.context = context
    }

    func ioReady(_ events: IOEvents) {
        var left = context.tlsContext == nil ? Listener.acceptsPerEvent.plain : Listener.acceptsPerEvent.tls
        while !closed && left > 0 {
            left -= 1
            let cfd: Int32?
            do {
                cfd = try Socket.accept(fd)
            } catch {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM or anything unexpected: back off.
                pause()
                return
            }
            guard let cfd else { return }
            context.accepted(cfd)
        }
    }

    private func pause() {
        let loop = context.loop
        try? loop.modify(fd: fd, events: [])
        loop.cancel(resumeTimer)
        resumeTimer = loop.schedule(at: loop.now + .milliseconds(100)) { [weak self] in
            guard let self, !self.closed else { return }
            self.resumeTimer = nil
            try? loop.modify(fd: self.fd, events: [.read])
        }
    }

    func close() {
        guard !closed else { return }
        closed = true
        context.loop.cancel(resumeTimer)
        resumeTimer = nil
        context.loop.unregister(fd: fd)
        Glibc.close(fd)
    }
}

/// An HTTP/1.1 server on an `EventLoopGroup`: one `SO_REUSEPORT` listener per
/// loop, each connection served entirely on the loop that accepted it.
///
/// Requests are handed to `responder` on the connection's loop thread, one at a
/// time per connection and in order (pipelined requests wait for the previous
/// response). Framing errors, over-limit requests and slow heads are answered
/// with an `application/problem+json` body and the connection is closed (see
/// `HTTPRequestParser` and `HTTPLimits`).
///
/// With a `TLSConfiguration` every listener speaks TLS only (OpenSSL, TLS 1.2 or
/// later, ALPN `http/1.1`); handshakes run non-blocking on the loops and must
/// finish within `HTTPLimits.headerTimeout` of the connection's accept, or the
/// connection is closed. A client that does not speak TLS (e.g. plain HTTP) is
/// closed without an answer. `reloadTLS()` swaps in a re-read certificate for
/// new connections.
///
/// The control methods (`start`, `stopAccepting`, `closeIdleConnections`,
/// `shutdown`, `reloadTLS`) are safe from any thread; called from outside the group's loops
/// they return once every loop has done its part (at most 5 s per loop).
public final class HTTPServer: @unchecked Sendable {
    /// The loops the server runs on.
    public let group: EventLoopGroup
    /// The address given at creation (its port may be 0; see `port`).
    public let address: SocketAddress
    /// The limits applied to every connection.
    public let limits: HTTPLimits
    /// The certificate and key when the server speaks TLS; nil for plain HTTP.
    public let tls: TLSConfiguration?

    private let shared: ServerShared
    private let contexts: [LoopContext]
    private let boundPort = Atomic<Int>(0)
    private let started = Atomic<Bool>(false)

    /// Creates a server; nothing is bound until `start()`.
    /// - Parameters:
    ///   - group: the loops to serve on (one listener and share of connections each).
    ///   - address: where to listen; port 0 lets the kernel choose (read `port` after `start()`).
    ///   - limits: parser and connection limits.
    ///   - tls: when set, the server speaks TLS only, with this certificate and key
    ///     (loaded by `start()`). Default: nil, plain HTTP.
    ///   - continueCheck: called on the connection's loop thread with the head (body
    ///     empty) of a request that sent `Expect: 100-continue`, before `100 Continue`
    ///     goes out. Return true after answering it through the writer (now or later,
    ///     exactly once): the body is then never read and the connection closes after
    ///     the answer (RFC 9110 §10.1.1: a server may answer with a final status
    ///     instead). Return false, without touching the writer, to let the body come;
    ///     the request then reaches `responder` as usual. Default nil: always `100`.
    ///   - onRefusal: called on the connection's loop thread after the server itself
    ///     answered a request it could not take — unparseable (`400`), over a limit
    ///     (`413`, `414`, `431`), too slow (`408`), an unsupported version or coding
    ///     (`505`, `501`) — with a problem and a close, without `responder` seeing it
    ///     (for request logs and metrics). Also called once for every connection
    ///     closed at accept time (`503`, no method or path): over `maxConnections`
    ///     (after a best-effort `503` on plain HTTP; a TLS listener sends nothing and
    ///     reports `answered == false`) or that could not be set up (nothing sent).
    ///     It runs on the accepting loop under overload too, so it must be cheap and
    ///     must not block. Default nil.
    ///   - responder: called on the connection's loop thread for every complete
    ///     request; must eventually call `respond` on the writer exactly once. It
    ///     may answer later (after timers or other I/O); the connection waits.
    public init(group: EventLoopGroup, address: SocketAddress, limits: HTTPLimits,
                tls: TLSConfiguration? = nil,
                continueCheck: ((HTTPRequest, HTTPResponseWriter) -> Bool)? = nil,
                onRefusal: ((HTTPRefusal) -> Void)? = nil,
                responder: @escaping (consuming HTTPRequest, HTTPResponseWriter) -> Void) {
        self.group = group
        self.address = address
        self.limits = limits
        self.tls = tls
        let shared = ServerShared(limits: limits, continueCheck: continueCheck, onRefusal: onRefusal, responder: responder)
        self.shared = shared
        self.contexts = group.loops.map { LoopContext(loop: $0, shared: shared) }
    }

    /// Binds one `SO_REUSEPORT` listener per loop and starts accepting. With port 0
    /// the first listener lets the kernel choose and the others reuse that port.
    /// With TLS it first loads the certificate and key (and ignores `SIGPIPE`
    /// process-wide, since OpenSSL writes with plain `write(2)`). Call once.
    /// - Throws: `TLSError` when the certificate or key cannot be read or parsed
    ///   or do not match; `SystemError` from `socket`, `bind`, `listen` or
    ///   `epoll_ctl` (e.g. `EADDRINUSE`). Nothing stays bound then.
    public func start() throws {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else {
            throw SystemError(errno: EALREADY, call: "HTTPServer.start")
        }
        let tlsContext: TLSContext?
        do {
            tlsContext = try tls.map { try TLSContext($0) }
        } catch {
            started.store(false, ordering: .releasing)
            throw error
        }
        if tlsContext != nil { Socket.ignoreSIGPIPE() }
        var fds: [Int32] = []
        var port = address.port
        do {
            for _ in contexts {
                let (fd, p) = try Socket.listen(SocketAddress(host: address.host, port: port), reusePort: true)
                fds.append(fd)
                port = p
            }
        } catch {
            for fd in fds { Glibc.close(fd) }
            started.store(false, ordering: .releasing)
            throw error
        }
        boundPort.store(Int(port), ordering: .releasing)
        let failure = Locked<SystemError?>(nil)
        let listenFDs = fds
        let indexOf = Dictionary(uniqueKeysWithValues: contexts.enumerated().map { (ObjectIdentifier($0.element), $0.offset) })
        onEachLoop { ctx in
            let fd = listenFDs[indexOf[ObjectIdentifier(ctx)]!]
            ctx.tlsContext = tlsContext
            do {
                try ctx.startListening(fd: fd)
            } catch {
                Glibc.close(fd)
                failure.withLock { $0 = (error as? SystemError) ?? SystemError(errno: EINVAL, call: "epoll_ctl") }
            }
        }
        if let e = failure.withLock({ $0 }) {
            shutdown()
            throw e
        }
    }

    /// Re-reads the TLS certificate and key from `tls`'s paths (e.g. on `SIGHUP`
    /// after a renewal) and uses them for connections accepted from now on; open
    /// connections keep their session. Does nothing for a plain-HTTP server or
    /// before `start()`. Safe from any thread; returns once every loop has
    /// switched.
    /// - Throws: `TLSError` when the new files cannot be loaded or do not match;
    ///   the server then keeps serving the previous certificate.
    public func reloadTLS() throws {
        guard let tls, started.load(ordering: .acquiring) else { return }
        let fresh = try TLSContext(tls)
        onEachLoop { $0.tlsContext = fresh }
    }

    /// The bound TCP port; valid after `start()` returned (0 before).
    public var port: UInt16 { UInt16(truncatingIfNeeded: boundPort.load(ordering: .acquiring)) }

    /// The number of open client connections across all loops. Safe from any thread.
    public var openConnections: Int { shared.openCount.load(ordering: .relaxed) }

    /// Closes the listeners: new connections are refused by the kernel; open ones
    /// go on. Safe from any thread.
    public func stopAccepting() {
        onEachLoop { $0.stopListening() }
    }

    /// Closes keep-alive connections that have no request in progress; a busy one
    /// answers its current request with `Connection: close` and closes then (so do
    /// connections in the middle of receiving a request). Safe from any thread.
    public func closeIdleConnections() {
        onEachLoop { $0.closeIdle() }
    }

    /// Stops accepting and closes every connection at once; responses still to
    /// come are ignored (their writers report `isOpen == false`). Safe from any thread.
    public func shutdown() {
        onEachLoop { ctx in
            ctx.stopListening()
            ctx.closeAll()
        }
    }

    /// Runs `body` on every loop; waits for them unless called from one of them.
    private func onEachLoop(_ body: @escaping @Sendable (LoopContext) -> Void) {
        let onLoop = contexts.contains { $0.loop.inEventLoop }
        let done = DispatchSemaphore(value: 0)
        var waits = 0
        for ctx in contexts {
            if ctx.loop.inEventLoop {
                body(ctx)
            } else {
                waits += 1
                ctx.loop.execute {
                    body(ctx)
                    done.signal()
                }
            }
        }
        if !onLoop {
            for _ in 0..<waits { _ = done.wait(timeout: .now() + .seconds(5)) }
        }
    }
}
