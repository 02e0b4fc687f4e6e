import CLinux
import EventLoop
import Glibc

/// Handed to the responder with each request: the one way to answer it.
///
/// Respond exactly once. `respond(_:)` may be called from any thread (it hops to
/// `loop`); the other members are for `loop`'s thread only. A writer whose
/// connection has gone (peer closed, reset, server shut down) ignores `respond`.
///
/// A writer keeps its connection (and through it the server's per-loop state)
/// alive, so let go of it once answered: one kept in state the responder itself
/// captures is a reference cycle that outlives the server.
public final class HTTPResponseWriter: @unchecked Sendable {
    /// The loop that owns the connection; the responder runs on it.
    public let loop: EventLoop
    let connection: HTTPConnection
    var responded = false
    private var closeRequested: Bool

    init(connection: HTTPConnection, loop: EventLoop, closeAfterResponse: Bool) {
        self.connection = connection
        self.loop = loop
        self.closeRequested = closeAfterResponse
    }

    /// Sends `response` (see `HTTPResponse` for what the encoder adds). The first
    /// call wins; later calls, and calls after the connection closed, are ignored.
    /// Safe from any thread: off the loop thread it is forwarded with `loop.execute`.
    public func respond(_ response: HTTPResponse) {
        guard loop.inEventLoop else {
            loop.execute { self.respond(response) }
            return
        }
        guard !responded else { return }
        connection.respond(from: self, response)
    }

    /// Whether the client connection is still open: false once it is gone (peer
    /// close or reset, a write error, server shutdown), after which `respond` is
    /// ignored. Loop thread only.
    public var isOpen: Bool { !connection.closed }

    /// Whether the connection closes after this response (`Connection: close` is
    /// sent). Initially true when the request did not ask for keep-alive; set it to
    /// true to close (e.g. while draining). Always true once the server is closing
    /// idle connections. Loop thread only.
    public var closeAfterResponse: Bool {
        get { closeRequested || connection.draining }
        set { closeRequested = newValue }
    }
}

/// One client connection: reads and parses requests, hands them to the responder
/// one at a time, writes the responses in order, and enforces the timeouts.
/// Confined to its loop's thread (all methods are called from within the loop).
///
/// The transport is the socket itself or, on a TLS listener, a `TLSSession` over
/// it: `receive` and `transmit` check `tls` once per call and otherwise share all
/// of the connection's logic. A TLS connection first completes its handshake
/// (`handshakeStep`), within `headerTimeout` of the accept.
final class HTTPConnection: IOHandler, DeferredWriter {
    enum TimerKind { case none, handshake, idle, head, body, write, linger }

    let fd: Int32
    let context: LoopContext
    let loop: EventLoop
    var slot = -1
    /// The TLS session; nil on a plain-HTTP connection.
    private let tls: TLSSession?
    private var parser: HTTPRequestParser
    private let limits: HTTPLimits

    private(set) var closed = false
    /// A request is with the responder; no further request is parsed until it answers.
    private var awaiting = false
    private var writer: HTTPResponseWriter? = nil
    private var requestIsHEAD = false
    private var requestVersionMinor = 1
    /// Set by `HTTPServer.closeIdleConnections()`: close after the current response.
    private(set) var draining = false

    private var out: [UInt8] = []
    private var outStart = 0
    /// Output is waiting for the socket to become writable.
    private var outPending = false
    /// A response is in `out`, to be written with the loop's write burst (`writeDeferred`).
    private var flushQueued = false
    /// Output not written yet: queued for the loop's write burst, or waiting for the
    /// socket. No further request is parsed meanwhile.
    private var outputBusy: Bool { outPending || flushQueued }
    private var closeAfterFlush = false
    private var lingering = false

    /// Bytes received but not parsed yet (pipelined requests read while busy).
    private var pend: [UInt8] = []
    private var pendStart = 0
    /// When the bytes of `pend` were read, in order: each entry covers `pend` up to
    /// `end` (exclusive) and holds that read's `readAt`. A request parsed from `pend`
    /// is dated by the read that brought its last byte, not by a later one.
    private var pendReads: [(end: Int, at: Instant)] = []
    private var pendReadIndex = 0
    private var readPaused = false
    /// The last read came back short or would have blocked, and epoll has not
    /// reported the socket readable since: reading now would be a wasted system
    /// call (one per keep-alive request, after each response). Plain sockets only;
    /// epoll is level-triggered, so a wrong `true` costs one loop iteration, never a hang.
    private var drained = false
    private var interest: IOEvents = [.read]
    /// Requests dispatched in this turn — since the socket was last reported readable,
    /// or since a turn deferred with requests still buffered began (`nextTurn`): `drive`
    /// runs again after each write burst, and a pipeline answered at once would otherwise
    /// never yield to other connections.
    private var turnServed = 0
    /// When the bytes of the latest read became ready (`EventLoop.eventsReadySince`);
    /// a request completed by them is stamped with it (`HTTPRequest.receivedAt`), one
    /// completed by buffered bytes with the time of their own read (`pendReads`).
    private var readAt = Instant(nanoseconds: 0)
    private var processing = false

    private var timer: LoopTimer? = nil
    private var timerKind: TimerKind = .none
    private var deadline = Instant.distantFuture

    /// Most bytes buffered from a client while its previous request is in progress.
    private static let pendingCap = 65536
    /// Most requests served from the socket and its buffer in one go before yielding to
    /// other connections. A turn begins with a readiness event (or, for requests already
    /// buffered, after the loop's next round of events) and spans the write bursts that
    /// answer its requests (`turnServed`).
    static let requestsPerTurn = 32
    /// How long a closing connection drains the client's input (see `finishClose`).
    private static let lingerTime: Duration = .seconds(2)

    init(fd: Int32, context: LoopContext, tls: TLSSession? = nil) {
        self.fd = fd
        self.context = context
        self.loop = context.loop
        self.limits = context.shared.limits
        self.parser = HTTPRequestParser(limits: context.shared.limits)
        self.tls = tls
    }

    /// Called once registered: a new connection gets `headerTimeout` to send its
    /// first byte, a TLS one to complete its handshake (tried at once: the
    /// ClientHello has often arrived with the accept).
    func started() {
        if let tls {
            setTimer(.handshake, loop.now + limits.headerTimeout)
            handshakeStep(tls)
        } else {
            setTimer(.idle, loop.now + limits.headerTimeout)
        }
    }

    // MARK: - Transport

    // The TLS side of each check is kept out of line (`@inline(never)`), so the
    // plain path pays one load and compare and no register pressure for it.

    /// Reads from the socket or the TLS session.
    /// - Returns: a byte count (> 0), 0 at end of input, or a `TransportIO` code.
    @inline(__always)
    private func receive(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
        if _slowPath(tls != nil) { return tlsReceive(buffer, count) }
        while true {
            let n = Glibc.read(fd, buffer, count)
            if n >= 0 { return n }
            let e = CLinux_errno()
            if e == EINTR { continue }
            return e == EAGAIN || e == EWOULDBLOCK ? TransportIO.wouldBlock : TransportIO.failed
        }
    }

    /// Writes to the socket or the TLS session (`count` > 0).
    /// - Returns: a byte count (> 0) or a `TransportIO` code.
    @inline(__always)
    private func transmit(_ bytes: UnsafeRawPointer, _ count: Int) -> Int {
        if _slowPath(tls != nil) { return tlsTransmit(bytes, count) }
        while true {
            let n = send(fd, bytes, count, Int32(MSG_NOSIGNAL))
            if n > 0 { return n }
            let e = CLinux_errno()
            if n < 0 && e == EINTR { continue }
            return n < 0 && (e == EAGAIN || e == EWOULDBLOCK) ? TransportIO.wouldBlock : TransportIO.failed
        }
    }

    @inline(never)
    private func tlsReceive(_ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
        tls!.read(buffer, count)
    }

    @inline(never)
    private func tlsTransmit(_ bytes: UnsafeRawPointer, _ count: Int) -> Int {
        tls!.write(bytes, count)
    }

    /// Whether the TLS session holds decrypted bytes epoll cannot report.
    @inline(never)
    private func tlsHasDecrypted() -> Bool {
        tls!.hasDecrypted
    }

    /// The TLS part of `ioReady`: runs the handshake, or turns readiness in the
    /// other direction into a retry of the call that waited for it.
    /// - Returns: the events to handle, or nil when the handshake took them.
    @inline(never)
    private func tlsReady(_ events: IOEvents) -> IOEvents? {
        let tls = tls!
        if !tls.established {
            handshakeStep(tls)
            return nil
        }
        var events = events
        if tls.readNeedsWritable || tls.writeNeedsReadable {
            if tls.readNeedsWritable && events.contains(.write) {
                tls.readNeedsWritable = false
                events.insert(.read)
            }
            if tls.writeNeedsReadable && events.contains(.read) {
                tls.writeNeedsReadable = false
                events.insert(.write)
            }
            updateInterest()
        }
        return events
    }

    /// Advances the TLS handshake; once done, waits for the first request
    /// (`headerTimeout` again) and serves what already arrived.
    private func handshakeStep(_ tls: TLSSession) {
        switch tls.handshake() {
        case .done:
            updateInterest()
            setTimer(.idle, loop.now + limits.headerTimeout)
            drive()
        case .again:
            updateInterest()
        case .failed:
            close()
        }
    }

    // MARK: - Events

    func ioReady(_ events: IOEvents) {
        if closed { return }
        if lingering {
            lingerRead()
            return
        }
        if events.contains(.error) || events.contains(.hangup) {
            close()
            return
        }
        var events = events
        if _slowPath(tls != nil) {
            guard let e = tlsReady(events) else { return }
            events = e
        }
        if events.contains(.write) && outPending {
            if flush() { outputFlushed() }
            if closed { return }
        }
        if events.contains(.read) {
            drained = false
            turnServed = 0
            if awaiting || outputBusy {
                busyRead()
            } else {
                drive()
            }
        }
    }

    /// Parses and dispatches requests while the connection is free, reading from the
    /// socket when the buffered bytes run out. Never re-entered: a response given
    /// synchronously by the responder lets the running loop continue.
    private func drive() {
        if processing || closed { return }
        processing = true
        defer { processing = false }
        var yielded = false
        let buf = context.readBuffer
        let bufSize = LoopContext.readBufferSize
        loop: while !closed && !awaiting && !outputBusy && !lingering {
            // The turn's limit holds for buffered requests too: a pipeline answered at
            // once is served from `pend` by the write bursts, which would otherwise go on
            // until it is empty before the loop gets back to other connections.
            if turnServed >= HTTPConnection.requestsPerTurn {
                yielded = true
                break
            }
            if pendStart < pend.count {
                let r = pend.withUnsafeBytes { parser.parse(UnsafeRawBufferPointer(rebasing: $0[pendStart...])) }
                switch consume r {
                case .needMore:
                    clearPending()
                case .request(let req, let consumed):
                    pendStart += consumed
                    let at = pendReadTime(endingAt: pendStart)
                    if pendStart == pend.count { clearPending() }
                    turnServed += 1
                    dispatch(req, receivedAt: at)
                case .expectContinue(let consumed):
                    pendStart += consumed
                    expectContinue()
                case .error(let e):
                    fail(e)
                }
                continue
            }
            if readPaused {
                readPaused = false
                drained = false
                updateInterest()
            }
            if drained { break loop }
            let n = receive(buf, bufSize)
            if n > 0 {
                readAt = arrivalOfLatestRead()
                var off = 0
                while off < n {
                    switch parser.parse(UnsafeRawBufferPointer(start: buf + off, count: n - off)) {
                    case .needMore:
                        off = n
                    case .request(let req, let consumed):
                        off += consumed
                        keepPending(buf + off, n - off)
                        off = n
                        turnServed += 1
                        dispatch(req, receivedAt: readAt)
                    case .expectContinue(let consumed):
                        off += consumed
                        keepPending(buf + off, n - off)
                        off = n
                        expectContinue()
                    case .error(let e):
                        fail(e)
                        return
                    }
                }
                // A short read means the socket is drained; epoll reports any more
                // (but not bytes a TLS session already took from the socket).
                if n < bufSize && pendStart == pend.count && !awaiting && !outputBusy {
                    if _slowPath(tls != nil) && tlsHasDecrypted() { continue }
                    drained = tls == nil
                    break loop
                }
                if n < bufSize { drained = tls == nil }
            } else if n == 0 {
                // The client closed: mid-request or between requests, nothing to answer.
                close()
                return
            } else if n == TransportIO.wouldBlock {
                drained = tls == nil
                break loop
            } else if n == TransportIO.wouldBlockOther {
                updateInterest()
                break loop
            } else {
                close()
                return
            }
        }
        if yielded && !closed && !awaiting && !outputBusy && !lingering
            && (pendStart < pend.count || readPaused || (tls != nil && tlsHasDecrypted())) {
            // Yielded after `requestsPerTurn` with requests buffered (or decrypted bytes
            // waiting) that epoll cannot report, or with reading still paused (the buffer
            // ran out just as the turn ended: epoll watches nothing on the socket): a new
            // turn after the next round of events. (Held strongly until then: a weak
            // reference would give every connection a side table, slowing each retain
            // and release of it.)
            loop.deferUntilEndOfIteration { self.nextTurn() }
        }
        if !closed && !awaiting && !outputBusy && !lingering { armReadTimer() }
    }

    /// A turn that was not begun by a readiness event (see `drive`).
    private func nextTurn() {
        turnServed = 0
        drive()
    }

    /// Chooses the timer while waiting for request bytes.
    private func armReadTimer() {
        switch parser.phase {
        case .idle:
            if timerKind != .idle { setTimer(.idle, loop.now + limits.idleTimeout) }
        case .head:
            // SPEC §7: a deadline for the whole head, counted from its first byte.
            if timerKind != .head { setTimer(.head, loop.now + limits.headerTimeout) }
        case .body:
            setTimer(.body, loop.now + limits.idleTimeout)
        }
    }

    /// When the bytes just read arrived. The loop's `eventsReadySince` bounds it from
    /// below, within one iteration; when the loop ran longer than
    /// `arrivalUncertaintyLimit` since its last wait (a stall, or a very long iteration
    /// under load), that bound may be far earlier than the bytes — dating a request by
    /// it would spend its wait budget before it was sent —, and the kernel's time of
    /// the socket's last received data (`TCP_INFO`, 1–10 ms resolution) dates them
    /// instead. A system call only then.
    private func arrivalOfLatestRead() -> Instant {
        let since = loop.eventsReadySince
        guard loop.now.nanoseconds &- since.nanoseconds > HTTPConnection.arrivalUncertaintyLimit,
              let ms = Socket.millisecondsSinceLastDataReceived(fd) else { return since }
        let now = Instant.now()
        let estimate = Instant(nanoseconds: now.nanoseconds &- min(UInt64(ms) &* 1_000_000, now.nanoseconds))
        return max(since, estimate)
    }

    /// How far (in nanoseconds, 5 ms) `EventLoop.eventsReadySince` may lie before the
    /// loop's time for a read to be dated by it alone (see `arrivalOfLatestRead`).
    static let arrivalUncertaintyLimit: UInt64 = 5_000_000

    /// Buffers bytes of the latest read (dated `readAt`).
    private func keepPending(_ p: UnsafeMutableRawPointer, _ count: Int) {
        guard count > 0 else { return }
        pend.append(contentsOf: UnsafeRawBufferPointer(start: p, count: count))
        if let last = pendReads.last, last.at == readAt {
            pendReads[pendReads.count - 1].end = pend.count
        } else {
            pendReads.append((pend.count, readAt))
        }
    }

    /// When the buffered byte before offset `end` of `pend` was read.
    private func pendReadTime(endingAt end: Int) -> Instant {
        while pendReadIndex < pendReads.count - 1 && pendReads[pendReadIndex].end < end { pendReadIndex += 1 }
        return pendReadIndex < pendReads.count ? pendReads[pendReadIndex].at : readAt
    }

    private func clearPending() {
        if pend.capacity > HTTPConnection.pendingCap * 2 { pend = [] } else { pend.removeAll(keepingCapacity: true) }
        pendStart = 0
        pendReads.removeAll(keepingCapacity: true)
        pendReadIndex = 0
    }

    /// Reads while a request is in progress: buffers pipelined bytes up to a cap,
    /// then stops reading (backpressure). End of input here means the client gave up.
    private func busyRead() {
        let buf = context.readBuffer
        let bufSize = LoopContext.readBufferSize
        while true {
            if pend.count - pendStart >= HTTPConnection.pendingCap {
                readPaused = true
                updateInterest()
                return
            }
            let n = receive(buf, bufSize)
            if n > 0 {
                readAt = arrivalOfLatestRead()
                keepPending(buf, n)
                // Bytes a TLS session keeps are read when the connection is free again.
                if n < bufSize {
                    drained = tls == nil
                    return
                }
            } else if n == 0 {
                close()
                return
            } else {
                if n == TransportIO.wouldBlock { drained = tls == nil }
                if n == TransportIO.wouldBlockOther { updateInterest() }
                if n == TransportIO.failed { close() }
                return
            }
        }
    }

    // MARK: - Requests and responses

    private func dispatch(_ request: consuming HTTPRequest, receivedAt: Instant) {
        request.receivedAt = receivedAt
        awaiting = true
        timerKind = .none
        requestIsHEAD = request.method == "HEAD"
        requestVersionMinor = request.versionMinor
        let w = HTTPResponseWriter(connection: self, loop: loop, closeAfterResponse: !request.keepAlive)
        writer = w
        context.shared.responder(request, w)
    }

    func respond(from w: HTTPResponseWriter, _ response: HTTPResponse) {
        guard !closed, awaiting, writer === w else { return }
        let close = w.closeAfterResponse
        w.responded = true
        writer = nil
        awaiting = false
        closeAfterFlush = close
        // No head or body deadline while the response is queued (a continue check that
        // refused a head at once leaves the head timer armed): the flush sets the next.
        timerKind = .none
        ResponseEncoder.encode(response, into: &out, isHEAD: requestIsHEAD, keepAlive: !close,
                               versionMinor: requestVersionMinor, dateLine: context.dateCache.line())
        // Written with the loop's other output of this iteration (`EventLoop.deferWrite`);
        // the connection goes on with its next request once it is out.
        if !flushQueued {
            flushQueued = true
            loop.deferWrite(self)
        }
    }

    /// The loop's write burst: writes the queued response (and any output before it).
    func writeDeferred() {
        flushQueued = false
        guard !closed, !outPending else { return }
        if flush() { outputFlushed() }
    }

    /// The head asked for `100 Continue`. The server's `continueCheck` may answer from
    /// the head alone — the body is then never read and the connection closes after
    /// the answer (RFC 9110 §10.1.1) —; otherwise the client is told to send the body.
    private func expectContinue() {
        if let check = context.shared.continueCheck, let head = parser.pendingHead {
            let w = HTTPResponseWriter(connection: self, loop: loop, closeAfterResponse: true)
            awaiting = true
            writer = w
            requestIsHEAD = head.method == "HEAD"
            requestVersionMinor = head.versionMinor
            if check(head, w) {
                // To be answered later: no head or body timeout meanwhile. (Answered
                // already, `respond` cleared the timer; the flush sets the linger timer.)
                if awaiting { timerKind = .none }
                return
            }
            awaiting = false
            writer = nil
        }
        sendContinue()
    }

    private func sendContinue() {
        out.append(contentsOf: ResponseEncoder.continueBytes)
        _ = flush()
    }

    /// Answers a parse error or timeout with a problem and closes; tells the server's
    /// `onRefusal` observer.
    private func fail(_ e: HTTPParseError) {
        guard !closed else { return }
        // The request began when its head timer was armed (from its first byte), else
        // (a body, or between requests) it is taken as now.
        let start = timerKind == .head ? deadline + (.zero - limits.headerTimeout) : loop.now
        closeAfterFlush = true
        timerKind = .none
        let response = e.response
        ResponseEncoder.encode(response, into: &out, isHEAD: false, keepAlive: false,
                               versionMinor: 1, dateLine: context.dateCache.line())
        if let observe = context.shared.onRefusal {
            let head = parser.methodAndPath
            observe(HTTPRefusal(error: e, method: head?.method, path: head?.path, start: start,
                                bytes: response.body.count, loop: loop))
        }
        if flush() { outputFlushed() }
    }

    /// Everything buffered has been written: close, or go on with the next request.
    private func outputFlushed() {
        if closeAfterFlush {
            finishClose()
        } else {
            drive()
            // A drain that began while the response was queued found this connection busy.
            if draining { closeIfIdle() }
        }
    }

    /// Writes buffered output.
    /// - Returns: true when all of it was written; false when waiting for
    ///   writability (or the connection closed on a write error).
    private func flush() -> Bool {
        while outStart < out.count {
            let n = out.withUnsafeBytes { b in transmit(b.baseAddress! + outStart, b.count - outStart) }
            if n > 0 {
                outStart += n
                if outPending { setTimer(.write, loop.now + limits.idleTimeout) }
                continue
            }
            if n == TransportIO.wouldBlock || n == TransportIO.wouldBlockOther {
                if !outPending || n == TransportIO.wouldBlockOther {
                    outPending = true
                    updateInterest()
                }
                setTimer(.write, loop.now + limits.idleTimeout)
                return false
            }
            close()
            return false
        }
        if out.capacity > 262_144 { out = [] } else { out.removeAll(keepingCapacity: true) }
        outStart = 0
        if outPending {
            outPending = false
            updateInterest()
        }
        return true
    }

    // MARK: - Closing

    /// Closes after a final response: sends FIN, then drains the client's input for
    /// a short while (nginx's lingering close) so unread request bytes do not turn
    /// into a reset that could destroy the response before the client reads it.
    private func finishClose() {
        guard !closed else { return }
        tls?.sendCloseNotify()
        Glibc.shutdown(fd, Int32(SHUT_WR))
        lingering = true
        readPaused = false
        clearPending()
        updateInterest()
        setTimer(.linger, loop.now + HTTPConnection.lingerTime)
        lingerRead()
    }

    private func lingerRead() {
        let buf = context.readBuffer
        while !closed {
            let n = Glibc.read(fd, buf, LoopContext.readBufferSize)
            if n > 0 { continue }
            if n < 0 {
                let e = CLinux_errno()
                if e == EINTR { continue }
                if e == EAGAIN || e == EWOULDBLOCK { return }
            }
            close()
        }
    }

    /// Closes now if no request is in progress; otherwise after the current response.
    func closeIfIdle() {
        guard !closed else { return }
        draining = true
        if !awaiting && !outputBusy && !lingering && parser.phase == .idle && pendStart == pend.count {
            close()
        }
    }

    /// Writes what the socket takes of a queued response, without waiting or closing.
    private func writeQueuedBestEffort() {
        flushQueued = false
        while outStart < out.count {
            let n = out.withUnsafeBytes { b in transmit(b.baseAddress! + outStart, b.count - outStart) }
            if n <= 0 { return }
            outStart += n
        }
    }

    /// Closes the descriptor at once; the responder's writer stops accepting a response.
    func close() {
        guard !closed else { return }
        // A response already given but still queued for the loop's write burst goes out
        // first, as it did when responses were written at once (shutdown, a client's end
        // of input or a reset seen in the same iteration): best effort, what the socket
        // takes now.
        if flushQueued { writeQueuedBestEffort() }
        closed = true
        loop.cancel(timer)
        timer = nil
        timerKind = .none
        writer = nil
        loop.unregister(fd: fd)
        tls?.close()
        Glibc.close(fd)
        context.remove(self)
        context.shared.openCount.subtract(1, ordering: .relaxed)
    }

    private func updateInterest() {
        var want: IOEvents = []
        if lingering {
            want = [.read]
        } else {
            if !readPaused { want.insert(.read) }
            if outPending { want.insert(.write) }
            if let tls {
                if tls.readNeedsWritable { want.insert(.write) }
                if tls.writeNeedsReadable { want.insert(.read) }
            }
        }
        if want != interest {
            interest = want
            do { try loop.modify(fd: fd, events: want) } catch { close() }
        }
    }

    // MARK: - Timers

    /// Sets the connection's single deadline. The loop timer is moved only when the
    /// new deadline is earlier; a later one is picked up when the timer fires, so the
    /// common case (pushing the idle deadline back after each response) costs nothing.
    private func setTimer(_ kind: TimerKind, _ at: Instant) {
        timerKind = kind
        deadline = at
        if let t = timer, t.isScheduled {
            if t.deadline <= at { return }
            loop.cancel(t)
        }
        timer = loop.schedule(at: at) { self.timerFired() }
    }

    private func timerFired() {
        timer = nil
        guard !closed, timerKind != .none else { return }
        if loop.now < deadline {
            timer = loop.schedule(at: deadline) { self.timerFired() }
            return
        }
        switch timerKind {
        case .head, .body:
            // RFC 9110 §15.5.9: 408, then close.
            fail(.requestTimeout)
        case .handshake, .idle, .write, .linger, .none:
            close()
        }
    }
}
