import Crypto
import EventLoop
import Flows
import Glibc
import HTTP1
import Jobs
import JSON
import Journal
import Routes
import Locking
import Synchronization
import Upstream

/// What each event loop owns: its upstream client, its copy of the route
/// table, its log buffer. Touched only on that loop's thread.
final class LoopState: @unchecked Sendable {
    let loop: EventLoop
    let client: UpstreamClient
    /// Signed callback deliveries, on their own curl multi handle so a pinned
    /// (SSRF-checked) address never shares connections or DNS cache with steps.
    let deliverer: CallbackDeliverer
    var routes: RouteTable
    let log: LogBuffer
    /// Sync callers still waiting for their run (and job long-polls), by wait token:
    /// `handOff` hands the run to async mode (its budget ended, or a drain), and
    /// `writeAhead` journals its job record shortly before the budget ends, so the
    /// `202` need not wait for an fsync. The waiter itself, not closures: no
    /// allocation per request.
    var waiting: [UInt64: any BudgetWaiter] = [:]
    /// The keys of `waiting` that are job long-polls (`GET /jobs/{id}?wait=N`): a drain
    /// answers them at once, as they wait for nothing the drain could finish.
    var longPolls: Set<UInt64> = []
    var requestCounter: UInt64 = 0
    /// `<process prefix><loop index>-`: request ids are this plus the counter; nil when
    /// the access log is off (the ids are only for its lines).
    var requestIDPrefix: String? = ""
    /// Keys of `waiting` (unique per synchronous run on this loop).
    var waitToken: UInt64 = 0
    /// Wait-budget deadlines of synchronous runs, one FIFO per budget length.
    var budgetQueues: [BudgetQueue] = []
    /// Runs with an idempotency key, by job id: a duplicate request attached to one
    /// (SPEC §5) calls `whenJob` when its own budget ends, to have the run become a
    /// durable job — its own caller may still be waiting — and learn whether its record
    /// is durable, before that duplicate gets its `202`. While the caller waits, its
    /// waiting run; once the caller is answered, only the job record (not the caller's
    /// request and connection). Removed when the run finishes.
    var promotions: [String: any JobPromotion] = [:]
    /// This loop's batch of job records (set once, right after creation).
    var journal: LoopJournal!
    /// How long before its budget ends a waiting run's job record is written.
    var writeAheadLead: () -> Duration = { .zero }
    /// This loop's copy of the gateway's redactor (replaced on reload).
    var redactor: Redactor
    /// This loop's counters, merged with the other loops' at scrape time.
    var metrics = MetricsSnapshot()
    /// Trace and span ids for runs on this loop.
    var spanIDs = SpanIDGenerator()

    init(loop: EventLoop, routes: RouteTable, logLevel: String, deliverer: CallbackDeliverer, caFile: String?) {
        self.loop = loop
        self.redactor = Redactor(secrets: routes.secrets)
        self.client = UpstreamClient(loop: loop, caFile: caFile)
        self.deliverer = deliverer
        self.routes = routes
        self.log = LogBuffer(loop: loop, level: logLevel)
    }

    /// Counts a new request on this loop and returns its id (`requestIDPrefix`
    /// plus the counter; empty when the access log is off).
    func nextRequestID() -> String {
        requestCounter &+= 1
        guard let prefix = requestIDPrefix else { return "" }
        return prefix + String(requestCounter)
    }
}

/// The Switchboard gateway: the HTTP server, route dispatch, runs, the wait
/// budget and the switch to async mode, `/jobs`, health and readiness.
///
/// Create it, call `start()`, and later `drain()` / `shutdown()`. Public methods
/// are safe from any thread; the request path runs on the event loops.
public final class Gateway: @unchecked Sendable {
    /// The configuration it was started with.
    public let config: GatewayConfig
    private let group: EventLoopGroup
    private var server: HTTPServer!
    /// Each loop's state, indexed like the loops (internal for tests: read it only
    /// on that loop, or after `shutdown()`).
    private(set) var states: [LoopState] = []
    /// Async jobs and finished runs kept for `/jobs` until the retention passes.
    let jobs = JobRegistry()
    /// Journaled jobs that could not resume because their route is not configured,
    /// by id: they resume when a reload brings the route back.
    private let parked = Locked<[String: ParkedJob]>([:])
    private let redactor: Locked<Redactor>
    private let draining = Atomic<Bool>(false)
    private let processPrefix = Crypto.hex(Crypto.randomBytes(4))
    private let controlLog: LogBuffer
    private var adminServer: HTTPServer?
    /// Registered callback endpoints (all callers; lookups filter by owner).
    let endpoints: CallbackEndpoints
    /// Callback deliveries: pending, delivered, dead-lettered.
    let deliveries: DeliveryStore
    /// Idempotency records (SPEC §5).
    let idempotency: IdempotencyStore
    /// The SSRF guard for callback URLs.
    let policy: AddressPolicy
    /// Durable state: the embedded journal in the data directory.
    let durable: DurableState
    private let jobsRunning = Atomic<Int>(0)

    /// Creates the gateway with a loaded route table. Nothing listens until `start()`.
    /// Opens the journal in `config.data` (recovery happens in `start()`).
    /// - Throws: `SystemError` when the event loops cannot be created;
    ///   `GatewayConfig.Error` when a setting is out of range (`job_retention`), when
    ///   the data directory is locked by another process or cannot be used, or when the
    ///   process's file-size limit is too small for a journal record
    ///   (`JournalOptions.smallestFileSizeLimit`). A file-size limit below what a
    ///   segment may grow to is logged (`warn`) and met with smaller segments.
    public init(config: GatewayConfig, routes: RouteTable) throws {
        if let problem = GatewayConfig.jobRetentionProblem(config.jobRetention) {
            throw GatewayConfig.Error(message: "job_retention: \(problem)")
        }
        self.config = config
        self.group = try EventLoopGroup(count: config.eventLoops)
        self.redactor = Locked(Redactor(secrets: routes.secrets))
        self.controlLog = LogBuffer(loop: nil, level: config.logLevel)
        do { policy = try AddressPolicy(allowing: config.callbackAllow) } catch {
            throw GatewayConfig.Error(message: "callback_allow: \(error.description)")
        }
        let secret = try config.callbackSecret ?? Gateway.loadOrCreateCallbackSecret(dataDirectory: config.data)
        var journalOptions = JournalOptions()
        journalOptions.fsync = config.journalSync != "off"
        journalOptions.syncEveryRecord = config.journalSync == "record"
        // Under a file-size limit (`ulimit -f`, systemd's `LimitFSIZE=`) lower than a
        // segment can grow, segments are made smaller so that every write fits.
        if let limit = JournalOptions.currentFileSizeLimit() {
            guard let fitting = journalOptions.segmentBytes(fittingFileSizeLimit: limit) else {
                throw GatewayConfig.Error(message: "\(config.data): the file-size limit (ulimit -f, RLIMIT_FSIZE) is \(limit) bytes; "
                    + "the journal needs at least \(journalOptions.smallestFileSizeLimit) (one record of up to \(journalOptions.maxRecordBytes) bytes in a segment)")
            }
            if fitting < journalOptions.segmentBytes {
                controlLog.log("warn", "file-size limit (RLIMIT_FSIZE) below what a journal segment may grow to: smaller segments are used",
                               [("file_size_limit", .int(Int64(limit))), ("segment_bytes", .int(Int64(fitting))),
                                ("default_segment_bytes", .int(Int64(journalOptions.segmentBytes)))])
                journalOptions.segmentBytes = fitting
            }
        }
        let journal: Journal
        do {
            journal = try Journal.open(directory: config.data, options: journalOptions)
        } catch {
            throw GatewayConfig.Error(message: "\(config.data): cannot open the journal: \(error.description)")
        }
        let durable = DurableState(journal: journal, loops: group.loops)
        self.durable = durable
        // Every change to shared state goes to the journal, in the order it happens.
        endpoints = CallbackEndpoints { change, recorded in
            switch change {
            case .registered(let e), .updated(let e): durable.write([DurableState.endpoint(e)], durable: true, completion: recorded)
            case .deleted(let id): durable.write([.delete("endpoint/\(id)")], durable: true, completion: recorded)
            }
        }
        deliveries = DeliveryStore { change in
            switch change {
            case .enqueued(let r):
                // With the job's result when it waits for this record (`track`): one
                // append, so no failed write can keep the result and lose the delivery
                // (unless the delivery can never be written: too large for the journal).
                let record = DurableState.delivery(r), result = durable.takeResult(ofJob: r.jobID)
                if durable.journal.fits(record) {
                    durable.write([record] + result, durable: true)
                } else {
                    durable.write([record], durable: true)
                    if !result.isEmpty { durable.write(result, durable: true) }
                }
            case .updated(let r): durable.write([DurableState.delivery(r)], durable: true)
            case .removed(let job): durable.write([.delete("delivery/\(job)")], durable: false)
            }
        }
        // Idempotency records of synchronous runs are written without waiting for
        // an fsync (README: "What is durable when").
        idempotency = IdempotencyStore { change in
            switch change {
            case .began(let r), .completed(let r): durable.write([DurableState.idempotency(r)], durable: false)
            case .removed(let scope, let key): durable.write([.delete(DurableState.idempotencyKey(scope, key))], durable: false)
            }
        }
        if journal.openReport.droppedBytes > 0 || !journal.openReport.problems.isEmpty {
            controlLog.log("error", "journal cut at a torn or corrupt record; the bytes cut are kept aside in the data directory",
                           [("report", .string(journal.openReport.description))])
        }
        let (endpoints, deliveries, policy) = (endpoints, deliveries, policy)
        let processPrefix = self.processPrefix
        let options = DeliveryOptions(schedule: config.callbackRetry)
        states = group.loops.map { loop in
            let made = Locked<LoopState?>(nil)
            let done = Atomic<Bool>(false)
            loop.execute {
                let deliverer = CallbackDeliverer(client: UpstreamClient(loop: loop, caFile: config.upstreamCAFile), store: deliveries, endpoints: endpoints,
                                                  policy: policy, secret: secret, options: options)
                let state = LoopState(loop: loop, routes: routes, logLevel: config.logLevel, deliverer: deliverer,
                                      caFile: config.upstreamCAFile)
                state.requestIDPrefix = config.accessLog ? "\(processPrefix)\(loop.index)-" : nil
                state.journal = durable.loopJournals[loop.index]
                state.writeAheadLead = { durable.writeAheadLead }
                deliverer.onEvent = { [unowned state] event in Gateway.logDelivery(event, to: state.log) }
                made.withLock { $0 = state }
                done.store(true, ordering: .releasing)
            }
            while !done.load(ordering: .acquiring) { usleep(200) }
            return made.withLock { $0! }
        }
        // Journal write failures are logged (on loop 0) as they start and end: a request
        // answered 503 for them says only that its job could not be made durable.
        // The loop and its log, not the loop state: that reaches the journal (through its
        // deliverer's store), so holding it here would keep both alive after shutdown —
        // and a weak reference would give the state a side table, slowing every retain
        // and release of it (several per request).
        let first = states[0]
        durable.onHealthChange.withLock {
            let log = LoopBound(first.log)  // used on its own loop only
            $0 = { [loop = first.loop] change in
                loop.execute { Gateway.logJournalHealth(change, to: log.value) }
            }
        }
    }

    /// One log line for a change in how journal writes go (`DurableState.noteWrite`).
    static func logJournalHealth(_ change: DurableState.HealthChange, to log: LogBuffer) {
        switch change {
        case let .failing(error, failures):
            log.log("error", "journal write failed; async requests are answered 503 until writes succeed again",
                    [("error", .string(error.description)), ("failed_writes", .int(Int64(failures)))])
        case let .stopped(error):
            log.log("error", "journal stopped accepting writes; async requests are answered 503 and /readyz 503 until the gateway is restarted",
                    [("error", .string(error.description))])
        case let .recovered(failures):
            log.log("info", "journal writes succeed again", [("failed_writes", .int(Int64(failures)))])
        }
    }

    /// The port the main listener is bound to (after `start()`).
    public var port: UInt16 { server.port }

    /// The port of the admin listener (`admin_listen`), if configured and started.
    public var adminPort: UInt16? { adminServer?.port }

    /// Whether `/readyz` answers 200: routes loaded, not draining, and the journal
    /// accepting writes (not stopped for good: see `JournalStats.poisoned`; a write
    /// that failed on a full disk does not count, the next may succeed).
    public var isReady: Bool { !draining.load(ordering: .relaxed) && durable.journal.stats.poisoned == nil }

    /// Binds the listener (one per loop, `SO_REUSEPORT`) and starts serving, and the
    /// admin listener when `admin_listen` is set; both report what their HTTP layer
    /// refuses on its own to `recordRefusal`. The `listening` log line gives the bound
    /// addresses (`address`, `admin_address`), a port 0 resolved, and the authorities
    /// trusted for upstream TLS when they are not the system's (`upstream_ca_file`, the
    /// path as configured). That line is written at any `log_level`.
    /// - Throws: `SystemError` when an address cannot be bound.
    public func start() throws {
        let onRefusal: (HTTPRefusal) -> Void = { [unowned self] r in self.recordRefusal(r) }
        server = HTTPServer(group: group, address: config.listen, limits: config.limits, tls: config.tls,
                            continueCheck: { [unowned self] head, w in self.refuseBeforeBody(head, w) },
                            onRefusal: onRefusal) { [unowned self] req, w in
            self.handle(req, w)
        }
        try recover()
        try server.start()
        if let admin = config.adminListen {
            adminServer = HTTPServer(group: group, address: admin, limits: config.limits,
                                     continueCheck: { [unowned self] head, w in self.refuseAdminBeforeBody(head, w) },
                                     onRefusal: onRefusal) { [unowned self] req, w in
                self.handleAdmin(req, w)
            }
            try adminServer!.start()
        }
        scheduleJobSweep()
        if config.apiKeys.isEmpty {
            controlLog.log("warn", "no api_keys configured: the gateway is OPEN to any caller on \(config.listen.host):\(port)")
        }
        var fields: [(String, JSON)] = [("address", .string("\(config.listen.host):\(port)"))]
        if let admin = config.adminListen, let adminPort {
            fields.append(("admin_address", .string("\(admin.host):\(adminPort)")))
        }
        fields += [("event_loops", .int(Int64(group.loops.count))), ("scheme", .string(config.tls == nil ? "http" : "https"))]
        if let caFile = config.upstreamCAFile { fields.append(("upstream_ca_file", .string(caFile))) }
        // Whatever `log_level` says: tools and supervisors read the port from this line.
        controlLog.announce("listening", fields)
    }

    /// Re-reads the TLS certificate and key for new connections (SIGHUP); open
    /// connections keep their session. A no-op without TLS.
    /// - Throws: `TLSError` when the new files are unusable; the old certificate stays.
    public func reloadTLS() throws { try server.reloadTLS() }

    /// Replaces the route table on every loop (requests already running keep
    /// their route). Safe from any thread.
    /// Journaled jobs waiting for their route (see `parked`) whose route is in the
    /// new table resume, each on a loop after that loop took the new table.
    public func reload(routes: RouteTable) {
        redactor.withLock { $0 = Redactor(secrets: routes.secrets) }
        for s in states {
            s.loop.execute {
                s.routes = routes
                s.redactor = Redactor(secrets: routes.secrets)
            }
        }
        // Each job stays parked, marked with its loop, until that loop has resumed it:
        // a lookup meanwhile waits behind the resumption there (`handleJob`).
        let states = self.states
        let back = parked.withLock { p -> [(ParkedJob, LoopState)] in
            let back = p.values.filter { $0.resumingOn == nil && routes.route(named: $0.job.route) != nil }
                .sorted { $0.job.createdAt < $1.job.createdAt }
            return back.enumerated().map { n, b in
                let ls = states[n % states.count]
                p[b.job.id]?.resumingOn = ls.loop
                return (b, ls)
            }
        }
        for (b, ls) in back {
            ls.loop.execute { [unowned self] in
                ls.log.log("info", "journaled job resumes: its route is configured again",
                           [("job_id", .string(b.job.id)), ("route", .string(b.job.route))])
                _ = self.resume(b.job, on: ls)
                parked.withLock { $0[b.job.id] = nil }
            }
        }
    }

    /// Graceful drain (SPEC §8): stop accepting, `/readyz` → 503, let in-flight
    /// synchronous runs finish within `timeout`, then hand those still running
    /// to async mode (their callers get `202`). Blocks the calling thread (not a
    /// loop thread) until done.
    public func drain(timeout: Duration) {
        draining.store(true, ordering: .relaxed)
        server.stopAccepting()
        server.closeIdleConnections()
        adminServer?.stopAccepting()
        // Long-polls first, with their jobs as they stand: holding them would hold the
        // restart for the whole timeout (they leave `waiting` once their answer is out).
        for s in states {
            s.loop.execute { for token in s.longPolls { s.waiting[token]?.handOff() } }
        }
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end, waitingCount() > 0 { usleep(10_000) }
        for s in states {
            s.loop.execute {
                let w = s.waiting
                s.waiting.removeAll()
                for (_, waiter) in w { waiter.handOff() }
            }
        }
        // Give the 202s a moment to be written.
        let flushEnd = ContinuousClock.now + .milliseconds(500)
        while ContinuousClock.now < flushEnd, waitingCount() > 0 { usleep(10_000) }
        usleep(50_000)
    }

    private func waitingCount() -> Int {
        var total = 0
        for s in states {
            let n = Locked<Int>(-1)
            s.loop.execute { let c = s.waiting.count; n.withLock { $0 = c } }
            while n.withLock({ $0 }) < 0 { usleep(500) }
            total += n.withLock { $0 }
        }
        return total
    }

    /// Closes every connection and stops the loops. Call once, from a non-loop thread.
    public func shutdown() {
        server?.shutdown()
        adminServer?.shutdown()
        durable.journal.close()
        for s in states { s.loop.execute { s.log.flush() } }
        group.shutdown()
        // The loops have stopped: let go of what only a running loop would have
        // finished (transfers in flight, waiting callers, deliveries), so the runs,
        // their loop state and this gateway can be freed.
        for s in states {
            s.deliverer.cancelAll()
            s.client.cancelAll()
            s.waiting.removeAll()
            s.longPolls.removeAll()
            s.promotions.removeAll()
        }
    }

    // MARK: - Request dispatch (loop thread)

    /// What a request asks for, decided from its head alone (method and path). The
    /// one classification both `handle` (the whole request) and `refuseBeforeBody`
    /// (the head of an `Expect: 100-continue` request) use, so they always agree.
    enum RequestTarget {
        /// `GET|HEAD /healthz`; no API key.
        case health
        /// `GET|HEAD /readyz`; no API key.
        case readiness
        /// `GET|HEAD /metrics` on the main listener (no `admin_listen`), or on the admin listener.
        case metrics
        /// An operation of the callbacks API (`/callbacks…`).
        case callbacks(CallbacksOperation)
        /// `GET|HEAD /jobs/{id}`.
        case job(id: String)
        /// `POST /jobs/{id}/redeliver`.
        case redeliver(jobID: String)
        /// A route takes this method and path.
        case route(Route, params: [(String, String)])
        /// Refused whatever the body: a `404` or `405` problem (`405` with `Allow`).
        /// `open`: answered without an API key (a method `/healthz` or `/readyz` does not take).
        case refused(HTTPResponse, open: Bool = false)

        /// Whether the caller must authenticate before being served or refused.
        var needsKey: Bool {
            switch self {
            case .health, .readiness: return false
            case .refused(_, let open): return !open
            case .metrics, .callbacks, .job, .redeliver, .route: return true
            }
        }
    }

    /// Classifies a request head on the main listener: the operations endpoints,
    /// then the `/callbacks` and `/jobs` APIs (which own every path under them),
    /// then the routes.
    private func target(of head: HTTPRequest, routes: RouteTable) -> RequestTarget {
        if let t = Gateway.operationsTarget(head, metrics: config.adminListen == nil) { return t }
        let p = head.path
        if p == "/callbacks" || p.hasPrefix("/callbacks/") { return Gateway.callbacksTarget(head) }
        if p == "/jobs" || p.hasPrefix("/jobs/") { return Gateway.jobsTarget(head) }
        switch routes.match(method: head.method, path: p) {
        case .matched(let route, let params): return .route(route, params: params)
        case .notFound: return .refused(Problem(status: 404, detail: "no route for \(head.method) \(p)").httpResponse)
        case .invalidParameter(let name, let raw):
            return .refused(Problem(status: 400, detail: "path parameter '\(name)' is not valid percent-encoded UTF-8: \(raw)").httpResponse)
        case .methodNotAllowed(let allow): return .refused(Gateway.notAllowed(head, allow: allow.joined(separator: ", ")))
        }
    }

    /// `/healthz`, `/readyz` and, when `metrics`, `/metrics`: served to `GET` and
    /// `HEAD`, `405` to any other method. Nil for any other path.
    private static func operationsTarget(_ head: HTTPRequest, metrics: Bool) -> RequestTarget? {
        let t: RequestTarget
        switch head.path {
        case "/healthz": t = .health
        case "/readyz": t = .readiness
        case "/metrics" where metrics: t = .metrics
        default: return nil
        }
        guard head.method == "GET" || head.method == "HEAD" else {
            return .refused(notAllowed(head, allow: "GET, HEAD"), open: !t.needsKey)
        }
        return t
    }

    /// The segments of `path` after its leading `/`, empty ones kept (`/a/` → `["a", ""]`).
    static func pathSegments(_ path: String) -> [Substring] {
        path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
    }

    /// `404` for a path under the gateway's own APIs that names nothing.
    static var noSuchResource: HTTPResponse { Problem(status: 404, detail: "no such resource").httpResponse }

    /// `405` for `head`'s method, with `Allow: allow`.
    static func notAllowed(_ head: HTTPRequest, allow: String) -> HTTPResponse {
        var r = Problem(status: 405, detail: "\(head.method) is not allowed here").httpResponse
        r.headers.append(("Allow", allow))
        return r
    }

    private func handle(_ req: consuming HTTPRequest, _ w: HTTPResponseWriter) {
        let state = states[w.loop.index]
        let requestID = state.nextRequestID()
        // From the request's arrival, not from when a busy loop got to it: its wait
        // budget (with its job record's write-ahead) and logged duration include that
        // queueing. Step deadlines count from each step's own start, as before.
        let start = req.receivedAt ?? w.loop.now
        if draining.load(ordering: .relaxed) { w.closeAfterResponse = true }

        let target = target(of: req, routes: state.routes)
        // Authentication (SPEC §7); the operations endpoints never need a key.
        var caller = ""
        if target.needsKey {
            switch authenticate(req) {
            case .success(let name): caller = name
            case .failure(let refusal):
                return finishRequest(state, w, req, refusal, route: nil, outcome: "error", requestID: requestID, start: start)
            }
        }
        switch target {
        case .health: w.respond(healthResponse)
        case .readiness: w.respond(readinessResponse)
        case .metrics: serveMetrics(req, w, state: state, requestID: requestID, start: start)
        case .callbacks(let op): handleCallbacks(op, req, w, caller: caller, state: state, requestID: requestID, start: start)
        case .job(let id): handleJob(id, req, w, caller: caller, state: state, requestID: requestID, start: start)
        case .redeliver(let id): handleRedeliver(jobID: id, req, w, caller: caller, state: state, requestID: requestID, start: start)
        case .route(let route, let params):
            runRoute(route, params: params, req, w, caller: caller, state: state, requestID: requestID, start: start)
        case .refused(let r, _):
            finishRequest(state, w, req, r, route: nil, outcome: "error", requestID: requestID, start: start)
        }
    }

    /// A request that sent `Expect: 100-continue` and would be refused from its head
    /// alone — an unknown or missing API key (`401`), no route or no such resource of
    /// the `/jobs` and `/callbacks` APIs (`404`), a method the path does not take
    /// (`405`) — gets that answer instead of `100 Continue`, so its body is never sent
    /// (RFC 9110 §10.1.1); logged and counted like any request. The head is classified
    /// as `handle` classifies the whole request. Returns whether it answered. Loop
    /// thread (the `HTTPServer`'s continue check).
    private func refuseBeforeBody(_ head: HTTPRequest, _ w: HTTPResponseWriter) -> Bool {
        let state = states[w.loop.index]
        let target = target(of: head, routes: state.routes)
        let refusal: HTTPResponse
        if target.needsKey, case .failure(let r) = authenticate(head) {
            refusal = r
        } else if case .refused(let r, _) = target {
            refusal = r
        } else {
            return false
        }
        answerRefused(head, refusal, w)
        return true
    }

    /// Answers a request refused from its head alone (a `401`, `404` or `405`), logged
    /// and counted with outcome `error` as a request of its own. Loop thread.
    private func answerRefused(_ head: HTTPRequest, _ refusal: HTTPResponse, _ w: HTTPResponseWriter) {
        let state = states[w.loop.index]
        finishRequest(state, w, head, refusal, route: nil, outcome: "error", requestID: state.nextRequestID(), start: w.loop.now)
    }

    /// Per-request context threaded through the route pipeline: one object per
    /// request, shared by the steps and the waiting caller instead of copied into
    /// each (a copy retained every field). Loop thread only.
    final class RouteCall {
        let route: Route
        let params: [(String, String)]
        let req: HTTPRequest
        let w: HTTPResponseWriter
        let caller: String
        let state: LoopState
        let requestID: String
        let start: Instant
        /// The parsed request body, when the route reads it (set before the run starts).
        var body: JSON?
        /// Where the job's result goes, when the caller asked for a callback (set before the run starts).
        var callback: DeliveryTarget?

        init(route: Route, params: [(String, String)], req: HTTPRequest, w: HTTPResponseWriter, caller: String,
             state: LoopState, requestID: String, start: Instant) {
            self.route = route
            self.params = params
            self.req = req
            self.w = w
            self.caller = caller
            self.state = state
            self.requestID = requestID
            self.start = start
        }
    }

    /// Step 1: parse the body when the route reads it, then resolve the callback target.
    private func runRoute(_ route: Route, params: [(String, String)], _ req: consuming HTTPRequest, _ w: HTTPResponseWriter,
                          caller: String, state: LoopState, requestID: String, start: Instant) {
        let call = RouteCall(route: route, params: params, req: req, w: w, caller: caller, state: state,
                             requestID: requestID, start: start)
        // `call.req` from here on: a local copy would retain every field of the request.
        if route.readsRequestBody {
            do { call.body = try JSON.parse(call.req.body) } catch {
                return refuse(call, Problem(status: 400, detail: "the request body must be JSON: \(error)"))
            }
        }
        if route.readsRequestQuery, let q = call.req.query, let bad = FlowRun.firstNonUTF8QueryPart(q) {
            // Refused rather than passed on with U+FFFD in place of the caller's bytes.
            return refuse(call, Problem(status: 400, detail: "the query is not UTF-8 once percent-decoded: \(bad)"))
        }
        if let id = call.req.headers["callback"] {
            guard CallbackEndpoints.isWellFormedID(id), let e = endpoints.find(id, owner: caller) else {
                return refuse(call, Problem(status: 422, detail: "unknown callback endpoint \(id)"))
            }
            guard !e.disabled else { return refuse(call, Problem(status: 422, detail: "callback endpoint \(id) is disabled")) }
            call.callback = .endpoint(id: id)
        } else if let url = call.req.headers["callback-url"] {
            // The SSRF check resolves the host (blocking): off the loop, then back.
            let loop = state.loop
            let pending = LoopBound(call)  // hops back to this same loop before use
            policy.vetAsync(url) { [unowned self] result in
                loop.execute {
                    let call = pending.value
                    switch result {
                    case .success(let target):
                        call.callback = .url(target.url.text)
                        self.applyIdempotency(call)
                    case .failure(let e):
                        let status = { if case .malformed = e { return 400 } else { return 422 } }()
                        self.refuse(call, Problem(status: status, detail: "Callback-URL refused: \(e.description)"))
                    }
                }
            }
            return
        }
        applyIdempotency(call)
    }

    /// Step 2 (SPEC §5): a request with `Idempotency-Key` starts a run only when
    /// the key is new; a finished one is replayed, a running one attached to.
    private func applyIdempotency(_ call: RouteCall, retried: Bool = false) {
        // One key per request: with two, which one the record is kept under would
        // depend on their order, and a retry sending either alone would run again.
        let keys = call.req.headers.count(named: "idempotency-key")
        if keys > 1 {
            return refuse(call, Problem(status: 400, detail: "send exactly one Idempotency-Key header"))
        }
        guard keys == 1, let key = call.req.headers["idempotency-key"] else {
            return startRun(call, jobID: nil, token: nil)  // the job id is drawn if the run goes async
        }
        if key.isEmpty {
            return refuse(call, Problem(status: 400, detail: "Idempotency-Key must not be empty"))
        }
        let scope = IdempotencyScope(caller: call.caller, route: call.route.name)
        let fingerprint = RequestFingerprint(method: call.req.method, target: call.req.target, body: call.req.body)
        let jobID = FlowRun.newJobID()
        let begun: IdempotencyBegin
        do {
            begun = try idempotency.begin(scope, key: key, fingerprint: fingerprint, jobID: jobID, loopIndex: call.state.loop.index)
        } catch {
            return refuse(call, Problem(status: 400, detail: "Idempotency-Key: \(error.description)"))
        }
        switch begun {
        case .new(let token):
            startRun(call, jobID: token.jobID, token: token)  // a resumed key keeps its job id
        case .finished(_, let stored):
            var r = HTTPResponse(status: stored.status, headers: stored.headers, body: stored.body)
            r.headers.append(("Idempotent-Replayed", "true"))
            finishRequest(call.state, call.w, call.req, r, route: call.route.name, outcome: "sync", requestID: call.requestID, start: call.start)
        case .mismatch:
            refuse(call, Problem(status: 422, detail: "this Idempotency-Key was used for a different request"))
        case .inProgress(let existing, let loopIndex):
            attach(call, scope: scope, key: key, jobID: existing, loopIndex: loopIndex, retried: retried)
        }
    }

    /// A duplicate of a running request: wait out this caller's own budget for
    /// the original run; then answer its response, or `202` with its job id once the
    /// job is durable (the original run, still inside its own caller's budget, is made
    /// a job for it: see `WaitingRun.whenJob`), or `503` when it cannot be.
    private func attach(_ call: RouteCall, scope: IdempotencyScope, key: String, jobID: String, loopIndex: Int, retried: Bool) {
        let state = call.state
        var answered = false
        var timer: LoopTimer?
        let answer: (HTTPResponse, String) -> Void = { [unowned self] r, outcome in
            guard !answered else { return }
            answered = true
            state.loop.cancel(timer)
            timer = nil  // the timer holds this closure: break the cycle
            self.finishRequest(state, call.w, call.req, r, route: call.route.name, outcome: outcome, requestID: call.requestID,
                               start: call.start, jobID: outcome == "async" ? jobID : nil)
        }
        let replay: (StoredResponse) -> Void = { stored in
            var r = HTTPResponse(status: stored.status, headers: stored.headers, body: stored.body)
            r.headers.append(("Idempotent-Replayed", "true"))
            answer(r, "sync")
        }
        let replayOnLoop = LoopBound(replay)
        let outcome = idempotency.attach(scope, key: key, jobID: jobID) { stored in
            state.loop.execute {
                if let stored { replayOnLoop.value(stored) }
            }
        }
        switch outcome {
        case .finished(let stored):
            replay(stored)
        case .notFound:
            if retried { return refuse(call, Problem(status: 409, detail: "the request with this Idempotency-Key changed state; retry")) }
            applyIdempotency(call, retried: true)
        case .attached:
            // This caller's own preference decides its budget: its 202 says so (SPEC §3).
            let (budget, applied, _) = waitBudget(call)
            let owner = states[min(max(loopIndex, 0), states.count - 1)]
            let answerOnLoop = LoopBound(answer)
            timer = state.loop.schedule(at: call.start + budget) { [unowned self] in
                timer = nil
                let accepted = LoopBound(self.acceptedResponse(jobID: jobID, applied: applied))
                owner.loop.execute {
                    guard let promote = owner.promotions[jobID] else {
                        // Not waiting there any more: a registered job (went async or
                        // resumed after a restart), or finished — its stored response
                        // answers this caller (whichever comes first wins).
                        state.loop.execute { answerOnLoop.value(accepted.value, "async") }
                        return
                    }
                    promote.whenJob { ok in
                        state.loop.execute {
                            if ok { return answerOnLoop.value(accepted.value, "async") }
                            let p = Problem(status: 503, detail: "the job could not be made durable; it may still run")
                            answerOnLoop.value(p.httpResponse, "error")
                        }
                    }
                }
            }
        }
    }

    /// The wait budget (SPEC §3): the route's `wait`, or `Prefer: wait=N` (RFC 7240)
    /// capped at `max_wait`; `respond-async` means zero. Also what to put in `Preference-Applied`.
    private func waitBudget(_ call: RouteCall) -> (budget: Duration, applied: [String], respondAsync: Bool) {
        // Several `Prefer` fields combine into one list (RFC 9110 §5.3).
        let prefer = Preference(call.req.headers["prefer"] == nil ? nil : call.req.headers.values("prefer").joined(separator: ","))
        if prefer.respondAsync { return (.zero, ["respond-async"], true) }
        if let secs = prefer.waitSeconds {
            let capped = min(secs, Int(call.route.maxWait.milliseconds / 1000))
            return (min(.seconds(secs), call.route.maxWait), ["wait=\(capped)"], false)
        }
        return (call.route.wait, [], false)
    }

    /// The `202 Accepted` for a job (SPEC §3).
    private func acceptedResponse(jobID: String, applied: [String]) -> HTTPResponse {
        let location = "/jobs/" + jobID
        // {"job_id":…,"status":"running","status_url":…}, written directly.
        var body: [UInt8] = []
        body.reserveCapacity(2 * jobID.utf8.count + 64)
        body.append(contentsOf: #"{"job_id":"#.utf8)
        JSON.appendQuoted(jobID, to: &body)
        body.append(contentsOf: #","status":"running","status_url":"#.utf8)
        JSON.appendQuoted(location, to: &body)
        body.append(0x7D)
        var headers: [(String, String)] = [("Content-Type", "application/json"), ("Location", location), ("Retry-After", "1")]
        if !applied.isEmpty { headers.append(("Preference-Applied", applied.joined(separator: ", "))) }
        return HTTPResponse(status: 202, headers: headers, body: body)
    }

    /// Step 3: start the run and hold the caller for the wait budget.
    private func startRun(_ call: RouteCall, jobID: String?, token: IdempotencyToken?) {
        let state = call.state
        let route = call.route
        let (budget, applied, respondAsync) = waitBudget(call)
        let input = FlowInput(method: call.req.method, path: call.req.path, pathParams: call.params, query: call.req.query,
                              headerSource: RequestHeaders(headers: call.req.headers), body: call.body)
        let run = FlowRun(route: route, input: consume input, client: state.client, jobID: jobID,
                          redactor: state.redactor, upstreamBodyBytes: config.upstreamBodyBytes)
        let trace = TraceContext(traceparent: call.req.headers["traceparent"], tracestate: call.req.headers["tracestate"], random: &state.spanIDs)
        run.headersForAttempt = { trace.appendHeaders(to: &$0, random: &state.spanIDs) }
        if let token {
            run.onFinish { [idempotency] run in
                let r = run.response!
                idempotency.complete(token, with: StoredResponse(status: r.status, headers: r.headers, body: r.body))
            }
        }
        state.waitToken &+= 1
        let w = WaitingRun(gateway: self, call: call, run: run, trace: trace, idempotencyToken: token,
                           applied: applied, respondAsync: respondAsync, token: state.waitToken)
        // By its key in `state.waiting`, which holds the waiter while the caller waits
        // (from before the run starts: it may finish at once); once answered it is not
        // needed. Not the waiter itself: the run must not keep it, as it holds the run (a
        // run still going when the loops stop would keep both, and the gateway's loops
        // with them) — and not weakly: a weak reference gives the waiter a side table
        // (an allocation, and slower reference counting for its whole life).
        let waitToken = w.token
        state.waiting[waitToken] = w
        run.onFinish { run in
            Gateway.recordSteps(run, into: &state.metrics)
            (state.waiting[waitToken] as? WaitingRun)?.runFinished(run)
        }
        if let token {
            let jobID = token.jobID
            state.promotions[jobID] = w
            run.onFinish { _ in state.promotions[jobID] = nil }
        }
        run.start()
        guard !w.answered else { return }
        if budget <= .zero {
            w.goAsync()
        } else {
            // Usually a FIFO append (no timer of its own); plain timers when out of order.
            if !state.addBudgetDeadline(call.start + budget, token: w.token, budget: budget) {
                w.budgetTimer = state.loop.schedule(at: call.start + budget, w.goAsync)
                let ahead = call.start + (budget - state.writeAheadLead())
                if ahead <= state.loop.now {
                    w.writeJobRecord()
                } else {
                    let token = w.token
                    let t = state.loop.schedule(at: ahead) { state.waiting[token]?.writeAhead() }
                    run.onFinish { _ in state.loop.cancel(t) }
                }
            }
        }
    }

    /// A synchronous caller waiting on its run, on the run's loop: answered with the
    /// run's response when it finishes within the wait budget, else with `202` once
    /// the run has become a durable job. The job record is written ahead — shortly
    /// before the budget ends, or when the run goes async, whichever comes first —
    /// and the `202` is sent once it is durable. One object per request instead of a
    /// closure and a box per piece of state. Loop thread only.
    private final class WaitingRun: JobPromotion, BudgetWaiter {
        unowned let gateway: Gateway
        let call: RouteCall
        let run: FlowRun
        let trace: TraceContext
        let idempotencyToken: IdempotencyToken?
        let applied: [String]
        let respondAsync: Bool
        /// The key of this run in `LoopState.waiting`.
        let token: UInt64
        /// Whether the caller has been answered (or the answer is decided).
        var answered = false
        /// The budget timer when the run is not in a `BudgetQueue`.
        var budgetTimer: LoopTimer?
        /// The job record and its write; nil until it is first written (a run answered
        /// within its budget before the write-ahead never makes one).
        var record: JobRecordWrite?
        /// Whether the run is a registered job (`/jobs`): it went async, or an attached
        /// duplicate's budget ended first (`whenJob`) while this caller still waits.
        var registered = false
        /// Whether this caller got its `202`: only then does the job send its callback
        /// (not when the caller got the run's own answer in time — a job registered
        /// for an attached duplicate — nor when it got a `503`). Made with the job
        /// (`registerJob`): a run answered in time never needs one.
        var acceptance: AcceptanceGate?

        init(gateway: Gateway, call: RouteCall, run: FlowRun, trace: TraceContext,
             idempotencyToken: IdempotencyToken?, applied: [String], respondAsync: Bool, token: UInt64) {
            self.gateway = gateway
            self.call = call
            self.run = run
            self.trace = trace
            self.idempotencyToken = idempotencyToken
            self.applied = applied
            self.respondAsync = respondAsync
            self.token = token
        }

        /// `BudgetWaiter`: the budget ended (or a drain), the run becomes a job.
        func handOff() { goAsync() }

        /// `BudgetWaiter`: the budget ends within the write-ahead lead.
        func writeAhead() { writeJobRecord() }

        /// Journals the job record (and the steps already settled) unless the caller
        /// was answered, or it is written or being written: a write that failed is
        /// tried again (the disk may have room again).
        func writeJobRecord() {
            guard !answered else { return }
            if record == nil {
                record = JobRecordWrite(run: run, input: run.input, routeName: call.route.name, caller: call.caller,
                                        traceID: trace.traceID, callback: call.callback,
                                        idempotency: idempotencyToken.map { ($0.scope, $0.key) }, journal: call.state.journal!)
            }
            record!.write()
        }

        /// Registers the run as a job (`/jobs`, its result and callback journaled), once.
        private func registerJob() {
            guard !registered else { return }
            registered = true
            let acceptance = AcceptanceGate()
            self.acceptance = acceptance
            let entry = JobEntry(id: run.jobID, owner: call.caller, routeName: call.route.name, loop: call.state.loop,
                                 createdAt: record?.createdAt ?? wallClockMilliseconds(), run: run, traceID: trace.traceID)
            gateway.track(entry, callback: call.callback, state: call.state, acceptance: acceptance)
        }

        /// For a duplicate attached to this run (same `Idempotency-Key`) whose budget
        /// ended: makes the run a durable job if it is not one yet — its record written
        /// and the job registered, while this caller keeps waiting for its own budget —
        /// and calls `done` once the record is durable (true) or failed (false), so the
        /// duplicate's `202` never names a job that is not on disk (a write that failed
        /// is tried again). Not called when the run already finished inside this
        /// caller's budget without becoming a job: the duplicate gets the stored
        /// response instead. Once this caller is answered, `goAsync` puts a hook in
        /// `LoopState.promotions` that holds only the job record, not this caller.
        func whenJob(_ done: @escaping (Bool) -> Void) {
            if answered {
                // Went async (its record answers), or finished in time without a job.
                if registered { record?.whenWritten(done) }
                return
            }
            writeJobRecord()
            registerJob()
            record!.whenWritten(done)
        }

        /// The wait budget ended (or is zero, or the gateway drains): the run becomes a
        /// job and the caller gets `202` once its record is durable.
        func goAsync() {
            guard !answered else { return }
            writeJobRecord()  // again if a write ahead (or for a duplicate) failed
            answered = true
            let record = self.record!
            let state = call.state
            state.loop.cancel(budgetTimer)
            budgetTimer = nil  // the timer holds this object: break the cycle
            state.waiting.removeValue(forKey: token)
            registerJob()
            let jobID = run.jobID
            let answer: (Bool) -> Void = { [self] ok in
                acceptance?.decide(ok)
                // Refused: a later write of the record (for a duplicate) must not name
                // this caller's callback, or a restart would send it.
                if !ok { record.callback = nil }
                let r = ok ? gateway.acceptedResponse(jobID: jobID, applied: applied)
                    : Problem(status: 503, detail: "the job could not be made durable; it may still run").httpResponse
                gateway.finishRequest(state, call.w, call.req, r, route: call.route.name, outcome: ok ? "async" : "error",
                                      requestID: call.requestID, start: call.start, jobID: jobID, traceID: trace.traceID)
            }
            record.whenWritten(answer)
            // Duplicates attached from now on need the record, not this caller's request
            // and connection: the hook keeps only the record for the rest of the run.
            if idempotencyToken != nil { state.promotions[jobID] = record }
        }

        /// The run decided its response: answer the caller unless it went async.
        func runFinished(_ run: FlowRun) {
            let state = call.state
            guard !answered else { return }
            answered = true
            state.loop.cancel(budgetTimer)
            budgetTimer = nil  // the timer holds this object: break the cycle
            state.waiting.removeValue(forKey: token)
            let resp = run.response!
            var r = HTTPResponse(status: resp.status, headers: resp.headers, body: resp.body)
            if !applied.isEmpty && !respondAsync { r.headers.append(("Preference-Applied", applied.joined(separator: ", "))) }
            // A job for a duplicate that got its `202`: it stays, so that duplicate finds
            // it at `/jobs/{id}`. Its job record names this caller's callback: the answer
            // waits until the write of the job's result has completed (`track`), so a
            // restart does not resume the job and call back a caller that already has the
            // result — unless that write failed. Registered before the decision, which
            // may run `track`'s append of the result: that append then carries a completion.
            if record != nil, registered, let acceptance {
                acceptance.whenResultJournaled { [self] in reply(r) }
                acceptance.decide(false)
                return
            }
            acceptance?.decide(false)
            guard record != nil else { return reply(r) }
            // Finished inside its budget after its job record was written ahead: the
            // record is deleted, durably, before the answer, so a restart never runs
            // (or calls back for) a job whose caller already has the result.
            run.onStepSettled = nil
            state.journal.append([.delete(DurableState.jobKey(run.jobID))]) { [self] _ in reply(r) }
        }

        private func reply(_ r: HTTPResponse) {
            gateway.finishRequest(call.state, call.w, call.req, r, route: call.route.name, outcome: "sync",
                                  requestID: call.requestID, start: call.start, traceID: trace.traceID)
        }
    }

    /// Registers an async job and journals what happens to it from now on:
    /// each settled step, then the result, then the callback delivery.
    /// Call on `state.loop`.
    /// - Parameter acceptance: for a job started by a waiting caller, whether that
    ///   caller got its `202`; the callback is sent only then, and the job's result is
    ///   journaled once that is known. Nil (a job resumed after a restart): sent.
    private func track(_ entry: JobEntry, callback: DeliveryTarget?, state: LoopState, acceptance: AcceptanceGate? = nil) {
        let run = entry.run
        jobs.add(entry)
        jobsRunning.add(1, ordering: .relaxed)
        let journal = state.journal!
        // The run keeps this hook for its whole life (steps may settle after the
        // response is decided): it must not hold the entry, which holds the run.
        let jobID = entry.id, route = run.route
        run.onStepSettled = { i, outcome in
            journal.append([DurableState.stepFinished(job: jobID, index: i, step: route.steps[i].id, outcome: outcome)])
        }
        // The registry holds the entry until the job is retired (after it finished);
        // the run must not hold it too, or an unfinished run would keep it for good.
        run.onFinish { [unowned self, weak entry] run in
            guard let entry else { return }
            let finishedAtMs = wallClockMilliseconds()
            entry.finishedAtMs = finishedAtMs
            self.jobsRunning.subtract(1, ordering: .relaxed)
            let r = run.response!
            state.log.log("info", "job finished", [
                ("job_id", .string(entry.id)), ("route", .string(entry.routeName)),
                ("status", .string((200...299).contains(r.status) ? "succeeded" : "failed")),
                ("response_status", .int(Int64(r.status))), ("trace_id", .string(entry.traceID)),
            ])
            let result = DurableState.jobFinished(job: entry.id, response: r, finishedAt: finishedAtMs)
            let (jobID, owner, body) = (entry.id, entry.owner, callback == nil ? [] : entry.callbackBody())
            let journalResult: (Bool) -> Void = { [unowned self] accepted in
                guard let target = callback, accepted else {
                    // A waiting caller that got the run's own answer in time gets it once
                    // this write has completed (`WaitingRun.runFinished` registers for it
                    // before the decision that runs this), whether or not it succeeded:
                    // when it failed, a restart may still resume the job and send its
                    // callback. A completion only then: a batch with one hops back to
                    // this loop, one without does not.
                    if let acceptance, acceptance.hasResultWaiters {
                        journal.append([result]) { _ in acceptance.resultJournaled() }
                    } else {
                        journal.append([result])
                    }
                    return
                }
                // The callback's delivery record is journaled before the job's result, in
                // the same append (all or nothing): a crash between the two, or a write
                // that fails (a full disk has room for a small record after failing a
                // larger one), leaves a job that resumes from its journaled steps, its
                // delivery pending (enqueueing again finds it) — never a finished job with
                // no delivery, whose callback would be lost. The delivery record is written
                // directly: post the job's step records first.
                journal.flush()
                self.durable.holdResult(result, ofJob: jobID)
                state.deliverer.enqueue(jobID: jobID, owner: owner, target: target, body: body)
                // Not taken when the job already had a delivery (resumed after a restart).
                let left = self.durable.takeResult(ofJob: jobID)
                if !left.isEmpty { journal.append(left) }
            }
            if let acceptance { acceptance.whenDecided(journalResult) } else { journalResult(true) }
        }
    }

    /// Rebuilds state from the journal (SPEC §6): endpoints, idempotency records
    /// and deliveries as they were; every accepted job that had not finished runs
    /// on, its finished steps restored (never called again) and steps that were in
    /// flight re-sent with the same `{{step.idempotency_key}}` (the key derives
    /// from the job id). Called once from `start()`, before the listener opens.
    private func recover() throws {
        let state = try durable.recover()
        endpoints.restore(state.endpoints)
        idempotency.restore(state.idempotency, jobIDs: Set(state.jobs.map(\.id)))
        deliveries.restore(state.deliveries)
        let resumed = Atomic<Int>(0)
        for (n, job) in state.jobs.enumerated() {
            let ls = states[n % states.count]
            let done = Atomic<Bool>(false)
            let bound = LoopBound(job)
            ls.loop.execute { [unowned self] in
                if self.resume(bound.value, on: ls) { resumed.add(1, ordering: .relaxed) }
                done.store(true, ordering: .releasing)
            }
            while !done.load(ordering: .acquiring) { usleep(100) }
        }
        if !state.strayJobs.isEmpty {
            durable.write(state.strayJobs.sorted().map { .delete(DurableState.jobKey($0)) }, durable: false)
        }
        for (n, d) in state.deliveries.enumerated() where d.status == .pending {
            let ls = states[n % states.count]
            ls.loop.execute { ls.deliverer.resume(jobID: d.jobID) }
        }
        if !state.jobs.isEmpty || !state.deliveries.isEmpty || state.undecodable > 0 || !state.strayJobs.isEmpty {
            controlLog.log("info", "recovered from the journal", [
                ("jobs", .int(Int64(state.jobs.count))), ("jobs_resumed", .int(Int64(resumed.load(ordering: .relaxed)))),
                ("deliveries", .int(Int64(state.deliveries.count))), ("endpoints", .int(Int64(state.endpoints.count))),
                ("idempotency_records", .int(Int64(state.idempotency.count))), ("undecodable_records", .int(Int64(state.undecodable))),
                ("stray_jobs_dropped", .int(Int64(state.strayJobs.count))),
            ])
        }
    }

    /// Recreates one journaled job on `ls`'s loop. Returns whether it had to run on.
    private func resume(_ job: DurableState.RecoveredJob, on ls: LoopState) -> Bool {
        let route = ls.routes.route(named: job.route)
        let run: FlowRun
        if let route {
            run = FlowRun(route: route, input: job.input, client: ls.client, jobID: job.id,
                          redactor: redactor.withLock { $0 }, upstreamBodyBytes: config.upstreamBodyBytes)
            // By step id: the route file may have changed since (a step added, moved or
            // removed); an outcome goes to the step it belongs to, or nowhere. Records
            // without an id (journaled before ids were) go by position.
            for (i, id, o) in job.steps where o.isTerminal {
                let index = id.map { id in route.steps.firstIndex { $0.id == id } } ?? (i < route.steps.count ? i : nil)
                if let index { run.restore(step: index, outcome: o) }
            }
        } else if job.response != nil {
            // Finished, but its route is gone: it cannot be shown (its steps are the
            // route's). Past its retention it is deleted all the same, so removing a
            // route never keeps its jobs in the journal for good.
            if let f = job.finishedAt, wallClockMilliseconds() - f > config.jobRetention.milliseconds {
                durable.loopJournals[ls.loop.index].append([.delete(DurableState.jobKey(job.id))])
            }
            return false
        } else {
            // The route is gone: the job cannot run. Its record stays in the
            // journal; it resumes when a reload (or a restart) brings the route back.
            ls.log.log("error", "journaled job names a route that is not configured; it resumes once the route is loaded again",
                       [("job_id", .string(job.id)), ("route", .string(job.route))])
            parked.withLock { $0[job.id] = ParkedJob(job: job) }
            return false
        }
        let traceID = job.traceID.isEmpty ? ls.spanIDs.traceIDHex() : job.traceID
        let trace = TraceContext(traceparent: "00-\(traceID)-\(ls.spanIDs.hex(8))-01", tracestate: nil, random: &ls.spanIDs)
        run.headersForAttempt = { trace.appendHeaders(to: &$0, random: &ls.spanIDs) }
        let entry = JobEntry(id: job.id, owner: job.owner, routeName: job.route, loop: ls.loop, createdAt: job.createdAt, run: run, traceID: traceID)
        if let response = job.response {
            jobs.add(entry)
            run.restoreFinished(response: response)
            // Retention counts from when it finished, across restarts (records from
            // before `finished_at` was journaled count from now).
            entry.finishedAtMs = job.finishedAt ?? wallClockMilliseconds()
            return false
        }
        track(entry, callback: job.callback, state: ls)
        if let (scope, key) = job.idempotency {
            let token = IdempotencyToken(scope: scope, key: key, jobID: job.id)
            run.onFinish { [idempotency] run in
                let r = run.response!
                idempotency.complete(token, with: StoredResponse(status: r.status, headers: r.headers, body: r.body))
            }
        }
        run.start()
        return true
    }

    private func refuse(_ call: RouteCall, _ p: Problem) {
        finishRequest(call.state, call.w, call.req, p.httpResponse, route: call.route.name, outcome: "error",
                      requestID: call.requestID, start: call.start)
    }

    // MARK: - Jobs API

    /// The `/jobs` API: `GET|HEAD /jobs/{id}` and `POST /jobs/{id}/redeliver`; `405`
    /// for another method there, `404` for any other path under `/jobs` (`/jobs`,
    /// `/jobs/`, `/jobs/{id}/`, an empty segment).
    static func jobsTarget(_ head: HTTPRequest) -> RequestTarget {
        let s = pathSegments(head.path)
        guard !s.contains(where: \.isEmpty) else { return .refused(noSuchResource) }
        let read = head.method == "GET" || head.method == "HEAD"
        switch s.count {
        case 2 where read: return .job(id: String(s[1]))
        case 2: return .refused(notAllowed(head, allow: "GET, HEAD"))
        case 3 where s[2] == "redeliver" && head.method == "POST": return .redeliver(jobID: String(s[1]))
        case 3 where s[2] == "redeliver": return .refused(notAllowed(head, allow: "POST"))
        default: return .refused(noSuchResource)
        }
    }

    /// `GET|HEAD /jobs/{id}[?wait=N]`: the caller's job, long-polled up to N seconds (at most 60).
    private func handleJob(_ id: String, _ req: HTTPRequest, _ w: HTTPResponseWriter, caller: String, state: LoopState,
                           requestID: String, start: Instant) {
        guard let entry = jobs.find(id, owner: caller) else {
            var p = Problem(status: 404, detail: "no job \(id)")
            if let waiting = parked.withLock({ $0[id] }), waiting.job.owner == caller {
                if let loop = waiting.resumingOn {
                    // A reload is resuming it on `loop`: ask again behind that.
                    return loop.execute { [unowned self] in
                        state.loop.execute {
                            self.handleJob(id, req, w, caller: caller, state: state, requestID: requestID, start: start)
                        }
                    }
                }
                p = Problem(status: 503, detail: "job \(id) was accepted, but its route \(waiting.job.route) is not configured: "
                            + "it resumes once the route is loaded again")
            }
            finishRequest(state, w, req, p.httpResponse, route: nil, outcome: "error", requestID: requestID, start: start)
            return
        }
        var waitSeconds = 0
        if let q = req.query {
            for (k, v) in FlowRun.parseQuery(q) where k == "wait" {
                guard let n = Int(v), n >= 0 else {
                    let p = Problem(status: 400, detail: "wait must be a whole number of seconds")
                    finishRequest(state, w, req, p.httpResponse, route: nil, outcome: "error", requestID: requestID, start: start)
                    return
                }
                waitSeconds = min(n, 60)
            }
        }
        // A long-poll is registered with this loop's waiting callers, so a drain
        // answers it at once (with the job as it stands) instead of closing it; one
        // that comes during a drain is answered at once.
        state.waitToken &+= 1
        let token = state.waitToken
        let reply: @Sendable (JSON) -> Void = { [unowned self] status in
            state.loop.execute {
                state.waiting.removeValue(forKey: token)
                state.longPolls.remove(token)
                let r = HTTPResponse(status: 200, headers: [("Content-Type", "application/json")], body: status.serialized)
                self.finishRequest(state, w, req, r, route: nil, outcome: "sync", requestID: requestID, start: start)
            }
        }
        // Read the run on its own loop, then answer on ours.
        let waitFor = draining.load(ordering: .relaxed) ? 0 : waitSeconds
        let poll = LongPoll()
        if waitFor > 0 {
            state.waiting[token] = ClosureWaiter { entry.loop.execute { poll.answer(entry, reply) } }
            state.longPolls.insert(token)
        }
        entry.loop.execute {
            if entry.run.isFinished || waitFor == 0 {
                poll.answer(entry, reply)
                return
            }
            poll.timer = entry.loop.schedule(at: entry.loop.now + .seconds(waitFor)) { poll.answer(entry, reply) }
            entry.run.onFinish { [weak entry] _ in if let entry { poll.answer(entry, reply) } }
        }
    }

    /// Drops finished jobs older than the retention — from memory and from the
    /// journal — and expired idempotency records and old deliveries, on loop 0:
    /// every minute, or every half retention when that is shorter (at least 100 ms).
    /// The sweep holds the stores it sweeps, not the gateway: a weak reference would give
    /// the gateway a side table, slowing every retain and release of it (per request);
    /// the loop drops the sweep's timer when it stops.
    private func scheduleJobSweep() {
        let loop = group.loops[0]
        let sweep = JobSweep(retention: config.jobRetention, idempotency: idempotency, deliveries: deliveries,
                             jobs: jobs, durable: durable)
        loop.execute { sweep.run(on: loop) }
    }

    /// What the periodic sweep reads (see `scheduleJobSweep`). Loop 0 only.
    private struct JobSweep {
        let retention: Duration
        let idempotency: IdempotencyStore
        let deliveries: DeliveryStore
        let jobs: JobRegistry
        let durable: DurableState

        func run(on loop: EventLoop) {
            idempotency.sweep()
            let now = wallClockMilliseconds()
            deliveries.sweep(deliveredBefore: now - retention.milliseconds, failedBefore: now - 7 * 86_400_000)
            for e in jobs.all {
                e.loop.execute { [jobs, durable, retention] in
                    guard let f = e.finishedAtMs, wallClockMilliseconds() - f > retention.milliseconds else { return }
                    jobs.remove(e.id)
                    // Every registered job was journaled; its records go at the next compaction.
                    durable.loopJournals[e.loop.index].append([.delete(DurableState.jobKey(e.id))])
                }
            }
            let every = min(Duration.seconds(60), max(retention / 2, .milliseconds(100)))
            loop.schedule(at: loop.now + every) { self.run(on: loop) }
        }
    }

    /// One log line per callback attempt outcome (never the URL or the secret).
    static func logDelivery(_ event: DeliveryEvent, to log: LogBuffer) {
        let (msg, level, rec, extra): (String, String, DeliveryRecord, [(String, JSON)])
        switch event {
        case .delivered(let r): (msg, level, rec, extra) = ("callback delivered", "info", r, [])
        case .attemptFailed(let r, let retryIn):
            (msg, level, rec, extra) = ("callback attempt failed", "warn", r, [("retry_in_ms", .int(retryIn.milliseconds))])
        case .deadLettered(let r): (msg, level, rec, extra) = ("callback dead-lettered", "error", r, [])
        case .endpointDisabled(let id, let r):
            (msg, level, rec, extra) = ("callback endpoint disabled (410 Gone)", "warn", r, [("endpoint", .string(id))])
        }
        var fields: [(String, JSON)] = [("job_id", .string(rec.jobID)), ("webhook_id", .string(rec.webhookID)),
                                        ("attempts", .int(Int64(rec.attempts)))]
        if let s = rec.lastStatus { fields.append(("last_status", .int(Int64(s)))) }
        if let e = rec.lastError { fields.append(("last_error", .string(e))) }
        log.log(level, msg, fields + extra)
    }

    // MARK: - Metrics

    /// Adds a finished run's step durations and upstream errors to this loop's counters.
    static func recordSteps(_ run: FlowRun, into m: inout MetricsSnapshot) {
        for (i, step) in run.route.steps.enumerated() {
            // In place: a copy of the outcome would retain everything it holds.
            let (seconds, failure) = run.withOutcome(i) { o -> (Double?, StepErrorKind?) in
                (StepOutcome.seconds(from: o.pointee.startedAt, to: o.pointee.finishedAt),
                 o.pointee.state == .failed ? o.pointee.errorKind : nil)
            }
            if let seconds { m.step(route: run.route.name, step: step.id, seconds: seconds) }
            if let k = failure, k != .template {
                m.upstreamError(route: run.route.name, step: step.id, kind: k.rawValue)
            }
        }
    }

    /// Copies every loop's counters on its own loop, merges them, then calls
    /// `completion` (on the last loop to report) with the exposition text.
    func scrapeMetrics(_ completion: @escaping @Sendable (String) -> Void) {
        let n = states.count
        let acc = Locked<(MetricsSnapshot, Int)>((MetricsSnapshot(), 0))
        for s in states {
            s.loop.execute { [unowned self] in
                let snap = s.metrics
                let all: MetricsSnapshot? = acc.withLock { a in
                    a.0.merge(snap)
                    a.1 += 1
                    return a.1 == n ? a.0 : nil
                }
                guard let merged = all else { return }
                var g = Gauges()
                g.connectionsOpen = (self.server?.openConnections ?? 0) + (self.adminServer?.openConnections ?? 0)
                g.jobsRunning = self.jobsRunning.load(ordering: .relaxed)
                g.callbacksPending = self.deliveries.pendingCount
                g.callbacksDeadLettered = UInt64(self.deliveries.deadLetteredTotal)
                g.journalBytes = self.durable.journal.stats.totalBytes
                completion(PrometheusText.render(merged, g))
            }
        }
    }

    private func serveMetrics(_ req: HTTPRequest, _ w: HTTPResponseWriter, state: LoopState, requestID: String, start: Instant) {
        scrapeMetrics { text in
            state.loop.execute {
                let r = HTTPResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")], body: Array(text.utf8))
                w.respond(r)
            }
        }
    }

    /// The admin listener: `GET|HEAD` of `/metrics`, `/healthz`, `/readyz` only, no API key.
    /// As on the main listener, those three are neither logged nor counted, and a
    /// `404`/`405` is logged and counted with outcome `error`.
    private func handleAdmin(_ req: HTTPRequest, _ w: HTTPResponseWriter) {
        let state = states[w.loop.index]
        switch Gateway.adminTarget(req) {
        case .metrics: serveMetrics(req, w, state: state, requestID: "", start: w.loop.now)
        case .health: w.respond(healthResponse)
        case .readiness: w.respond(readinessResponse)
        case .refused(let r, _): answerRefused(req, r, w)
        default: break  // adminTarget answers nothing else
        }
    }

    /// What a request head asks of the admin listener: an operations endpoint, or a
    /// `404`/`405` refusal.
    private static func adminTarget(_ head: HTTPRequest) -> RequestTarget {
        operationsTarget(head, metrics: true)
            ?? .refused(Problem(status: 404, detail: "the admin listener serves /metrics, /healthz and /readyz").httpResponse)
    }

    /// The admin listener's `Expect: 100-continue` check: a head it refuses whatever
    /// the body (every one but `GET`/`HEAD` of its three paths) gets the refusal
    /// instead of `100 Continue` (RFC 9110 §10.1.1), logged and counted like any
    /// refusal. Loop thread.
    private func refuseAdminBeforeBody(_ head: HTTPRequest, _ w: HTTPResponseWriter) -> Bool {
        guard case .refused(let r, _) = Gateway.adminTarget(head) else { return false }
        answerRefused(head, r, w)
        return true
    }

    /// `/healthz`: the process is alive.
    private var healthResponse: HTTPResponse { json(200, ["status": "ok"]) }

    /// `/readyz`: `200` while ready; `503` while draining, or once the journal has
    /// stopped accepting writes (`{"status": "journal_failed", "detail": …}`). The
    /// detail is generic (the endpoint needs no credentials): why the journal stopped,
    /// with its paths, is in the log line written when it did.
    private var readinessResponse: HTTPResponse {
        if draining.load(ordering: .relaxed) { return json(503, ["status": "draining"]) }
        if durable.journal.stats.poisoned != nil {
            return json(503, ["status": "journal_failed", "detail": "the journal stopped accepting writes; see the log"])
        }
        return json(200, ["status": "ready"])
    }

    // MARK: - Helpers

    private enum AuthResult {
        /// The caller's name (the key's), empty when no API keys are configured.
        case success(String)
        /// The `401` to answer.
        case failure(HTTPResponse)
    }

    /// `Authorization: Bearer <key>` checked against the configured SHA-256 hashes in
    /// constant time. A refusal is a `401` problem with `WWW-Authenticate: Bearer`
    /// (RFC 9110 §11.6.1, RFC 6750 §3).
    private func authenticate(_ req: HTTPRequest) -> AuthResult {
        if config.apiKeys.isEmpty { return .success("") }
        func refuse(_ detail: String, _ challenge: String) -> AuthResult {
            var r = Problem(status: 401, detail: detail).httpResponse
            r.headers.append(("WWW-Authenticate", challenge))
            return .failure(r)
        }
        // Authorization is a singleton field (RFC 9110 §11.6.2): with two, which one names
        // the caller would depend on their order (a proxy appending its own after the
        // client's). Refused as RFC 6750 §3.1's invalid_request, whatever they hold.
        if req.headers.count(named: "authorization") > 1 {
            var r = Problem(status: 400, detail: "send exactly one Authorization header").httpResponse
            r.headers.append(("WWW-Authenticate", "Bearer error=\"invalid_request\""))
            return .failure(r)
        }
        guard let h = req.headers["authorization"], h.count > 7, h.prefix(7).lowercased() == "bearer " else {
            return refuse("send Authorization: Bearer <api key>", "Bearer")
        }
        let digest = Crypto.sha256(Array(h.dropFirst(7).utf8))
        var found: String? = nil
        for k in config.apiKeys where Crypto.constantTimeEquals(k.sha256, digest) { found = k.name }
        guard let name = found else { return refuse("unknown API key", "Bearer error=\"invalid_token\"") }
        return .success(name)
    }

    func json(_ status: Int, _ fields: [String: String]) -> HTTPResponse {
        var o = JSONObject()
        for (k, v) in fields.sorted(by: { $0.key < $1.key }) { o[k] = .string(v) }
        return HTTPResponse(status: status, headers: [("Content-Type", "application/json")], body: JSON.object(o).serialized)
    }

    func finishRequest(_ state: LoopState, _ w: HTTPResponseWriter, _ req: HTTPRequest, _ r: HTTPResponse,
                               route: String?, outcome: String, requestID: String, start: Instant, jobID: String? = nil,
                               traceID: String? = nil) {
        w.respond(r)
        record(state, method: req.method, path: req.path, status: r.status, bytes: r.body.count, route: route,
               outcome: outcome, requestID: requestID, start: start, jobID: jobID, traceID: traceID)
    }

    /// Counts an answered request and writes its log line (SPEC §8) unless the config
    /// turned the access log off (`GatewayConfig.accessLog`). Fields: request_id,
    /// route (when matched), method and path (when known), status, duration_ms,
    /// outcome, bytes, detail, job_id and trace_id when set. Loop thread.
    private func record(_ state: LoopState, method: String?, path: String?, status: Int, bytes: Int, route: String?,
                        outcome: String, requestID: String, start: Instant, detail: String? = nil,
                        jobID: String? = nil, traceID: String? = nil) {
        let seconds = Instant.now().seconds(since: start)
        let ms = seconds * 1000
        state.metrics.request(route: route ?? "", outcome: outcome, status: status, seconds: seconds)
        guard config.accessLog else { return }
        state.log.logRequest(requestID: requestID, route: route, method: method, path: path, status: status,
                             durationMs: (ms * 1000).rounded() / 1000, outcome: outcome, bytes: bytes,
                             detail: detail, jobID: jobID, traceID: traceID)
    }

    /// A request the HTTP layer answered itself (unparseable, over a limit, too slow:
    /// `400`, `408`, `413`, `414`, `431`, `501`, `505`) is logged and counted like any
    /// refusal, with outcome `error` (SPEC §8), its reason as the line's `detail`.
    /// So is a connection closed at accept time, before any request was read (no
    /// method or path): over `max_connections` or not set up, status `503` — also on
    /// a TLS listener, which sends no `503`; its `detail` then ends in "(closed
    /// without a response)" and `bytes` is 0. On the refusing connection's loop.
    /// Both listeners report here; the line and the counter do not say which one.
    private func recordRefusal(_ r: HTTPRefusal) {
        let state = states[r.loop.index]
        record(state, method: r.method, path: r.path, status: r.error.status, bytes: r.bytes, route: nil,
               outcome: "error", requestID: state.nextRequestID(), start: r.start, detail: r.detail)
    }
}

extension Problem {
    /// The problem as an HTTP response.
    var httpResponse: HTTPResponse {
        let r = response
        return HTTPResponse(status: r.status, headers: r.headers, body: r.body)
    }
}

/// The `Prefer` request header (RFC 7240): `respond-async` and `wait=N` (seconds).
struct Preference {
    var respondAsync = false
    var waitSeconds: Int?

    /// Parses a (combined) `Prefer` value. The first occurrence of a preference
    /// wins (RFC 7240 §2); `wait` accepts optional whitespace around `=` and a
    /// quoted value; a number too large to represent is capped, not ignored;
    /// anything malformed is ignored.
    init(_ header: String?) {
        guard let header else { return }
        var sawWait = false
        for part in header.split(separator: ",") {
            let token = part.split(separator: ";").first.map { $0.trimmingCharacters(in: " \t") } ?? ""
            let lower = token.lowercased()
            if lower == "respond-async" { respondAsync = true; continue }
            let kv = lower.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard kv.count == 2, kv[0].trimmingCharacters(in: " \t") == "wait", !sawWait else { continue }
            sawWait = true
            let v = kv[1].trimmingCharacters(in: " \t\"")
            guard !v.isEmpty, v.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            waitSeconds = Int(v) ?? Int(Int32.max)
        }
    }
}

extension StringProtocol {
    func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

/// The caller's header fields as a run's input: pairs are built only when a
/// template or the journal reads them.
struct RequestHeaders: FlowHeaderSource {
    let headers: HTTPHeaders
    var headerPairs: [(String, String)] { headers.pairs }
}

/// A caller waiting on this loop (`LoopState.waiting`): a synchronous run under its
/// wait budget, or a job long-poll. Loop thread only.
protocol BudgetWaiter: AnyObject {
    /// Ends the wait now: the run goes async and its caller gets its `202` (a
    /// long-poll is answered with the job as it stands). Called once, at the budget's
    /// end or by a drain, after which the waiter is no longer in `waiting`.
    func handOff()
    /// Prepares for `handOff` shortly before the budget ends (the run's job record is
    /// journaled ahead); may be called more than once, or not at all.
    func writeAhead()
}

/// A `BudgetWaiter` whose hand-off is a closure and which prepares nothing (a job
/// long-poll, answered at once by a drain).
final class ClosureWaiter: BudgetWaiter {
    private let action: () -> Void
    init(_ action: @escaping () -> Void) { self.action = action }
    func handOff() { action() }
    func writeAhead() {}
}

/// The wait-budget deadlines of one budget length on one loop, in arrival order.
/// Runs start in time order (a request's arrival, `HTTPRequest.receivedAt`), so their
/// deadlines (start + budget) are nearly sorted — a pipelined request read before an
/// earlier-dispatched one, or one dated by the kernel after a long iteration, can come
/// out of order and gets a timer of its own (`addBudgetDeadline`): a FIFO replaces a
/// timer per run. One loop timer fires at the first
/// deadline of a run still waiting; runs that answered in time are skipped (their
/// token is gone from `LoopState.waiting`), so a burst of fast runs costs two
/// appends each and no timer.
///
/// The same timer also fires `writeAheadLead` before each deadline of a run still
/// waiting, to call its `BudgetWaiter.writeAhead`: the job record is
/// then durable by the time the budget ends, and the `202` goes out at once.
final class BudgetQueue {
    let budget: Duration
    var deadlines: [Instant] = []
    var tokens: [UInt64] = []
    var head = 0
    /// Entries before this index had their write-ahead hook called (or were answered).
    var ahead = 0
    var timer: LoopTimer?

    init(budget: Duration) { self.budget = budget }
}

extension LoopState {
    /// Queues the budget deadline of the waiting run `token` (in `waiting`): its
    /// hand-off is called at `deadline`. False when the deadline would be out of
    /// order (the caller then schedules a timer of its own).
    func addBudgetDeadline(_ deadline: Instant, token: UInt64, budget: Duration) -> Bool {
        var queue: BudgetQueue?
        for q in budgetQueues where q.budget == budget { queue = q; break }
        if queue == nil {
            guard budgetQueues.count < 16 else { return false }
            queue = BudgetQueue(budget: budget)
            budgetQueues.append(queue!)
        }
        let q = queue!
        if q.head < q.deadlines.count, let last = q.deadlines.last, deadline < last { return false }
        q.deadlines.append(deadline)
        q.tokens.append(token)
        if q.timer == nil { armBudgetTimer(q) }
        return true
    }

    /// Hands every run whose deadline passed to async mode, calls the write-ahead hook
    /// of every run whose deadline is within `writeAheadLead`, drops entries of runs
    /// that answered, and re-arms the timer.
    private func budgetTimerFired(_ q: BudgetQueue) {
        q.timer = nil
        let now = loop.now
        while q.head < q.deadlines.count {
            guard let waiter = waiting[q.tokens[q.head]] else { q.head += 1; continue }
            if q.deadlines[q.head] > now { break }
            q.head += 1
            waiter.handOff()
        }
        if q.ahead < q.head { q.ahead = q.head }
        let lead = writeAheadLead()
        while q.ahead < q.deadlines.count, q.deadlines[q.ahead] + (.zero - lead) <= now {
            waiting[q.tokens[q.ahead]]?.writeAhead()
            q.ahead += 1
        }
        if q.head == q.deadlines.count {
            q.deadlines.removeAll(keepingCapacity: q.deadlines.count <= 4096)
            q.tokens.removeAll(keepingCapacity: q.tokens.count <= 4096)
            q.head = 0
            q.ahead = 0
        } else if q.head >= 1024 && q.head * 2 >= q.deadlines.count {
            q.deadlines.removeFirst(q.head)
            q.tokens.removeFirst(q.head)
            q.ahead -= q.head
            q.head = 0
        }
        if q.head < q.deadlines.count && q.timer == nil { armBudgetTimer(q) }
    }

    /// Arms the queue's timer for its next event: the head's deadline, or the next
    /// write-ahead, whichever is first. Runs that answered meanwhile are skipped
    /// when it fires.
    private func armBudgetTimer(_ q: BudgetQueue) {
        var at = q.deadlines[q.head]
        if q.ahead < q.deadlines.count {
            let w = q.deadlines[max(q.ahead, q.head)] + (.zero - writeAheadLead())
            if w < at { at = w }
        }
        q.timer = loop.schedule(at: at) { [unowned self] in self.budgetTimerFired(q) }
    }
}

/// Carries a loop-confined value through a `@Sendable` hop (e.g. a background
/// DNS lookup) back to the same loop. Only read it on the loop it came from.
struct LoopBound<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Whether a job's own caller got its `202` (true) or not (false: the run's answer in
/// time, or a `503`), decided once; actions given before wait for it. A run may finish
/// before its record's write completes. Loop thread only.
final class AcceptanceGate {
    private var decided: Bool?
    private var waiting: [(Bool) -> Void] = []

    /// Decides (the first call only) and runs the waiting actions.
    func decide(_ accepted: Bool) {
        guard decided == nil else { return }
        decided = accepted
        let actions = waiting
        waiting = []
        for a in actions { a(accepted) }
    }

    /// Runs `action` with the decision, now or once it is made.
    func whenDecided(_ action: @escaping (Bool) -> Void) {
        if let decided { action(decided) } else { waiting.append(action) }
    }

    private var resultWritten = false
    private var afterResult: [() -> Void] = []

    /// Whether an action waits for the job's result to be appended
    /// (`whenResultJournaled`), so the append needs a completion.
    var hasResultWaiters: Bool { !afterResult.isEmpty }

    /// The job's result was appended to the journal (durable, or the write failed):
    /// runs the actions waiting for it.
    func resultJournaled() {
        resultWritten = true
        let actions = afterResult
        afterResult = []
        for a in actions { a() }
    }

    /// Runs `action` once the job's result has been appended (`resultJournaled`).
    /// Register it before the job's result is appended (an append made while no
    /// action waits carries no completion, and `resultJournaled` is not called).
    func whenResultJournaled(_ action: @escaping () -> Void) {
        if resultWritten { action() } else { afterResult.append(action) }
    }
}

/// A run that a duplicate request (same `Idempotency-Key`) can have made a durable
/// job: `LoopState.promotions`. Loop thread only.
protocol JobPromotion: AnyObject {
    /// Makes the run a durable job if it is not one yet and calls `done` once its
    /// record's write completes: true when durable, false when it failed.
    func whenJob(_ done: @escaping (Bool) -> Void)
}

/// A waiting run's job record (SPEC §6) and where its write stands. Apart from the
/// caller's request and connection, so what outlives the caller's answer for
/// duplicates (`LoopState.promotions`) keeps only this. Loop thread only.
final class JobRecordWrite: JobPromotion {
    let run: FlowRun
    let input: FlowInput
    let routeName: String
    let caller: String
    let traceID: String
    /// The caller's callback target; cleared once that caller was refused (`503`).
    var callback: DeliveryTarget?
    let idempotency: (IdempotencyScope, String)?
    let journal: LoopJournal
    private(set) var state = JournalState.none
    /// When the record was first written, milliseconds since the Unix epoch.
    private(set) var createdAt: Int64 = 0
    private var waiters: [(Bool) -> Void] = []

    init(run: FlowRun, input: FlowInput, routeName: String, caller: String, traceID: String, callback: DeliveryTarget?,
         idempotency: (IdempotencyScope, String)?, journal: LoopJournal) {
        self.run = run
        self.input = input
        self.routeName = routeName
        self.caller = caller
        self.traceID = traceID
        self.callback = callback
        self.idempotency = idempotency
        self.journal = journal
    }

    /// Appends the record and the steps already settled, unless it is durable or being
    /// written; a write that failed is tried again. From then on every settled step is
    /// journaled too.
    func write() {
        switch state {
        case .pending, .durable: return
        case .none, .failed: break
        }
        state = .pending
        if createdAt == 0 { createdAt = wallClockMilliseconds() }
        let jobID = run.jobID
        var records = [DurableState.jobAccepted(id: jobID, route: routeName, owner: caller, createdAt: createdAt,
                                                traceID: traceID, input: input, callback: callback, idempotency: idempotency)]
        let route = run.route
        for (i, o) in run.outcomes.enumerated() where o.isTerminal {
            records.append(DurableState.stepFinished(job: jobID, index: i, step: route.steps[i].id, outcome: o))
        }
        let journal = self.journal
        run.onStepSettled = { i, outcome in
            journal.append([DurableState.stepFinished(job: jobID, index: i, step: route.steps[i].id, outcome: outcome)])
        }
        journal.append(records) { [self] ok in
            state = ok ? .durable : .failed
            let w = waiters
            waiters = []
            for d in w { d(ok) }
        }
    }

    /// For a duplicate once the run's own caller was answered `202` (or `503`): the
    /// record is written again if that failed, then as `whenWritten`.
    func whenJob(_ done: @escaping (Bool) -> Void) {
        write()
        whenWritten(done)
    }

    /// Calls `done` once the record's write completes: true when durable, false when it
    /// failed. At once when it has completed.
    func whenWritten(_ done: @escaping (Bool) -> Void) {
        switch state {
        case .durable: done(true)
        case .failed: done(false)
        case .pending, .none: waiters.append(done)
        }
    }
}

/// A journaled job whose route is not configured, kept until a reload brings the
/// route back and its loop has resumed it. `job` is never changed after recovery
/// built it, so it may cross threads; `resumingOn` is changed under `parked`'s lock.
struct ParkedJob: @unchecked Sendable {
    let job: DurableState.RecoveredJob
    /// The loop a reload handed the job to, once one did (resumption queued there).
    var resumingOn: EventLoop? = nil
}

/// One `GET /jobs/{id}?wait=N`: answered once — when the job ends, when N
/// seconds pass, or when a drain hands it off. Touched only on the job's loop.
final class LongPoll: @unchecked Sendable {
    private var done = false
    var timer: LoopTimer?

    /// Replies with the job's status unless already answered. Call on `entry.loop`.
    func answer(_ entry: JobEntry, _ reply: @Sendable (JSON) -> Void) {
        guard !done else { return }
        done = true
        entry.loop.cancel(timer)
        timer = nil
        reply(entry.statusJSON())
    }
}
