private import CCurl
import EventLoop
import Glibc

/// libcurl's process-wide initialisation, done once before any handle exists.
private let curlGlobalInit: Bool = {
    curl_global_init(Int(CURL_GLOBAL_ALL))
    return true
}()

/// `CURL_SOCKET_TIMEOUT`: `curl_multi_socket_action` for curl's timeouts, not for a socket.
private let curlSocketTimeout: Int32 = -1

/// The proxy settings libcurl would otherwise look up in the environment on every
/// transfer (five `getenv` calls each), read once per client and given to each easy
/// handle as `CURLOPT_PROXY` and `CURLOPT_NOPROXY`, which curl applies exactly as it
/// applies the variables: `no_proxy` (else `NO_PROXY`) lists hosts reached directly;
/// an `http://` URL goes through `http_proxy` (never the upper-case `HTTP_PROXY`), an
/// `https://` one through `https_proxy` (else `HTTPS_PROXY`); either falls back to
/// `all_proxy` (else `ALL_PROXY`) only when its own variable is unset. A variable set
/// to "" counts as unset.
struct ProxyEnvironment: Equatable {
    /// The proxy for `http://` URLs; "" for none.
    var http: String
    /// The proxy for `https://` URLs; "" for none.
    var https: String
    /// Hosts never proxied (curl's `no_proxy` syntax); "" for none.
    var noProxy: String

    /// The settings from `lookup` (an environment variable's value, nil when unset),
    /// picked as libcurl picks them.
    init(lookup: (String) -> String?) {
        // As `curl_getenv`: a variable set to "" counts as unset.
        func get(_ name: String) -> String? { lookup(name).flatMap { $0.isEmpty ? nil : $0 } }
        noProxy = get("no_proxy") ?? get("NO_PROXY") ?? ""
        let all = get("all_proxy") ?? get("ALL_PROXY")
        http = get("http_proxy") ?? all ?? ""
        https = get("https_proxy") ?? get("HTTPS_PROXY") ?? all ?? ""
    }

    /// The settings of the process environment, now.
    static func fromProcess() -> ProxyEnvironment {
        ProxyEnvironment { name in getenv(name).map { String(cString: $0) } }
    }

    /// Sets `CURLOPT_PROXY` and `CURLOPT_NOPROXY` on `easy` for URLs of one scheme.
    /// Without a proxy, `CURLOPT_PROXY` is unset and `CURLOPT_NOPROXY` is `*`: then
    /// curl neither copies a proxy string nor reads the environment per transfer.
    func apply(to easy: UnsafeMutableRawPointer, https: Bool) {
        let proxy = https ? self.https : http
        if proxy.isEmpty {
            _ = CCurl_easy_setopt_pointer(easy, CURLOPT_PROXY, nil)
            _ = CCurl_easy_setopt_string(easy, CURLOPT_NOPROXY, "*")
        } else {
            _ = CCurl_easy_setopt_string(easy, CURLOPT_PROXY, proxy)
            _ = CCurl_easy_setopt_string(easy, CURLOPT_NOPROXY, noProxy)
        }
    }
}

/// An HTTP client for one `EventLoop`, built on libcurl's multi interface and
/// driven by that loop: curl tells us which sockets to watch
/// (`CURLMOPT_SOCKETFUNCTION`) and when to wake it (`CURLMOPT_TIMERFUNCTION`),
/// and the loop calls `curl_multi_socket_action` when they are ready. No thread
/// per call and no polling. Easy handles are pooled and upstream connections
/// are kept alive and reused by the multi handle's connection cache.
///
/// All methods are called from within the loop's thread; completions run there too.
public final class UpstreamClient: DeferredWriter, @unchecked Sendable {
    /// The loop that drives this client.
    public let loop: EventLoop
    fileprivate let multi: UnsafeMutableRawPointer
    /// The sockets curl asked to watch, indexed by descriptor.
    private var sockets: [CurlSocket?] = []
    /// The loop timer that wakes curl. It may be set earlier than `timerDeadline`
    /// (curl moved its deadline later): then it re-arms itself instead of calling curl,
    /// so a moving deadline costs no timer (and no closure) per change.
    private var timer: LoopTimer?
    /// When curl wants `curl_multi_socket_action(CURL_SOCKET_TIMEOUT)`; nil: no timeout.
    private var timerDeadline: Instant?
    /// curl asked to be called "as soon as possible" (timeout 0): done at the end of
    /// the loop iteration instead of through a timer.
    private var immediateWanted = false
    private var immediateQueued = false
    /// Transfers `send` configured and has not handed to curl yet (see `startQueued`),
    /// and the batch being handed over.
    private var queued: [UpstreamTransfer] = []
    private var starting: [UpstreamTransfer] = []
    /// `startQueued` is handing transfers to curl.
    private var startingQueued = false
    /// Every easy handle this client made (the pool's size is bounded by the
    /// transfers ever in flight at once); read only by `deinit`.
    private var allHandles: [PooledEasy] = []
    private var freeHandles: [PooledEasy] = [] { didSet { handleCounters.setIdle(freeHandles.count) } }
    /// Transfers in flight (for tests and metrics), each counted until its handle is back
    /// in the pool, which is after its completion ran.
    public private(set) var activeTransfers = 0 { didSet { handleCounters.setInFlight(activeTransfers) } }
    /// Easy-handle accounting, read through `handleStats` (UpstreamClient+Stats.swift).
    let handleCounters: UpstreamHandleCounters
    private var processing = false
    /// `CURLOPT_CAINFO` for every handle (see `init`).
    private let caFile: String?
    /// The TLS session cache all handles of this client share (a `CURLSH` sharing TLS
    /// sessions only; curl keeps the 8 most recently used): a new connection resumes a
    /// session whichever handle got it, also after a handle was replaced
    /// (`PooledEasy.renewAfterUse`). Used on the loop thread only (or after the loop has
    /// stopped), so it needs no lock callbacks. Nil if curl could not make one.
    private let tlsSessions: UnsafeMutableRawPointer?
    /// URLs parsed by curl, by their bytes, shared by every handle given the same one
    /// (see `parsedURL(_:)`).
    private var parsedURLs: [URLBytes: ParsedURL] = [:]
    /// Most URLs a client keeps parsed; when that many are kept, the next new one
    /// empties the cache first (handles keep the URL their transfer uses).
    public static let parsedURLCapacity = 64
    /// Number of URLs the client keeps parsed for later transfers (at most
    /// `parsedURLCapacity`). For tests. Loop thread only.
    public var parsedURLCount: Int { parsedURLs.count }
    /// The proxy settings new easy handles get (read from the environment when the
    /// client is created; tests may replace them before the first transfer).
    var proxies = ProxyEnvironment.fromProcess()

    /// Creates the client and its multi handle on `loop`.
    /// - Parameter maxConnectionsPerHost: cap on parallel connections to one host
    ///   (0 = unlimited, the default).
    /// - Parameter caFile: a PEM file of the certificate authorities trusted for
    ///   HTTPS (`CURLOPT_CAINFO`), in place of the system's (libcurl's bundle and
    ///   directory, `CURLOPT_CAPATH`, are not used then); nil (the default) keeps
    ///   libcurl's. Peers are verified either way. An HTTPS proxy's certificate is
    ///   checked against the system's authorities regardless.
    public init(loop: EventLoop, maxConnectionsPerHost: Int = 0, caFile: String? = nil) {
        self.caFile = caFile
        _ = curlGlobalInit
        tlsSessions = curl_share_init()
        if let tlsSessions {
            _ = CCurl_share_setopt_lock_data(tlsSessions, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION)
        }
        // CURLOPT_NOSIGNAL leaves SIGPIPE to the application: OpenSSL writes to a TLS
        // connection whose peer is gone with write(2), not send(MSG_NOSIGNAL).
        Socket.ignoreSIGPIPE()
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
        // Transfers still in flight (the client is going away: shutdown) are cancelled:
        // their handles leave the multi handle and their retain for curl is released.
        cancelAll()
        allHandles.removeAll()
        for case let s? in sockets { loop.unregister(fd: s.fd) }
        sockets.removeAll()
        for h in freeHandles { curl_easy_cleanup(h.easy) }
        handleCounters.handlesCleanedUp(freeHandles.count)
        curl_multi_cleanup(multi)
        if let tlsSessions { curl_share_cleanup(tlsSessions) }  // no handle uses it any more
    }

    /// Whether head lines are screened before curl stores them (`CURLOPT_HEADER`, see
    /// `UpstreamTransfer.received(write:)`): with libcurl before 8.1.0 (curl issue
    /// #11101). There a handle frees its stored response fields when its next transfer
    /// starts but keeps pointing at the last one, and a first field line that starts
    /// with a space or a tab (a "folded" line, RFC 9112 §2.2 forbids it there) is then
    /// appended to that freed field — any upstream, or callback receiver, could make a
    /// reused handle write to freed memory. With `CURLOPT_HEADER` curl hands every head
    /// line to the write callback before it stores the line, and a count short of the
    /// line's length stops it there: the line is refused, never stored, and handles are
    /// reused safely. (They were renewed after every transfer instead — ~10 % of a
    /// proxied request's CPU.) From 8.1.0 on, curl forgets the pointer itself.
    public static let screensHeadLines: Bool = {
        guard let info = curl_version_info(CURLVERSION_FIRST) else { return true }  // version_num is in every age
        return info.pointee.version_num < 0x08_01_00
    }()

    /// Gives `pooled` a fresh curl handle in place of the one its last transfer used; it
    /// keeps its own buffers. Counted as one handle cleaned up and one created.
    private func renew(_ pooled: PooledEasy) {
        curl_easy_cleanup(pooled.easy)
        handleCounters.handlesCleanedUp(1)
        pooled.replaceHandle(with: curl_easy_init()!)
        handleCounters.handleCreated()
        setSharedOptions(pooled)
    }

    /// A new pooled easy handle with the options every transfer shares; the
    /// per-transfer ones are set by `UpstreamTransfer.configure` (no `curl_easy_reset`
    /// between uses).
    private func makeHandle() -> PooledEasy {
        let pooled = PooledEasy(easy: curl_easy_init()!)
        handleCounters.handleCreated()
        setSharedOptions(pooled)
        allHandles.append(pooled)
        return pooled
    }

    /// Sets the options every transfer of `pooled`'s handle shares.
    private func setSharedOptions(_ pooled: PooledEasy) {
        let h = pooled.easy
        _ = CCurl_easy_setopt_string(h, CURLOPT_PROTOCOLS_STR, "http,https")
        _ = CCurl_easy_setopt_long(h, CURLOPT_NOSIGNAL, 1)
        _ = CCurl_easy_setopt_long(h, CURLOPT_FOLLOWLOCATION, 0)
        // HTTP/1.1 only (RFC 9112), also over TLS (no `h2` offered by ALPN): the framing
        // checks and head screening read HTTP/1.1 heads. It also keeps curl 7.88 from
        // ever putting a second transfer on a connection in use: a status line saying
        // `HTTP/2` marks the upstream as able to multiplex, and curl would then share an
        // HTTP/1.1 connection between transfers (such a line is refused, `startHead`).
        _ = CCurl_easy_setopt_long(h, CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1))
        // Content codings (RFC 9110 §8.4): a request without `Accept-Encoding` accepts any
        // coding (§12.5.3), and libcurl 7.88 decodes none unless this is set, so a gzip
        // body reached templates as its compressed bytes read as text. With it, a body
        // sent coded — gzip, deflate, br, zstd — is decoded before the write callback sees
        // it, so `limits.upstream_body_bytes` bounds the decoded size; a coding libcurl
        // does not know fails the transfer (CURLE_BAD_CONTENT_ENCODING). The
        // `Accept-Encoding` line curl would then add is left out (`setHeaders`): requests
        // stay as they were, and curl does not build that line for every transfer.
        _ = CCurl_easy_setopt_string(h, CURLOPT_ACCEPT_ENCODING, "identity")
        if let caFile {
            // Instead of libcurl's bundle and directory (Debian builds it with both).
            _ = CCurl_easy_setopt_string(h, CURLOPT_CAINFO, caFile)
            _ = CCurl_easy_setopt_string(h, CURLOPT_CAPATH, nil)
        }
        if let tlsSessions { _ = CCurl_easy_setopt_pointer(h, CURLOPT_SHARE, tlsSessions) }
        // Proxies as configured by the environment, without curl reading it per transfer
        // (set per transfer, in `configure`, only when they differ by scheme).
        if proxies.http == proxies.https { proxies.apply(to: h, https: false) }
        // A proxy's answer to `CONNECT` reaches no callback: it is not the response's
        // head (with `CURLOPT_HEADER` it would reach the write callback as if it were), and
        // after the response's head every line is a trailer (`received(headerLine:)`).
        _ = CCurl_easy_setopt_long(h, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1)
        if UpstreamClient.screensHeadLines {
            // Each head line reaches the write callback before curl stores it (see
            // `screensHeadLines`).
            _ = CCurl_easy_setopt_long(h, CURLOPT_HEADER, 1)
        }
        // Both reach the transfer without retaining anything (one call per header line).
        _ = CCurl_easy_setopt_datafunction(h, CURLOPT_WRITEFUNCTION, { ptr, size, n, ud in
            Unmanaged<PooledEasy>.fromOpaque(ud!)._withUnsafeGuaranteedRef { p in
                p.transfer?._withUnsafeGuaranteedRef { $0.received(write: UnsafeRawBufferPointer(start: ptr, count: size * n)) } ?? 0
            }
        })
        _ = CCurl_easy_setopt_datafunction(h, CURLOPT_HEADERFUNCTION, { ptr, size, n, ud in
            let ok = Unmanaged<PooledEasy>.fromOpaque(ud!)._withUnsafeGuaranteedRef { p in
                p.transfer?._withUnsafeGuaranteedRef { $0.received(headerLine: UnsafeRawBufferPointer(start: ptr, count: size * n)) } ?? true
            }
            // Fewer bytes than given: curl aborts the transfer (CURLE_WRITE_ERROR) and
            // closes the connection instead of keeping it for another transfer.
            return ok ? size * n : 0
        })
        // Told when curl closes a socket, so a parked (still registered) one is forgotten.
        _ = CCurl_easy_setopt_closesocketfunction(h, { clientp, fd in
            Unmanaged<UpstreamClient>.fromOpaque(clientp!).takeUnretainedValue().socketClosing(fd)
            return close(fd)
        })
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_CLOSESOCKETDATA, Unmanaged.passUnretained(self).toOpaque())
        // The handle's own object, unretained: it lives as long as the handle (in the
        // pool, or held by the transfer using it).
        let me = Unmanaged.passUnretained(pooled).toOpaque()
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_PRIVATE, me)
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_WRITEDATA, me)
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_HEADERDATA, me)
        _ = CCurl_easy_setopt_pointer(h, CURLOPT_ERRORBUFFER, pooled.errorBuffer)
    }

    /// Starts one attempt. `completion` runs exactly once on the loop thread,
    /// never before `send` returns — unless the transfer is cancelled first. The
    /// request goes out with the loop's next write burst (`startQueued`: at the end of
    /// this iteration, or within it once 8 writes or 2 ms have gathered), its deadline
    /// still `request.deadline`. Loop thread only.
    /// - Returns: the transfer, which can be cancelled.
    @discardableResult
    public func send(_ request: consuming UpstreamRequest, completion: @escaping (UpstreamResult) -> Void) -> UpstreamTransfer {
        let pooled = takeFreeHandle(for: request.url) ?? makeHandle()
        // Moved into the transfer, not copied (a copy retains every header string).
        let t = UpstreamTransfer(client: self, pooled: pooled, request: request, completion: completion)
        let remainingMs = t.request.millisecondsLeft(at: loop.now.nanoseconds)
        if remainingMs <= 0 {
            // Already past the deadline: fail without touching the network.
            freeHandles.append(pooled)
            t.easy = nil
            loop.deferUntilEndOfIteration { t.finish(.failure(.deadlinePassedBeforeStart)) }
            return t
        }
        if let failure = t.configure(remainingMs: remainingMs, proxies: proxies) {
            freeHandles.append(pooled)
            t.easy = nil
            loop.deferUntilEndOfIteration { t.finish(.failure(failure)) }
            return t
        }
        t.retainForCurl()
        activeTransfers += 1
        // Handed to curl with the loop's other output (see `startQueued`).
        queued.append(t)
        if queued.count == 1 { loop.deferWrite(self) }
        return t
    }

    /// Hands the transfers `send` queued to curl, which sends their requests at once, one
    /// after another: queued as a write (`EventLoop.deferWrite`), so the requests of an
    /// iteration go out in one burst, as its responses do, instead of one by one as
    /// curl got to each new transfer between events — each request alone found the
    /// upstream asleep on its CPU and paid for waking it. A transfer cancelled while
    /// queued (its handle already back in the pool) is skipped; its deadline counts from
    /// now (`CURLOPT_TIMEOUT_MS` counts from the start of the transfer), and one whose
    /// deadline passed while it waited fails as `send` fails it, without the network.
    /// Loop thread.
    ///
    /// The write burst's hook (`DeferredWriter`, queued by `send`): the loop calls it;
    /// nothing else should.
    public func writeDeferred() { startQueued() }

    private func startQueued() {
        // Sent by a task run as the loop stopped: nothing would read the response (the
        // request would go out over a kept-alive connection and be abandoned). They stay
        // queued, in the pool's accounting, until `cancelAll` releases them.
        if loop.hasStopped { return }
        swap(&queued, &starting)
        startingQueued = true
        // The clock, not `loop.now`: that was read before the iteration's events, tasks
        // and deferred work, which the transfers waited for.
        let now = Instant.now().nanoseconds
        for t in starting {
            guard t.easy != nil else { continue }  // cancelled while queued
            guard t.setTimeout(now: now) else {
                // Not in curl yet: detaching only takes its handle back.
                let pooled = detach(t)
                t.finish(.failure(.deadlinePassedBeforeStart))
                if let pooled { repool(pooled) }
                continue
            }
            t.handedToCurl = true
            curl_multi_add_handle(multi, t.pooled.easy)
        }
        starting.removeAll(keepingCapacity: true)
        startingQueued = false
        // curl asked to be called at once for each: done here, within the burst.
        if immediateWanted { runImmediate() }
    }

    /// Cancels every transfer in flight; their completions are never called. For
    /// shutdown: a transfer is retained for curl while in flight, and its completion
    /// usually holds what holds this client, so only cancelling frees them.
    /// Loop thread only, or after the loop has stopped.
    public func cancelAll() {
        for h in allHandles { if let t = h.transfer { release(t.takeUnretainedValue()) } }
    }

    /// Takes `t` out of curl (it is cancelled) and puts its handle back in the pool — a
    /// fresh one when its request had gone out (`UpstreamTransfer.renewHandleIfRequestSent`).
    fileprivate func release(_ t: UpstreamTransfer) {
        t.renewHandleIfRequestSent()
        guard let pooled = detach(t) else { return }
        repool(pooled)
    }

    /// Takes `t` out of curl; returns its handle, which is in no pool yet and still
    /// counted in `activeTransfers` until `repool` (nil when `t` was not in curl).
    private func detach(_ t: UpstreamTransfer) -> PooledEasy? {
        guard t.easy != nil else { return nil }
        curl_multi_remove_handle(multi, t.pooled.easy)
        t.pooled.transfer = nil
        t.easy = nil
        t.releaseFromCurl()
        return t.pooled
    }

    /// How many of the most recently pooled handles `takeFreeHandle(for:)` looks through
    /// for one last given the same URL.
    static let handleAffinityScan = 8

    /// A pooled handle for a transfer to `url`: among the `handleAffinityScan` most
    /// recently pooled, the latest one whose last transfer went to the same URL (by its
    /// bytes), else the most recently pooled one; nil when the pool is empty. A handle
    /// keeps its URL between transfers, and curl 7.88 renders a `CURLOPT_CURLU` handle's
    /// text anew (with its printf engine) for the first transfer after the URL changes:
    /// a fan-out's legs, each to its own URL, would otherwise take a handle last used
    /// for another leg two times in three. Loop thread only.
    private func takeFreeHandle(for url: String) -> PooledEasy? {
        let n = freeHandles.count
        var i = n - 1
        while i >= 0 && i >= n - UpstreamClient.handleAffinityScan {
            if freeHandles[i].url?.text.hasSameBytes(as: url) ?? false {
                return i == n - 1 ? freeHandles.removeLast() : freeHandles.remove(at: i)
            }
            i -= 1
        }
        return freeHandles.popLast()
    }

    /// Puts a detached handle back in the pool, for its next transfer — a fresh one in
    /// its place when its transfer left it holding much (`PooledEasy.renewAfterUse`).
    private func repool(_ pooled: PooledEasy) {
        if pooled.renewAfterUse { renew(pooled) }
        freeHandles.append(pooled)
        activeTransfers -= 1
    }

    /// `text` parsed as curl parses `CURLOPT_URL` (a missing scheme is guessed, any
    /// scheme is parsed: `CURLOPT_PROTOCOLS_STR` refuses what is not allowed), for
    /// `CURLOPT_CURLU`: the same object for the same bytes while `parsedURLs` keeps it,
    /// so steps that call the same few URLs (a fan-out's legs) do not have curl parse
    /// them again for every transfer. URLs longer than `ParsedURL.keptBytes` are
    /// parsed for their transfer only. Loop thread only.
    /// - Returns: the parsed URL, or curl's reason it cannot parse `text`.
    fileprivate func parsedURL(_ text: String) -> Result<ParsedURL, ParsedURL.Failure> {
        if let u = parsedURLs[URLBytes(text)] { return .success(u) }
        guard let handle = curl_url() else { return .failure(.init(code: CURLUE_OUT_OF_MEMORY)) }
        let u = ParsedURL(text: text, handle: handle)
        let code = curl_url_set(handle, CURLUPART_URL, text, UInt32(CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME))
        guard code == CURLUE_OK else { return .failure(.init(code: code)) }
        if text.utf8.count <= ParsedURL.keptBytes {
            if parsedURLs.count >= UpstreamClient.parsedURLCapacity { parsedURLs.removeAll(keepingCapacity: true) }
            parsedURLs[URLBytes(text)] = u
        }
        return .success(u)
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
            guard let s = socket(fd) else { return }
            if s.events == .read && !s.parked {
                s.parked = true
            } else {
                sockets[Int(fd)] = nil
                loop.unregister(fd: fd)
            }
            return
        }
        var events: IOEvents = []
        if what & CURL_POLL_IN != 0 { events.insert(.read) }
        if what & CURL_POLL_OUT != 0 { events.insert(.write) }
        if let s = socket(fd) {
            s.parked = false
            if s.events == events { return }  // skip epoll_ctl calls that change nothing
            s.events = events
            do { try loop.modify(fd: fd, events: events) } catch {
                try? loop.register(fd: fd, events: events, handler: s)
            }
        } else {
            let s = CurlSocket(client: self, fd: fd, events: events)
            let i = Int(fd)
            if i >= sockets.count { sockets.append(contentsOf: repeatElement(nil, count: max(i + 1, 2 * sockets.count, 64) - sockets.count)) }
            sockets[i] = s
            try? loop.register(fd: fd, events: events, handler: s)
        }
    }

    private func socket(_ fd: Int32) -> CurlSocket? {
        let i = Int(fd)
        return i >= 0 && i < sockets.count ? sockets[i] : nil
    }

    /// curl is about to close `fd`: a parked socket is still registered; forget it
    /// (closing removes it from epoll).
    fileprivate func socketClosing(_ fd: Int32) {
        if let s = socket(fd) {
            sockets[Int(fd)] = nil
            if s.parked { loop.unregister(fd: fd) }
        }
    }

    /// A parked socket became ready while no transfer used its connection: the peer
    /// closed it, or sent bytes no request asked for (a body after a `204` or after the
    /// answer to `HEAD`, a response to nothing). libcurl 7.88 calls a pooled connection
    /// with pending input alive and would read those bytes as the next request's
    /// response — another caller's, perhaps; RFC 9112 §9.3 says a client must not.
    /// So the descriptor is made to read end-of-stream before curl looks at it again:
    /// an AF_UNIX socket whose peer is already closed is duplicated onto it (which
    /// closes the TCP connection, unread bytes and all). curl's liveness check then
    /// finds the connection closed and drops it; the next transfer connects anew.
    /// Loop thread only.
    fileprivate func parkedSocketReady(_ fd: Int32) {
        guard let s = socket(fd), s.parked else { return }
        sockets[Int(fd)] = nil
        loop.unregister(fd: fd)
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            // Without a descriptor to spare: close the connection's input at least (a peer
            // that closed is found dead anyway).
            shutdown(fd, Int32(SHUT_RDWR))
            return
        }
        close(pair[1])
        dup2(pair[0], fd)
        close(pair[0])
    }

    // curl's timer moves with every transfer (its earliest deadline changes as
    // transfers start and finish). A loop timer that would fire too early is kept and
    // re-armed when it fires; one that would fire too late is replaced. Calling curl
    // early is harmless anyway (it clears its last reported deadline and reports it
    // again), but re-arming without calling curl is cheaper.
    private func timerChanged(_ ms: Int) {
        if ms == 0 {
            // "As soon as possible": at the end of this loop iteration, no timer. curl
            // reports its next deadline after that call.
            immediateWanted = true
            // Within `startQueued`, which makes that call itself once every handle is in.
            if !immediateQueued && !startingQueued {
                immediateQueued = true
                // Captures only `self` (strongly: the client stays alive until the end of
                // this iteration), so no closure context is allocated.
                loop.deferUntilEndOfIteration { self.runImmediate() }
            }
            return
        }
        immediateWanted = false
        if ms < 0 {
            // No timeout wanted: a pending timer finds `timerDeadline` nil and does nothing.
            timerDeadline = nil
            return
        }
        // Integer nanoseconds (Duration arithmetic is 128-bit); curl's timeouts fit easily.
        let at = Instant(nanoseconds: loop.now.nanoseconds &+ UInt64(min(ms, 1 << 40)) &* 1_000_000)
        timerDeadline = at
        if let t = timer, t.isScheduled {
            if t.deadline <= at { return }
            loop.cancel(t)
        }
        armTimer(at: at)
    }

    private func armTimer(at: Instant) {
        timer = loop.schedule(at: at) { [unowned(unsafe) self] in
            // Safe: `deinit` cancels the timer.
            self.timerFired()
        }
    }

    private func timerFired() {
        timer = nil
        guard let at = timerDeadline else { return }
        if at > loop.now {
            armTimer(at: at)  // fired before curl's (moved) deadline
            return
        }
        // curl reports its next deadline from within this call, if it has one.
        timerDeadline = nil
        action(fd: curlSocketTimeout, flags: 0)
    }

    private func runImmediate() {
        immediateQueued = false
        guard immediateWanted else { return }
        immediateWanted = false
        timerDeadline = nil  // reported again from within the call, if curl has one
        action(fd: curlSocketTimeout, flags: 0)
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
            guard let ptr, let t = Unmanaged<PooledEasy>.fromOpaque(ptr).takeUnretainedValue().transfer?.takeUnretainedValue() else { continue }
            let result = t.result(code: code)
            // The completion (which usually answers the caller) goes first; the handle
            // goes back to the pool after it. Transfers the completion starts take
            // another handle meanwhile.
            let pooled = detach(t)
            t.finish(result)
            if let pooled { repool(pooled) }
        }
    }
}

/// A socket libcurl asked the loop to watch.
private final class CurlSocket: IOHandler {
    /// Unowned without checks: the client unregisters every socket before it goes away.
    unowned(unsafe) let client: UpstreamClient
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

/// A URL's text, equal to another only when their UTF-8 bytes are — what curl sends.
/// (`String`'s own `==` and hashing follow Unicode canonical equivalence: "café" with
/// a precomposed é equals "cafe" with a combining accent, two different URLs.)
private struct URLBytes: Hashable {
    let text: String

    init(_ text: String) { self.text = text }

    static func == (a: URLBytes, b: URLBytes) -> Bool { a.text.hasSameBytes(as: b.text) }

    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

extension String {
    /// Whether both strings have the same UTF-8 bytes (not merely canonically equivalent text).
    /// Native strings compare with one `memcmp`; `elementsEqual` over `UTF8View` went
    /// byte by byte (~2,000 instructions per proxied request).
    fileprivate func hasSameBytes(as other: String) -> Bool {
        let n = utf8.count
        guard n == other.utf8.count else { return false }
        if n == 0 { return true }
        let same = utf8.withContiguousStorageIfAvailable { a in
            other.utf8.withContiguousStorageIfAvailable { b in memcmp(a.baseAddress!, b.baseAddress!, n) == 0 }
        }
        return (same ?? nil) ?? utf8.elementsEqual(other.utf8)
    }
}

/// A URL as curl parsed it (a `CURLU` handle), for `CURLOPT_CURLU`. Every transfer
/// copies what it needs from it when it starts (`curl_url_dup`), so every easy handle
/// given the same URL shares one, on the client's loop thread; it lives as long as the
/// client's cache or a handle holds it.
private final class ParsedURL {
    /// Why curl could not parse a URL.
    struct Failure: Error { let code: CURLUcode }

    /// URLs longer than this many bytes are parsed for their transfer only: neither
    /// the client's cache nor an idle handle keeps them (a URL templated from a
    /// request body can be megabytes long).
    static let keptBytes = 2048

    let text: String
    let handle: OpaquePointer

    init(text: String, handle: OpaquePointer) {
        self.text = text
        self.handle = handle
    }

    deinit { curl_url_cleanup(handle) }
}

/// A pooled easy handle and which per-transfer options its last use left set.
private final class PooledEasy {
    private(set) var easy: UnsafeMutableRawPointer
    /// Whether the last transfer left curl holding much in this handle until its next
    /// transfer — a URL longer than `ParsedURL.keptBytes` (curl keeps its parsed parts
    /// and its text), or a head of more than `PooledEasy.keptHeadBytes` (its stored
    /// fields, its longest line's buffer): the client replaces the handle with a fresh
    /// one, so an idle pool holds none of it.
    var renewAfterUse = false
    /// See `renewAfterUse`: 16 KiB.
    static let keptHeadBytes = 16 * 1024
    var customRequest = false
    var noBody = false
    var postFields = false
    var resolve = false
    /// The transfer using the handle (its `CURLOPT_PRIVATE`, `WRITEDATA` and `HEADERDATA`
    /// are the handle itself, set once). Unretained: a transfer in flight is retained
    /// for curl, and callbacks only come while it is.
    var transfer: Unmanaged<UpstreamTransfer>?
    /// `connectTimeout.milliseconds` of the last request (computed when it changes).
    var connectTimeout: Duration?
    var connectTimeoutMs: Int64 = 0
    /// The values last set, to skip options that do not change (-1: never set).
    var connectMsSet: Int64 = -1
    var maxFileSize = -1
    /// For which scheme the proxy options are set, when the client's proxies differ by scheme.
    var proxyIsHTTPS: Bool?
    /// The URL the handle's `CURLOPT_CURLU` is set to (nil: none). Held here: curl
    /// reads it during each transfer of the handle.
    var url: ParsedURL?
    /// The handle's `CURLOPT_ERRORBUFFER` (`CURL_ERROR_SIZE` bytes): curl's detail of why
    /// a transfer failed, emptied before each transfer.
    let errorBuffer = UnsafeMutablePointer<CChar>.allocate(capacity: Int(CURL_ERROR_SIZE))

    // `CURLOPT_HTTPHEADER`'s list, rewritten in place for each transfer instead of
    // built with `curl_slist_append` (two allocations per field): node i points at the
    // i-th "Name: value" line in `headerText` and links to node i + 1. curl reads the
    // list only while a transfer runs, and the handle serves one transfer at a time.
    private var headerNodes: UnsafeMutablePointer<curl_slist>?
    private var headerNodeCapacity = 0
    private var headerText: UnsafeMutablePointer<UInt8>?
    private var headerTextCapacity = 0
    /// The list `CURLOPT_HTTPHEADER` was last set to (nil: none).
    private var headerListSet: UnsafeMutablePointer<curl_slist>?

    /// A copy of the request body for `CURLOPT_POSTFIELDS` (which must stay valid for
    /// the transfer), kept for the next transfer while it is at most `bodyBufferKeep` bytes.
    private var bodyBuffer: UnsafeMutableRawPointer?
    private var bodyBufferCapacity = 0
    private static let bodyBufferKeep = 16 * 1024

    init(easy: UnsafeMutableRawPointer) {
        self.easy = easy
        errorBuffer[0] = 0
    }

    deinit {
        // After the easy handle that may point at `url` is cleaned up (the client does
        // that before letting go of its pooled handles).
        errorBuffer.deallocate()
        headerNodes?.deallocate()
        headerText?.deallocate()
        bodyBuffer?.deallocate()
    }

    /// Takes `fresh` (all options at their defaults) in place of the handle it had;
    /// forgets what was set on the old one, keeps its buffers.
    func replaceHandle(with fresh: UnsafeMutableRawPointer) {
        easy = fresh
        renewAfterUse = false
        customRequest = false
        noBody = false
        postFields = false
        resolve = false
        connectMsSet = -1
        maxFileSize = -1
        proxyIsHTTPS = nil
        url = nil
        headerListSet = nil
    }

    /// Whether the host of the URL the handle was last given (as curl parsed it, with
    /// percent-encoding decoded) has a byte outside ASCII. curl converts such a name to
    /// its ASCII form only when the process locale is UTF-8 (libidn2); in the C locale,
    /// the gateway's, it fails the transfer as `CURLE_URL_MALFORMAT` without saying why.
    /// For that failure's message only (it allocates).
    func urlHostIsNonASCII() -> Bool {
        guard let url else { return false }
        var host: UnsafeMutablePointer<CChar>? = nil
        guard curl_url_get(url.handle, CURLUPART_HOST, &host, 0) == CURLUE_OK, let host else { return false }
        defer { curl_free(host) }
        var p = host
        while p.pointee != 0 {
            if UInt8(bitPattern: p.pointee) >= 0x80 { return true }
            p += 1
        }
        return false
    }

    /// Sets the request header fields, then an empty `Accept-Encoding:` (see
    /// `setSharedOptions`; a route's own `Accept-Encoding` is still sent), an empty
    /// `Expect:` when `suppressExpect` and an empty `Content-Type:` when
    /// `suppressContentType` (an empty field in `CURLOPT_HTTPHEADER` makes curl leave out
    /// the one it would add itself).
    func setHeaders(_ headers: [(String, String)], suppressExpect: Bool, suppressContentType: Bool) {
        let count = headers.count + 1 + (suppressExpect ? 1 : 0) + (suppressContentType ? 1 : 0)
        // "Accept-Encoding:" NUL, "Expect:" NUL, "Content-Type:" NUL
        var bytes = 17 + (suppressExpect ? 8 : 0) + (suppressContentType ? 14 : 0)
        for (n, v) in headers { bytes += n.utf8.count + 2 + v.utf8.count + 1 }  // "n: v" NUL
        if count > headerNodeCapacity {
            headerNodes?.deallocate()
            headerNodeCapacity = max(count, 8)
            headerNodes = .allocate(capacity: headerNodeCapacity)
        }
        if bytes > headerTextCapacity {
            headerText?.deallocate()
            headerTextCapacity = max(bytes, 512)
            headerText = .allocate(capacity: headerTextCapacity)
        }
        let nodes = headerNodes!
        var out = headerText!
        func put(_ s: String) {
            var s = s
            s.withUTF8 { u in
                if u.count > 0 { out.update(from: u.baseAddress!, count: u.count) }
                out += u.count
            }
        }
        var i = 0
        for (n, v) in headers {
            let line = out
            put(n)
            out[0] = UInt8(ascii: ":")
            out[1] = UInt8(ascii: " ")
            out += 2
            put(v)
            out[0] = 0  // a NUL inside the value ends the line early, as with curl_slist_append
            out += 1
            nodes[i] = curl_slist(data: UnsafeMutableRawPointer(line).assumingMemoryBound(to: CChar.self), next: nodes + i + 1)
            i += 1
        }
        func putBlank(_ field: StaticString) {
            let line = out
            out.update(from: field.utf8Start, count: field.utf8CodeUnitCount)
            out += field.utf8CodeUnitCount
            out[0] = 0
            out += 1
            nodes[i] = curl_slist(data: UnsafeMutableRawPointer(line).assumingMemoryBound(to: CChar.self), next: nodes + i + 1)
            i += 1
        }
        putBlank("Accept-Encoding:")
        if suppressExpect { putBlank("Expect:") }
        if suppressContentType { putBlank("Content-Type:") }
        nodes[count - 1].next = nil
        if headerListSet != nodes {
            _ = CCurl_easy_setopt_slist(easy, CURLOPT_HTTPHEADER, nodes)
            headerListSet = nodes
        }
    }

    /// Sets `CURLOPT_POSTFIELDS` to a copy of `body` (and its size). Returns the copy
    /// when the transfer must free it, nil when it is the handle's reused buffer.
    func setPostFields(_ body: [UInt8]) -> UnsafeMutableRawPointer? {
        let n = body.count
        let buf: UnsafeMutableRawPointer
        var owned: UnsafeMutableRawPointer? = nil
        if n <= PooledEasy.bodyBufferKeep {
            if n > bodyBufferCapacity || bodyBuffer == nil {
                bodyBuffer?.deallocate()
                bodyBufferCapacity = max(n, 1024)
                bodyBuffer = .allocate(byteCount: bodyBufferCapacity, alignment: 1)
            }
            buf = bodyBuffer!
        } else {
            buf = .allocate(byteCount: n, alignment: 1)
            owned = buf
        }
        body.withUnsafeBytes { b in
            if n > 0 { buf.copyMemory(from: b.baseAddress!, byteCount: n) }
        }
        _ = CCurl_easy_setopt_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(n))
        _ = CCurl_easy_setopt_pointer(easy, CURLOPT_POSTFIELDS, buf)
        return owned
    }
}

/// One upstream attempt in flight. Loop thread only.
public final class UpstreamTransfer {
    private unowned let client: UpstreamClient
    fileprivate let pooled: PooledEasy
    fileprivate var easy: UnsafeMutableRawPointer?
    fileprivate let request: UpstreamRequest
    private var completion: ((UpstreamResult) -> Void)?
    private var resolveList: UnsafeMutablePointer<curl_slist>?
    /// A large request body's copy (small ones use the handle's buffer).
    private var bodyCopy: UnsafeMutableRawPointer?
    private var status = 0
    /// The final response's header lines as received (parsed only when read).
    private var rawHeaders: [UInt8] = []
    private var body: [UInt8] = []
    /// The final response's `Content-Length`, when it sent one: the body is allocated
    /// at that size on its first bytes instead of growing chunk by chunk.
    private var expectedBodyBytes = 0
    /// The next header line starts a response (the first one, or the one after a 1xx's
    /// blank line): only there is a line starting with `HTTP/` a status line.
    private var atResponseStart = true
    /// The final response's head has ended: the lines that follow are trailer fields,
    /// which are not header fields (RFC 9110 §6.5.1) and do not frame the body.
    private var inTrailers = false
    /// Bytes of the final response's trailer section so far (see `maxTrailerBytes`).
    private var trailerBytes = 0
    /// The most a response's trailer section may hold, line ends included: 300 KiB, the
    /// bound libcurl 7.88 puts on a response's head (`MAX_HTTP_RESP_HEADER_SIZE`) but not
    /// on its trailers, every line of which it keeps in memory until the handle's next
    /// transfer. Beyond it the transfer fails (`FramingError.trailersTooLarge`).
    static let maxTrailerBytes = 300 * 1024
    /// The current head is an interim (1xx) response's: another head follows it.
    private var interim = false
    /// The current head's fields do not frame a body (RFC 9112 §6.3 item 1: a 1xx, 204
    /// or 304 status, or the answer to HEAD), so they are not checked for framing.
    private var framingExempt = false
    /// The current head's `Content-Length` value so far; -1: none yet.
    private var headContentLength = -1
    /// The current head has a `Transfer-Encoding` field.
    private var headTransferEncoding = false
    /// The current head's last field line was `Content-Length` (a folded line continues it).
    private var lastFieldWasContentLength = false
    /// Why the header (or write) callback stopped the transfer; nil: it did not.
    private var framingError: FramingError?
    /// When head lines are screened (`received(write:)`): the line of the current head
    /// the next one is (0: its status line), and whether the heads are over (what comes
    /// to the write callback now is the body).
    private var headLine = 0
    private var headsDone = false
    /// When head lines are screened: the last piece the write callback took did not end
    /// its line. curl hands a head line longer than `CURL_MAX_WRITE_SIZE` (16 KiB) to the
    /// write callback in pieces, one call each (sendf.c chop_write), and stores it once,
    /// after the last one: the pieces after the first continue that line. Every head
    /// line curl writes ends in LF.
    private var midLine = false
    /// The line in progress (see `midLine`) is a head's blank line.
    private var inBlankLine = false
    /// Bytes of head lines (and trailers) received, for `PooledEasy.renewAfterUse`.
    private var headBytes = 0
    /// The `CURLOPT_TIMEOUT_MS` last set for this transfer (milliseconds).
    private var timeoutMs: Int64 = 0
    /// Whether the transfer's handle has been added to curl (`UpstreamClient.startQueued`).
    fileprivate var handedToCurl = false
    private var tooLarge = false
    private var selfRetain: Unmanaged<UpstreamTransfer>?

    fileprivate init(client: UpstreamClient, pooled: PooledEasy, request: consuming UpstreamRequest, completion: @escaping (UpstreamResult) -> Void) {
        self.client = client
        self.pooled = pooled
        self.easy = pooled.easy
        self.request = request
        self.completion = completion
    }

    deinit {
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

    /// Sets `CURLOPT_TIMEOUT_MS` anew when the time left until the request's deadline, at
    /// `now` (monotonic nanoseconds), is a millisecond or more shorter than what
    /// `configure` set: the transfer waited for its start (`UpstreamClient.startQueued`).
    /// Returns false, setting nothing, when less than a millisecond is left.
    fileprivate func setTimeout(now: UInt64) -> Bool {
        let ms = request.millisecondsLeft(at: now)
        guard ms > 0 else { return false }
        guard ms < timeoutMs, let h = easy else { return true }
        _ = CCurl_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, Int(ms))
        timeoutMs = ms
        return true
    }

    /// Sets the easy handle's options. Returns a failure when the request cannot be sent.
    fileprivate func configure(remainingMs: Int64, proxies: ProxyEnvironment) -> UpstreamFailure? {
        guard let h = easy else { return UpstreamFailure(kind: .protocol, message: "no handle") }
        // Undo what the handle's previous transfer set (the shared options stay).
        let p = pooled
        // The handle keeps the URL between transfers: set it only when it changes (by
        // its bytes). It is given parsed (`CURLOPT_CURLU`), so curl does not parse the
        // same text again for every transfer; clearing `CURLOPT_URL` drops the copy of
        // the old text a reused handle keeps (curl 7.88 reads the parsed URL's text
        // anew only when that is unset).
        if !(p.url?.text.hasSameBytes(as: request.url) ?? false) {
            let parsed: ParsedURL
            switch client.parsedURL(request.url) {
            case .success(let u): parsed = u
            case .failure(let code):
                // e.g. "malformed URL: Bad hostname" (no URL in the message: it may hold a secret)
                return UpstreamFailure(kind: .protocol, message: "malformed URL: \(String(cString: curl_url_strerror(code.code)))")
            }
            _ = CCurl_easy_setopt_string(h, CURLOPT_URL, nil)
            _ = CCurl_easy_setopt_pointer(h, CURLOPT_CURLU, UnsafeMutableRawPointer(parsed.handle))
            p.url = parsed
            client.handleCounters.urlChanged()
            if proxies.http != proxies.https {
                // The proxy depends on the scheme (set once per handle when it does not).
                let https = UpstreamTransfer.isHTTPS(request.url)
                if p.proxyIsHTTPS != https {
                    proxies.apply(to: h, https: https)
                    p.proxyIsHTTPS = https
                }
            }
        }
        if request.url.utf8.count > ParsedURL.keptBytes { p.renewAfterUse = true }
        if p.customRequest { _ = CCurl_easy_setopt_pointer(h, CURLOPT_CUSTOMREQUEST, nil); p.customRequest = false }
        if p.noBody { _ = CCurl_easy_setopt_long(h, CURLOPT_NOBODY, 0); p.noBody = false }
        if p.postFields {
            _ = CCurl_easy_setopt_pointer(h, CURLOPT_POSTFIELDS, nil)
            _ = CCurl_easy_setopt_off(h, CURLOPT_POSTFIELDSIZE_LARGE, -1)
            p.postFields = false
        }
        if p.resolve { _ = CCurl_easy_setopt_slist(h, CURLOPT_RESOLVE, nil); p.resolve = false }
        _ = CCurl_easy_setopt_long(h, CURLOPT_TIMEOUT_MS, Int(max(1, remainingMs)))
        timeoutMs = remainingMs
        // The connect timeout, only when it ends before the whole attempt: otherwise 0
        // (curl's 300 s default, capped by CURLOPT_TIMEOUT_MS, so the same bound) spares
        // curl a second timer per transfer.
        if p.connectTimeout != request.connectTimeout {
            p.connectTimeout = request.connectTimeout
            p.connectTimeoutMs = max(1, request.connectTimeout.milliseconds)
        }
        let connectMs = p.connectTimeoutMs < remainingMs || remainingMs > 300_000 ? min(p.connectTimeoutMs, remainingMs) : 0
        if p.connectMsSet != connectMs {
            _ = CCurl_easy_setopt_long(h, CURLOPT_CONNECTTIMEOUT_MS, Int(connectMs))
            p.connectMsSet = connectMs
        }
        // The answer to HEAD has no body: its Content-Length is the size a GET would
        // have sent (RFC 9110 §9.3.2), which curl would compare with the limit and
        // refuse as too large (0: no limit; `received(body:)` still enforces it).
        let maxFileSize = request.method == "HEAD" ? 0 : request.maxBodyBytes
        if p.maxFileSize != maxFileSize {
            _ = CCurl_easy_setopt_off(h, CURLOPT_MAXFILESIZE_LARGE, curl_off_t(maxFileSize))
            p.maxFileSize = maxFileSize
        }
        p.transfer = Unmanaged.passUnretained(self)
        p.errorBuffer[0] = 0  // curl writes to it only when the transfer fails

        switch request.method {
        case "GET" where request.body.isEmpty:
            _ = CCurl_easy_setopt_long(h, CURLOPT_HTTPGET, 1)
        case "HEAD":
            _ = CCurl_easy_setopt_long(h, CURLOPT_NOBODY, 1)
            p.noBody = true
        default:
            if !request.body.isEmpty || request.method != "GET" {
                bodyCopy = p.setPostFields(request.body)
                p.postFields = true
            }
            if request.method != "POST" {
                _ = CCurl_easy_setopt_string(h, CURLOPT_CUSTOMREQUEST, request.method)
                p.customRequest = true
            }
        }
        // Never wait for `100 Continue`: it costs a round trip on every POST.
        // (Without a body curl sends no `Expect:`, so there is nothing to suppress.)
        // With a body and no `Content-Type` of the route's, curl would claim
        // `application/x-www-form-urlencoded`; send none instead (RFC 9110 §8.3).
        let ownContentType = p.postFields && !request.headers.contains { UpstreamTransfer.isContentType($0.0) }
        p.setHeaders(request.headers, suppressExpect: p.postFields, suppressContentType: ownContentType)
        if !request.resolve.isEmpty {
            var r: UnsafeMutablePointer<curl_slist>? = nil
            for e in request.resolve { r = curl_slist_append(r, e) }
            resolveList = r
            _ = CCurl_easy_setopt_slist(h, CURLOPT_RESOLVE, r)
            p.resolve = true
        }
        return nil
    }

    /// The failure message for a URL whose host is not ASCII.
    static let nonASCIIHost = "URL host has non-ASCII characters, which libcurl refuses (internationalized names are not converted: use the host's ASCII form, xn--…)"

    /// Whether `name` is `Content-Type` (any case).
    private static func isContentType(_ name: String) -> Bool {
        var n = 0
        for (c, want) in zip(name.utf8, "content-type".utf8) {
            guard c | 0x20 == want else { return false }  // '-' has the bit set already
            n += 1
        }
        return n == 12 && name.utf8.count == 12
    }

    /// Whether `url` starts with `https:` (any case), as curl reads its scheme.
    private static func isHTTPS(_ url: String) -> Bool {
        var n = 0
        for (c, want) in zip(url.utf8, "https:".utf8) {
            guard (c | 0x20) == want else { return false }  // ':' has the bit set already
            n += 1
        }
        return n == 6
    }

    /// Takes what curl hands the write callback: the body's bytes and — when head
    /// lines are screened (`UpstreamClient.screensHeadLines`, `CURLOPT_HEADER`) — first
    /// each line of every head, one line per call, before curl stores it and before
    /// `received(headerLine:)` sees it. A head's first field line that starts with a
    /// space or a tab is refused (RFC 9112 §2.2: whitespace before the first field;
    /// curl would append it to a freed field of the handle's previous transfer): the
    /// transfer stops with `framingError` set and the line is never stored. A head
    /// ends at its blank line; it is the last one unless curl read its status as
    /// interim (1xx other than 101: another head follows). A line longer than 16 KiB
    /// comes in several calls (`midLine`); only its first piece starts a line. Returns the count taken;
    /// fewer than given stops the transfer (CURLE_WRITE_ERROR). Loop thread (curl's
    /// callback).
    fileprivate func received(write chunk: UnsafeRawBufferPointer) -> Int {
        guard UpstreamClient.screensHeadLines && !headsDone else { return received(body: chunk) }
        guard let first = chunk.first else { return 0 }
        if !midLine {  // a line starts (else: the next piece of a long one, `midLine`)
            if first == 0x0D || first == 0x0A {  // the blank line ending a head (curl's test)
                inBlankLine = true
            } else {
                if headLine == 1 && (first == 0x20 || first == 0x09) {
                    framingError = .whitespaceBeforeFirstField
                    // curl keeps the refused line's buffer (`headerb`): when the line is
                    // longer than one piece, the handle is replaced after the transfer.
                    if chunk.count >= Int(CURL_MAX_WRITE_SIZE) { pooled.renewAfterUse = true }
                    return 0
                }
                headLine += 1
            }
        }
        midLine = chunk[chunk.count - 1] != 0x0A
        if inBlankLine && !midLine {  // the head ends with its blank line's last piece
            inBlankLine = false
            headLine = 0
            var code = 0
            if let h = easy { _ = CCurl_easy_getinfo_long(h, CURLINFO_RESPONSE_CODE, &code) }
            if !(100...199).contains(code) || code == 101 { headsDone = true }
        }
        return chunk.count
    }

    fileprivate func received(body chunk: UnsafeRawBufferPointer) -> Int {
        if body.count + chunk.count > request.maxBodyBytes {
            tooLarge = true
            return 0  // makes curl abort with CURLE_WRITE_ERROR
        }
        if body.capacity == 0 && expectedBodyBytes > chunk.count && expectedBodyBytes <= request.maxBodyBytes {
            body.reserveCapacity(expectedBodyBytes)
        }
        body.append(contentsOf: chunk)
        return chunk.count
    }

    /// Takes one header line as curl hands it over: a status line, a field line, a folded
    /// continuation, the blank line ending a head, or a trailer field. Keeps the final
    /// response's field lines and checks its framing (`checkFraming`). Returns false, with
    /// `framingError` set, when the framing is invalid: curl then aborts the transfer and
    /// closes the connection (RFC 9112 §6.3: the response is discarded, the connection not
    /// reused). Loop thread (curl's callback); allocates only to store the line.
    fileprivate func received(headerLine raw: UnsafeRawBufferPointer) -> Bool {
        headBytes += raw.count
        if headBytes > PooledEasy.keptHeadBytes { pooled.renewAfterUse = true }
        var end = raw.count
        while end > 0 && (raw[end - 1] == 0x0A || raw[end - 1] == 0x0D) { end -= 1 }
        if end == 0 {  // the blank line ending a header block
            // After an interim (1xx) head another response begins; after the final one
            // every line is a trailer field, even one that starts with `HTTP/` (curl
            // passes no proxy's answer to `CONNECT` here: `CURLOPT_SUPPRESS_CONNECT_HEADERS`).
            if interim { atResponseStart = true } else { inTrailers = true }
            return true
        }
        if atResponseStart {
            atResponseStart = false
            if end >= 5 && raw[0] == 0x48 && raw[1] == 0x54 && raw[2] == 0x54 && raw[3] == 0x50 && raw[4] == 0x2F {  // "HTTP/"
                // A status line (after 1xx, or a new response): start over.
                return startHead(raw, end: end)
            }
        }
        if inTrailers {  // neither kept nor merged into the header fields
            trailerBytes += raw.count
            return trailerBytes <= UpstreamTransfer.maxTrailerBytes || fail(.trailersTooLarge)
        }
        if !framingExempt && !checkFraming(raw, end: end) { return false }
        // Kept as received; `UpstreamHeaderBlock` splits the lines on first use.
        if rawHeaders.capacity == 0 { rawHeaders.reserveCapacity(512) }
        rawHeaders.append(contentsOf: raw)
        if raw[raw.count - 1] != 0x0A { rawHeaders.append(0x0A) }
        return true
    }

    /// A status line (`HTTP/1.1 204 No Content`, `HTTP/2 200`) begins a new head:
    /// forgets the previous head's fields and framing facts. Returns false, with
    /// `framingError` set, for `101 Switching Protocols`: no step asks to switch, and
    /// libcurl 7.88 would wait for a final response after it until the deadline.
    private func startHead(_ raw: UnsafeRawBufferPointer, end: Int) -> Bool {
        // `HTTP/1.x` only: curl 7.88 reads `HTTP/2 200` or `HTTP/2.0 200` sent over an
        // HTTP/1.1 connection as an HTTP/2 answer (and the upstream as one that multiplexes).
        guard end >= 7 && raw[5] == 0x31 && raw[6] == 0x2E else { return fail(.notHTTP1) }  // "1."
        rawHeaders.removeAll(keepingCapacity: true)
        expectedBodyBytes = 0
        headContentLength = -1
        headTransferEncoding = false
        lastFieldWasContentLength = false
        inTrailers = false
        trailerBytes = 0
        var i = 5
        while i < end && raw[i] != 0x20 { i += 1 }
        while i < end && raw[i] == 0x20 { i += 1 }
        var status = 0
        var digits = 0
        while i < end, digits < 3, raw[i] >= 0x30, raw[i] <= 0x39 {
            status = status * 10 + Int(raw[i] - 0x30)
            digits += 1
            i += 1
        }
        if digits < 3 { status = 0 }  // curl refuses the response itself
        if status == 101 { return fail(.switchedProtocols) }
        interim = status >= 100 && status <= 199
        framingExempt = interim || status == 204 || status == 304 || pooled.noBody
        return true
    }

    /// Checks one field line of a head whose fields frame the body (RFC 9112 §6.3):
    /// `Content-Length` must be a decimal number (or a list of equal ones), the same in
    /// every such line, including a folded continuation (item 5), and must not come with
    /// `Transfer-Encoding` (item 3: curl would follow `Transfer-Encoding` and then reuse
    /// the connection; no option may be changed from within a callback, so failing the
    /// transfer is the way to make curl close it). Returns
    /// false, with `framingError` set, when the framing is invalid. Reads the line only.
    private func checkFraming(_ raw: UnsafeRawBufferPointer, end: Int) -> Bool {
        let first = raw[0]
        if first == 0x20 || first == 0x09 {
            // obs-fold: the previous field's value goes on (RFC 9112 §5.2); curl read
            // `Content-Length` from its first line alone.
            guard lastFieldWasContentLength else { return true }
            var i = 1
            while i < end && (raw[i] == 0x20 || raw[i] == 0x09) { i += 1 }
            return i == end || fail(.invalidLength)
        }
        lastFieldWasContentLength = false
        let lower = first | 0x20
        if lower == UInt8(ascii: "c") {
            guard end >= 15 && (raw[8] | 0x20) == UInt8(ascii: "l"),
                  UpstreamTransfer.hasName(raw, "content-length:") else { return true }
            lastFieldWasContentLength = true
            switch UpstreamTransfer.contentLength(raw, end: end) {
            case .invalid: return fail(.invalidLength)
            case .differing: return fail(.differingLengths)
            case .value(let n):
                if headTransferEncoding { return fail(.lengthWithTransferEncoding) }
                if headContentLength >= 0 && headContentLength != n { return fail(.differingLengths) }
                headContentLength = n
                expectedBodyBytes = n
            }
        } else if lower == UInt8(ascii: "t") {
            guard end >= 18 && raw[8] == UInt8(ascii: "-"),
                  UpstreamTransfer.hasName(raw, "transfer-encoding:") else { return true }
            if headContentLength >= 0 { return fail(.lengthWithTransferEncoding) }
            headTransferEncoding = true
        }
        return true
    }

    private func fail(_ error: FramingError) -> Bool {
        framingError = error
        return false
    }

    /// Whether `raw` starts with `name` (lower-case, ending in `:`), its letters in any
    /// case: the field curl reads as that name (curl's `checkprefix`).
    private static func hasName(_ raw: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
        let n = name.utf8CodeUnitCount
        guard raw.count >= n else { return false }
        let want = name.utf8Start
        for i in 0..<n where raw[i] != want[i] {
            guard want[i] >= 0x61 && want[i] <= 0x7A && raw[i] | 0x20 == want[i] else { return false }
        }
        return true
    }

    /// A `Content-Length` field value: one value, or members that differ, or not valid.
    private enum LengthValue {
        case value(Int)
        case differing
        case invalid
    }

    /// The value of a `Content-Length:` line (name already matched): `1*DIGIT`, or a
    /// comma-separated list of such numbers that are all equal (what a sender that
    /// combined duplicate fields writes; RFC 9110 §8.6 lets a recipient take it as one
    /// value), blanks around each. More than 18 significant digits count as `Int.max`
    /// (larger than any body accepted; curl refuses the transfer as too large).
    private static func contentLength(_ raw: UnsafeRawBufferPointer, end: Int) -> LengthValue {
        var i = 15  // "content-length:".count
        var value = -1
        while true {
            while i < end && (raw[i] == 0x20 || raw[i] == 0x09) { i += 1 }
            var n = 0
            var digits = 0
            var significant = 0
            while i < end, raw[i] >= 0x30, raw[i] <= 0x39 {
                if significant > 0 || raw[i] != 0x30 {
                    significant += 1
                    n = significant > 18 ? Int.max : n * 10 + Int(raw[i] - 0x30)
                }
                digits += 1
                i += 1
            }
            if digits == 0 { return .invalid }
            if value >= 0 && value != n { return .differing }
            value = n
            while i < end && (raw[i] == 0x20 || raw[i] == 0x09) { i += 1 }
            if i == end { return .value(value) }
            guard raw[i] == 0x2C else { return .invalid }  // ","
            i += 1
        }
    }

    /// Marks the handle for replacement (`PooledEasy.renewAfterUse`) when this transfer's
    /// request went out and the transfer ended other than by a complete response: curl
    /// keeps the buffer of a head line it refused or was reading (up to 100 KB,
    /// `headerb`) until the handle is cleaned up. Before the request went out nothing
    /// was read. For a failed or cancelled transfer, while it still has its handle.
    fileprivate func renewHandleIfRequestSent() {
        // Still queued (`UpstreamClient.startQueued`): the handle's figures are its last
        // transfer's, and nothing of this one was sent or read.
        guard handedToCurl, let h = easy else { return }
        var sent = 0
        _ = CCurl_easy_getinfo_long(h, CURLINFO_REQUEST_SIZE, &sent)
        if sent > 0 { pooled.renewAfterUse = true }
    }

    fileprivate func result(code: CURLcode) -> UpstreamResult {
        // curl may have refused a head line no callback saw (a NUL byte, no colon, a bad
        // status line) or stopped within one (timeout, closed connection). Refusals of
        // ours counted their lines.
        if code != CURLE_OK && framingError == nil && !tooLarge { renewHandleIfRequestSent() }
        if let framingError {
            // The header callback stopped the transfer (curl says only CURLE_WRITE_ERROR).
            return .failure(UpstreamFailure(kind: .protocol, message: framingError.message))
        }
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
        if code == CURLE_URL_MALFORMAT && pooled.urlHostIsNonASCII() {
            return .failure(UpstreamFailure(kind: .protocol, message: UpstreamTransfer.nonASCIIHost))
        }
        if code == CURLE_WEIRD_SERVER_REPLY && pooled.errorBuffer[0] != 0 {
            // curl refused the response head itself, before the header callback saw the
            // line (e.g. "Invalid Content-Length: value"): say what it found.
            let detail = String(cString: pooled.errorBuffer)
            if detail.hasPrefix("Invalid Content-Length") {
                return .failure(UpstreamFailure(kind: .protocol, message: FramingError.invalidLength.message))
            }
            return .failure(UpstreamFailure(kind: .protocol, message: "\(text): \(detail)"))
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

/// Why an upstream response's framing is invalid (RFC 9112 §6.3); the attempt fails as
/// `.protocol` with `message`, and its connection is closed.
private enum FramingError {
    /// Two `Content-Length` lines, or members of one, with different values (item 5).
    case differingLengths
    /// A `Content-Length` that is not a decimal number (item 5).
    case invalidLength
    /// Both `Transfer-Encoding` and `Content-Length` (item 3).
    case lengthWithTransferEncoding
    /// `101 Switching Protocols`, which no step requests (RFC 9110 §15.2.2: a server
    /// switches only to a protocol the request's `Upgrade` names).
    case switchedProtocols
    /// A head's first field line starts with whitespace (RFC 9112 §2.2; screened only
    /// with libcurl before 8.1.0, see `UpstreamClient.screensHeadLines`).
    case whitespaceBeforeFirstField
    /// A trailer section larger than `UpstreamTransfer.maxTrailerBytes`.
    case trailersTooLarge
    /// A status line of another HTTP version than 1.x (`HTTP/2 200`) on an HTTP/1.1
    /// connection (RFC 9112 §4: `HTTP-version`).
    case notHTTP1

    var message: String {
        switch self {
        case .differingLengths: "invalid response framing: differing Content-Length values (RFC 9112 §6.3)"
        case .invalidLength: "invalid response framing: Content-Length is not a decimal number (RFC 9112 §6.3)"
        case .lengthWithTransferEncoding: "invalid response framing: both Transfer-Encoding and Content-Length (RFC 9112 §6.3)"
        case .switchedProtocols: "upstream switched protocols (101); only HTTP responses are accepted"
        case .whitespaceBeforeFirstField: "invalid response head: whitespace before the first header field (RFC 9112 §2.2)"
        case .trailersTooLarge: "response trailer section larger than \(UpstreamTransfer.maxTrailerBytes) bytes"
        case .notHTTP1: "invalid status line: not HTTP/1.x on an HTTP/1.1 connection (RFC 9112 §4)"
        }
    }
}
