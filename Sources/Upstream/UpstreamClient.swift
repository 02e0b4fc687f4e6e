private import CCurl
import EventLoop
import Glibc

/// libcurl's process-wide initialisation, done once before any handle exists.
private let curlGlobalInit: Bool = {
    curl_global_init(Int(CURL_GLOBAL_ALL))
    return true
}()

/// An HTTP client for one `EventLoop`, built on libcurl's multi interface and
/// driven by that loop: curl tells us which sockets to watch
/// (`CURLMOPT_SOCKETFUNCTION`) and when to wake it (`CURLMOPT_TIMERFUNCTION`),
/// and the loop calls `curl_multi_socket_action` when they are ready. No thread
/// per call and no polling. Easy handles are pooled and upstream connections
/// are kept alive and reused by the multi handle's connection cache.
///
/// All methods are called from within the loop's thread; completions run there too.
public final class UpstreamClient: @unchecked Sendable {
    /// The loop that drives this client.
    public let loop: EventLoop
    fileprivate let multi: UnsafeMutableRawPointer
    private var sockets: [Int32: CurlSocket] = [:]
    private var timer: LoopTimer?
    /// curl asked to be called "as soon as possible" (timeout 0): done at the end of
    /// the loop iteration instead of through a timer.
    private var immediateWanted = false
    private var immediateQueued = false
    private var freeHandles: [PooledEasy] = [] { didSet { handleCounters.setIdle(freeHandles.count) } }
    /// Transfers in flight (for tests and metrics).
    public private(set) var activeTransfers = 0 { didSet { handleCounters.setInFlight(activeTransfers) } }
    /// Easy-handle accounting, read through `handleStats` (UpstreamClient+Stats.swift).
    let handleCounters: UpstreamHandleCounters
    private var processing = false

    /// Creates the client and its multi handle on `loop`.
    /// - Parameter maxConnectionsPerHost: cap on parallel connections to one host
    ///   (0 = unlimited, the default).
    public init(loop: EventLoop, maxConnectionsPerHost: Int = 0) {
        _ = curlGlobalInit
        self.loop = loop
        handleCounters = UpstreamHandleCounters(loop: loop)
        multi = curl_multi_init()
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = CCurl_multi_setopt_socketfunction(multi, { _, s, what, userp, _ in
            Unmanaged<UpstreamClient>.fromOpaque(userp!).takeUnretainedValue().socketChanged(s, what: what)
            return 0
        })
        _ = CCurl_multi_setopt_pointer(multi, CURLMOPT_SOCKETDATA, me)
        _ = CCurl_multi_setopt_timerfunction(multi, { _, ms, userp in
            Unmanaged<UpstreamClient>.fromOpaque(userp!).takeUnretainedValue().timerChanged(ms)
            return 0
        })
        _ = CCurl_multi_setopt_pointer(multi, CURLMOPT_TIMERDATA, me)
        if maxConnectionsPerHost > 0 {
            _ = CCurl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxConnectionsPerHost)
        }
        _ = CCurl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, 1024)
    }

    deinit {
        loop.cancel(timer)
        for (fd, _) in sockets { loop.unregister(fd: fd) }
        sockets.removeAll()
        for h in freeHandles { curl_easy_cleanup(h.easy) }
        handleCounters.handlesCleanedUp(freeHandles.count)
        curl_multi_cleanup(multi)
    }

    /// A new easy handle with the options every transfer shares; the per-transfer
    /// ones are set by `UpstreamTransfer.configure` (no `curl_easy_reset` between uses).
    private func makeHandle() -> PooledEasy {
        let h = curl_easy_init()!
        handleCounters.handleCreated()
        _ = CCurl_easy_setopt_string(h, CURLOPT_PROTOCOLS_STR, "http,https")
        _ = CCurl_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = CCurl_easy_setopt_long(h, CURLOPT_FOLLOWLOCATION, 0)
        _ = CCurl_easy_setopt_datafunction(h, CURLOPT_WRITEFUNCTION, { ptr, size, n, ud in
            let t = Unmanaged<UpstreamTransfer>.fromOpaque(ud!).takeUnretainedValue()
            return t.received(body: UnsafeRawBufferPointer(start: ptr, count: size * n))
        })
        _ = CCurl_easy_setopt_datafunction(h, CURLOPT_HEADERFUNCTION, { ptr, size, n, ud in
            let t = Unmanaged<UpstreamTransfer>.fromOpaque(ud!).takeUnretainedValue()
            t.received(headerLine: UnsafeRawBufferPointer(start: ptr, count: size * n))
            return size * n
        })
        // Told when curl closes a socket, so a parked (still registered) one is forgotten.
        _ = CCurl_easy_setopt_closesocketfunction(h, { clientp, fd in
            Unmanaged<UpstreamClient>.fromOpaque(clientp!).takeUnretainedValue().socketClosing(fd)
            return close(fd)
        })
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_CLOSESOCKETDATA, Unmanaged.passUnretained(self).toOpaque())
        return PooledEasy(easy: h)
    }

    /// Starts one attempt. `completion` runs exactly once on the loop thread,
    /// never before `send` returns — unless the transfer is cancelled first.
    /// - Returns: the transfer, which can be cancelled.
    @discardableResult
    public func send(_ request: UpstreamRequest, completion: @escaping (UpstreamResult) -> Void) -> UpstreamTransfer {
        let pooled = freeHandles.popLast() ?? makeHandle()
        let easy = pooled.easy
        let t = UpstreamTransfer(client: self, pooled: pooled, request: request, completion: completion)
        let remainingMs = (request.deadline - loop.now).milliseconds
        if remainingMs <= 0 {
            // Already past the deadline: fail without touching the network.
            freeHandles.append(pooled)
            t.easy = nil
            loop.deferUntilEndOfIteration { t.finish(.failure(UpstreamFailure(kind: .timeout, message: "deadline passed before the attempt started"))) }
            return t
        }
        if let failure = t.configure(remainingMs: remainingMs) {
            freeHandles.append(pooled)
            t.easy = nil
            loop.deferUntilEndOfIteration { t.finish(.failure(failure)) }
            return t
        }
        t.retainForCurl()
        activeTransfers += 1
        curl_multi_add_handle(multi, easy)
        return t
    }

    fileprivate func release(_ t: UpstreamTransfer) {
        guard t.easy != nil else { return }
        curl_multi_remove_handle(multi, t.pooled.easy)
        t.easy = nil
        freeHandles.append(t.pooled)
        activeTransfers -= 1
        t.releaseFromCurl()
    }

    // MARK: curl → loop

    // A kept-alive connection goes back to curl's cache after every transfer: curl
    // says REMOVE, and ADDs the same socket again for the next transfer. Instead of
    // an epoll_ctl DEL + ADD pair per transfer, a socket watched for reading only
    // stays registered ("parked"): it is re-armed without a system call when curl
    // wants it again, dropped (DEL) if it becomes ready while parked (the peer closed
    // it), and forgotten when curl closes it (CURLOPT_CLOSESOCKETFUNCTION; closing
    // removes it from epoll).
    private func socketChanged(_ fd: Int32, what: Int32) {
        if what == CURL_POLL_REMOVE {
            guard let s = sockets[fd] else { return }
            if s.events == .read && !s.parked {
                s.parked = true
            } else {
                sockets.removeValue(forKey: fd)
                loop.unregister(fd: fd)
            }
            return
        }
        var events: IOEvents = []
        if what & CURL_POLL_IN != 0 { events.insert(.read) }
        if what & CURL_POLL_OUT != 0 { events.insert(.write) }
        if let s = sockets[fd] {
            s.parked = false
            if s.events == events { return }  // skip epoll_ctl calls that change nothing
            s.events = events
            do { try loop.modify(fd: fd, events: events) } catch {
                try? loop.register(fd: fd, events: events, handler: s)
            }
        } else {
            let s = CurlSocket(client: self, fd: fd, events: events)
            sockets[fd] = s
            try? loop.register(fd: fd, events: events, handler: s)
        }
    }

    /// curl is about to close `fd`: a parked socket is still registered; forget it
    /// (closing removes it from epoll).
    fileprivate func socketClosing(_ fd: Int32) {
        if let s = sockets[fd] {
            sockets.removeValue(forKey: fd)
            if s.parked { loop.unregister(fd: fd) }
        }
    }

    /// A parked socket became ready (e.g. the peer closed the idle connection):
    /// stop watching it; curl finds out when it next tries to reuse it.
    fileprivate func parkedSocketReady(_ fd: Int32) {
        if let s = sockets[fd], s.parked {
            sockets.removeValue(forKey: fd)
            loop.unregister(fd: fd)
        }
    }

    private func timerChanged(_ ms: Int) {
        if ms == 0 {
            // "As soon as possible": at the end of this loop iteration, no timer.
            if let t = timer { loop.cancel(t); timer = nil }
            immediateWanted = true
            if !immediateQueued {
                immediateQueued = true
                loop.deferUntilEndOfIteration { [weak self] in
                    guard let self else { return }
                    self.immediateQueued = false
                    guard self.immediateWanted else { return }
                    self.immediateWanted = false
                    self.action(fd: -1, flags: 0)
                }
            }
            return
        }
        immediateWanted = false
        if ms < 0 {
            if let t = timer { loop.cancel(t); timer = nil }
            return
        }
        let at = loop.now + .milliseconds(ms)
        if let t = timer {
            if t.isScheduled && t.deadline == at { return }
            loop.cancel(t)
        }
        timer = loop.schedule(at: at) { [unowned self] in
            self.timer = nil
            self.action(fd: -1, flags: 0)
        }
    }

    fileprivate func action(fd: Int32, flags: Int32) {
        var running: Int32 = 0
        curl_multi_socket_action(multi, fd, flags, &running)
        readMessages()
    }

    private func readMessages() {
        if processing { return }
        processing = true
        defer { processing = false }
        var left: Int32 = 0
        while let msg = curl_multi_info_read(multi, &left) {
            guard CCurl_msg_is_done(msg) != 0, let easy = CCurl_msg_easy(msg) else { continue }
            let code = CCurl_msg_result(msg)
            var ptr: UnsafeMutableRawPointer? = nil
            _ = CCurl_easy_getinfo_pointer(easy, CURLINFO_PRIVATE, &ptr)
            guard let ptr else { continue }
            let t = Unmanaged<UpstreamTransfer>.fromOpaque(ptr).takeUnretainedValue()
            let result = t.result(code: code)
            release(t)
            t.finish(result)
        }
    }
}

/// A socket libcurl asked the loop to watch.
private final class CurlSocket: IOHandler {
    unowned let client: UpstreamClient
    let fd: Int32
    var events: IOEvents
    /// Back in curl's connection cache, still registered for reading.
    var parked = false

    init(client: UpstreamClient, fd: Int32, events: IOEvents) {
        self.client = client
        self.fd = fd
        self.events = events
    }

    func ioReady(_ ev: IOEvents) {
        if parked { return client.parkedSocketReady(fd) }
        var flags: Int32 = 0
        if ev.contains(.read) || ev.contains(.hangup) { flags |= CURL_CSELECT_IN }
        if ev.contains(.write) { flags |= CURL_CSELECT_OUT }
        if ev.contains(.error) { flags |= CURL_CSELECT_ERR }
        client.action(fd: fd, flags: flags)
    }
}

/// A pooled easy handle and which per-transfer options its last use left set.
private final class PooledEasy {
    let easy: UnsafeMutableRawPointer
    var customRequest = false
    var noBody = false
    var postFields = false
    var resolve = false
    /// The URL the handle was last given (curl keeps its own copy of text URLs).
    var url: String?
    init(easy: UnsafeMutableRawPointer) { self.easy = easy }
}

/// One upstream attempt in flight. Loop thread only.
public final class UpstreamTransfer {
    private unowned let client: UpstreamClient
    fileprivate let pooled: PooledEasy
    fileprivate var easy: UnsafeMutableRawPointer?
    private let request: UpstreamRequest
    private var completion: ((UpstreamResult) -> Void)?
    private var headerList: UnsafeMutablePointer<curl_slist>?
    private var resolveList: UnsafeMutablePointer<curl_slist>?
    private var bodyCopy: UnsafeMutableRawBufferPointer?
    private var status = 0
    /// The final response's header lines as received (parsed only when read).
    private var rawHeaders: [UInt8] = []
    private var body: [UInt8] = []
    private var tooLarge = false
    private var selfRetain: Unmanaged<UpstreamTransfer>?

    fileprivate init(client: UpstreamClient, pooled: PooledEasy, request: UpstreamRequest, completion: @escaping (UpstreamResult) -> Void) {
        self.client = client
        self.pooled = pooled
        self.easy = pooled.easy
        self.request = request
        self.completion = completion
    }

    deinit {
        if let headerList { curl_slist_free_all(headerList) }
        if let resolveList { curl_slist_free_all(resolveList) }
        bodyCopy?.deallocate()
    }

    /// Stops the transfer; its completion is never called. A no-op once finished.
    public func cancel() {
        completion = nil
        client.release(self)
    }

    fileprivate func retainForCurl() { selfRetain = Unmanaged.passRetained(self) }
    fileprivate func releaseFromCurl() {
        let r = selfRetain
        selfRetain = nil
        r?.release()
    }

    fileprivate func finish(_ result: UpstreamResult) {
        guard let c = completion else { return }
        completion = nil
        c(result)
    }

    /// Sets the easy handle's options. Returns a failure when the request cannot be sent.
    fileprivate func configure(remainingMs: Int64) -> UpstreamFailure? {
        guard let h = easy else { return UpstreamFailure(kind: .protocol, message: "no handle") }
        // Undo what the handle's previous transfer set (the shared options stay).
        let p = pooled
        // The handle keeps the URL between transfers: set it only when it changes.
        if p.url != request.url {
            p.url = nil
            if CCurl_easy_setopt_string(h, CURLOPT_URL, request.url) != CURLE_OK {
                return UpstreamFailure(kind: .protocol, message: "invalid URL")
            }
            p.url = request.url
        }
        if p.customRequest { _ = CCurl_easy_setopt_pointer(h, CURLOPT_CUSTOMREQUEST, nil); p.customRequest = false }
        if p.noBody { _ = CCurl_easy_setopt_long(h, CURLOPT_NOBODY, 0); p.noBody = false }
        if p.postFields {
            _ = CCurl_easy_setopt_pointer(h, CURLOPT_POSTFIELDS, nil)
            _ = CCurl_easy_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, -1)
            p.postFields = false
        }
        if p.resolve { _ = CCurl_easy_setopt_slist(h, CURLOPT_RESOLVE, nil); p.resolve = false }
        _ = CCurl_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, Int(max(1, remainingMs)))
        let connectMs = max(1, min(remainingMs, request.connectTimeout.milliseconds))
        _ = CCurl_easy_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, Int(connectMs))
        _ = CCurl_easy_setopt_off(h, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(request.maxBodyBytes))
        let me = Unmanaged.passUnretained(self).toOpaque()
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_PRIVATE, me)
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_WRITEDATA, me)
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_HEADERDATA, me)

        switch request.method {
        case "GET" where request.body.isEmpty:
            _ = CCurl_easy_setopt_long(h, CURLOPT_HTTPGET, 1)
        case "HEAD":
            _ = CCurl_easy_setopt_long(h, CURLOPT_NOBODY, 1)
            p.noBody = true
        default:
            if !request.body.isEmpty || request.method != "GET" {
                let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, request.body.count), alignment: 1)
                if !request.body.isEmpty { buf.copyMemory(from: UnsafeRawBufferPointer(start: request.body.withUnsafeBytes { $0.baseAddress }, count: request.body.count)) }
                bodyCopy = buf
                _ = CCurl_easy_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.count))
                _ = CCurl_easy_setopt_pointer(h, CURLOPT_POSTFIELDS, buf.baseAddress)
                p.postFields = true
            }
            if request.method != "POST" {
                _ = CCurl_easy_setopt_string(h, CURLOPT_CUSTOMREQUEST, request.method)
                p.customRequest = true
            }
        }
        var list: UnsafeMutablePointer<curl_slist>? = nil
        for (n, v) in request.headers {
            list = UpstreamTransfer.appendHeaderLine(list, n, v)
        }
        // Never wait for `100 Continue`: it costs a round trip on every POST.
        // (Without a body curl sends no `Expect:`, so there is nothing to suppress.)
        if p.postFields { list = curl_slist_append(list, "Expect:") }
        headerList = list
        _ = CCurl_easy_setopt_slist(h, CURLOPT_HTTPHEADER, list)
        if !request.resolve.isEmpty {
            var r: UnsafeMutablePointer<curl_slist>? = nil
            for e in request.resolve { r = curl_slist_append(r, e) }
            resolveList = r
            _ = CCurl_easy_setopt_slist(h, CURLOPT_RESOLVE, r)
            p.resolve = true
        }
        return nil
    }

    /// `list` with `name: value` appended (curl copies the line), built on the stack.
    private static func appendHeaderLine(_ list: UnsafeMutablePointer<curl_slist>?, _ name: String, _ value: String) -> UnsafeMutablePointer<curl_slist>? {
        var name = name, value = value
        return name.withUTF8 { n in
            value.withUTF8 { v in
                let count = n.count + 2 + v.count + 1
                return withUnsafeTemporaryAllocation(of: CChar.self, capacity: count) { buf in
                    let raw = UnsafeMutableRawBufferPointer(buf)
                    if n.count > 0 { raw.baseAddress!.copyMemory(from: n.baseAddress!, byteCount: n.count) }
                    raw[n.count] = UInt8(ascii: ":")
                    raw[n.count + 1] = UInt8(ascii: " ")
                    if v.count > 0 { (raw.baseAddress! + n.count + 2).copyMemory(from: v.baseAddress!, byteCount: v.count) }
                    raw[count - 1] = 0
                    return curl_slist_append(list, buf.baseAddress!)
                }
            }
        }
    }

    fileprivate func received(body chunk: UnsafeRawBufferPointer) -> Int {
        if body.count + chunk.count > request.maxBodyBytes {
            tooLarge = true
            return 0  // makes curl abort with CURLE_WRITE_ERROR
        }
        body.append(contentsOf: chunk)
        return chunk.count
    }

    fileprivate func received(headerLine raw: UnsafeRawBufferPointer) {
        var end = raw.count
        while end > 0 && (raw[end - 1] == 0x0A || raw[end - 1] == 0x0D) { end -= 1 }
        if end == 0 { return }
        if end >= 5 && raw[0] == 0x48 && raw[1] == 0x54 && raw[2] == 0x54 && raw[3] == 0x50 && raw[4] == 0x2F {  // "HTTP/"
            // A new status line (after 1xx, or a new response): start over.
            rawHeaders.removeAll(keepingCapacity: true)
            return
        }
        // Kept as received; `UpstreamHeaderBlock` splits the lines on first use.
        if rawHeaders.capacity == 0 { rawHeaders.reserveCapacity(512) }
        rawHeaders.append(contentsOf: raw)
        if raw[raw.count - 1] != 0x0A { rawHeaders.append(0x0A) }
    }

    fileprivate func result(code: CURLcode) -> UpstreamResult {
        if code == CURLE_OK {
            var st = 0
            if let h = easy { _ = CCurl_easy_getinfo_long(h, CURLINFO_RESPONSE_CODE, &st) }
            if st < 100 || st > 599 {
                return .failure(UpstreamFailure(kind: .protocol, message: "no valid HTTP status"))
            }
            return .success(UpstreamResponse(status: st, headerBlock: UpstreamHeaderBlock(raw: rawHeaders), body: body))
        }
        let text = String(cString: curl_easy_strerror(code))
        if tooLarge || code == CURLE_FILESIZE_EXCEEDED {
            return .failure(UpstreamFailure(kind: .protocol, message: "response body larger than \(request.maxBodyBytes) bytes"))
        }
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            return .failure(UpstreamFailure(kind: .timeout, message: text))
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY,
             CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE,
             CURLE_SSL_CERTPROBLEM:
            return .failure(UpstreamFailure(kind: .connect, message: text))
        default:
            return .failure(UpstreamFailure(kind: .protocol, message: text))
        }
    }
}
