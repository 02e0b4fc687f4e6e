import Crypto
import Glibc
import EventLoop
import JSON
import Routes
import Upstream

/// One run of a route: its step graph executed on one event loop.
///
/// Steps with no `after` start at once, concurrently; a step with `after`
/// starts when every dependency has succeeded and its `when` holds, and is
/// skipped (never called) when a dependency failed or was skipped. Each
/// attempt's deadline is `min(now + timeout, step start + retry.within)`;
/// retries use jittered exponential backoff and honour `Retry-After`.
///
/// A run is independent of the HTTP request that started it: it goes on when
/// the caller stops waiting (the switch to async mode) and reports to every
/// `onFinish` observer. All methods are called from within `loop`'s thread.
public final class FlowRun {
    /// The route being run.
    public let route: Route
    /// The job id: ≥ 128 random bits, hex; also the base of step idempotency keys.
    public var jobID: String {
        if let j = drawnJobID { return j }
        let j = FlowRun.newJobID()
        drawnJobID = j
        return j
    }
    private var drawnJobID: String?
    /// The caller's request data.
    public let input: FlowInput
    /// The loop the run lives on.
    public let loop: EventLoop
    /// Per-step outcomes, indexed like `route.steps`.
    public private(set) var outcomes: [StepOutcome]

    /// `body` given a pointer to step `index`'s outcome, valid during the call only.
    /// `outcomes[index].x`, or a computed property of the outcome, copies the whole
    /// outcome (retaining everything it holds); a stored property read through
    /// `pointee` does not. Loop thread only.
    @inline(__always)
    public func withOutcome<R>(_ index: Int, _ body: (UnsafePointer<StepOutcome>) -> R) -> R {
        outcomes.withUnsafeBufferPointer { body($0.baseAddress! + index) }
    }
    /// The final response, once finished.
    public private(set) var response: FlowResponse?
    /// When the run started (monotonic).
    public let startedAt: Instant
    /// When the response was decided (monotonic).
    public private(set) var finishedAt: Instant?
    /// Whether some optional step failed, so the result is partial.
    public private(set) var isPartial = false
    /// Headers added to every upstream call of this run (e.g. `traceparent`).
    public var extraHeaders: [(String, String)] = []
    /// Called when a step reaches an end (succeeded, failed or skipped), with its
    /// index and outcome — e.g. to journal it so a restarted job never calls it again.
    public var onStepSettled: ((Int, StepOutcome) -> Void)?
    /// Called for each attempt to append headers that vary per call (e.g. a new
    /// trace parent id) after `extraHeaders`. Default: none.
    public var headersForAttempt: ((inout [(String, String)]) -> Void)?

    /// What removes this run's secrets: from its problem details and bodies here, and
    /// from the copies of its response that job status and callbacks report.
    public let redactor: Redactor

    private let client: UpstreamClient
    private let maxBodyBytes: Int
    /// The first observer (most runs have one: no array allocated for it), then the rest.
    private var firstObserver: ((FlowRun) -> Void)?
    private var observers: [(FlowRun) -> Void] = []
    /// Per-step `start + retry.within` deadlines; empty (no allocation) until a
    /// step with `retry.within` starts.
    private var stepDeadlines: [Instant] = []
    private var queryCache: [(String, String)]?

    /// Prepares a run; nothing is sent until `start()`.
    /// - Parameters:
    ///   - jobID: the job id; default (nil): a fresh random id (`FlowRun.newJobID()`),
    ///     drawn when first read (a synchronous run that never needs it never draws it).
    ///   - upstreamBodyBytes: the largest upstream response body a step accepts, in bytes. Default: 10 MiB.
    ///   - redactor: removes secrets from problem details and bodies.
    public init(route: Route, input: consuming FlowInput, client: UpstreamClient, jobID: String? = nil,
                redactor: Redactor = Redactor(secrets: []), upstreamBodyBytes: Int = 10 * 1024 * 1024) {
        self.route = route
        self.input = consume input
        self.client = client
        self.loop = client.loop
        self.drawnJobID = jobID
        self.redactor = redactor
        self.maxBodyBytes = upstreamBodyBytes
        self.startedAt = client.loop.now
        outcomes = Array(repeating: StepOutcome(), count: route.steps.count)
    }

    /// A new job id: 128 random bits from OpenSSL, as 32 lowercase hex digits.
    /// The bits come from a per-thread pool of `RAND_bytes` output refilled 4 KiB
    /// at a time (one OpenSSL call per 256 ids); each id uses 16 fresh bytes.
    public static func newJobID() -> String { JobIDPool.current.next() }

    /// Whether the response is decided.
    public var isFinished: Bool { response != nil }

    /// Whether every step has reached an end (no call still in flight).
    public var isSettled: Bool { outcomes.allSatisfy { $0.isTerminal || $0.state == .pending } && !outcomes.contains { $0.state == .running } }

    /// Registers `observer` to be called once when the response is decided
    /// (at once if it already is).
    public func onFinish(_ observer: @escaping (FlowRun) -> Void) {
        if response != nil {
            observer(self)
        } else if firstObserver == nil {
            firstObserver = observer
        } else {
            observers.append(observer)
        }
    }

    /// Starts every step that can start. Call once.
    public func start() {
        advance()
    }

    /// Marks a step as already finished (recovered from the journal), so it is not called again.
    /// Call before `start()`.
    public func restore(step index: Int, outcome: StepOutcome) {
        outcomes[index] = outcome
    }

    /// The idempotency key of step `index`: stable per job and step.
    public func idempotencyKey(step index: Int) -> String { "\(jobID)-\(route.steps[index].id)" }

    // MARK: - Scheduling

    private func advance() {
        guard response == nil else { return }
        for i in route.steps.indices where outcomes[i].state == .pending {
            let step = route.steps[i]
            var ready = true
            var blocked: String?
            for d in step.after {
                switch outcomes[d].state {
                case .succeeded: continue
                case .failed, .skipped: blocked = route.steps[d].id
                case .pending, .running: ready = false
                }
                if blocked != nil { break }
            }
            if let blocked {
                skip(i, because: "dependency \(blocked) did not succeed")
                continue
            }
            guard ready else { continue }
            if !whenHolds(step) {
                skip(i, because: "when condition did not hold")
                continue
            }
            outcomes[i].state = .running
            outcomes[i].startedAt = loop.now
            if let within = step.retry?.within {
                if stepDeadlines.isEmpty { stepDeadlines = Array(repeating: .distantFuture, count: route.steps.count) }
                stepDeadlines[i] = loop.now + within
            }
            attempt(i)
            if response != nil { return }
        }
        finishIfDone()
    }

    private func stepDeadline(_ i: Int) -> Instant {
        stepDeadlines.isEmpty ? .distantFuture : stepDeadlines[i]
    }

    private func skip(_ i: Int, because reason: String) {
        outcomes[i].state = .skipped
        outcomes[i].message = reason
        onStepSettled?(i, outcomes[i])
    }

    /// Sets the response of a run that finished before a restart (from the journal);
    /// its observers are called. Call instead of `start()`.
    public func restoreFinished(response r: FlowResponse) {
        finish(with: r)
    }

    private func whenHolds(_ step: Step) -> Bool {
        let ctx = RunContext(run: self, step: step.index, deadline: .distantFuture)
        return step.when.allSatisfy { $0.holds(in: ctx) }
    }

    private func finishIfDone() {
        guard response == nil else { return }
        // In place, by index, reading only `state`: iterating (or `outcomes[i].isTerminal`)
        // copies each outcome.
        let done = outcomes.withUnsafeBufferPointer { o in
            for k in o.indices where !o[k].state.isTerminal { return false }
            return true
        }
        guard done else { return }
        finish(with: composeResponse())
    }

    private func finish(with r: FlowResponse) {
        guard response == nil else { return }
        response = r
        finishedAt = loop.now
        let first = firstObserver
        let obs = observers
        firstObserver = nil
        observers.removeAll()
        first?(self)
        for o in obs { o(self) }
    }

    // MARK: - Attempts

    private func attempt(_ i: Int) {
        let step = route.steps[i]
        outcomes[i].attempts += 1
        let now = loop.now
        let deadline = min(now + step.timeout, stepDeadline(i))
        let ctx = RunContext(run: self, step: i, deadline: deadline)
        let request: UpstreamRequest
        do {
            let url = try step.request.url.renderURL(ctx)
            var headers = extraHeaders
            if let h = headersForAttempt {
                headers.reserveCapacity(extraHeaders.count + 2 + step.request.headers.count)
                h(&headers)
            }
            var hasContentType = false
            for (name, t) in step.request.headers {
                if name.lowercased() == "content-type" { hasContentType = true }
                headers.append((name, try t.renderHeaderValue(ctx)))
            }
            var body: [UInt8] = []
            if let b = step.request.body {
                body = try b.render(ctx).serialized
                if !hasContentType { headers.append(("Content-Type", "application/json")) }
            }
            request = UpstreamRequest(method: step.request.method, url: url, headers: headers, body: body,
                                      deadline: deadline, maxBodyBytes: maxBodyBytes)
        } catch {
            // e.g. "missing value for {{request.body.amount}}", or "value contains CR, LF or NUL …"
            let what = error.message == "missing value" ? "missing value for" : "\(error.message):"
            fail(i, kind: .template, message: "\(what) {{\(error.reference)}}", response: nil)
            return
        }
        // The transfer holds the run until it completes (the client keeps the
        // transfer, and its completion, only while it is in flight).
        client.send(request) { result in
            self.attemptFinished(i, result)
        }
    }

    private func attemptFinished(_ i: Int, _ result: UpstreamResult) {
        let step = route.steps[i]
        switch result {
        case .success(let r):
            let ok = step.success?.contains(r.status) ?? (200...299).contains(r.status)
            let now = loop.now
            // One access to `outcomes` for the whole update.
            outcomes[i].setUpstreamResponse(r, succeededAt: ok ? now : nil)
            if ok {
                onStepSettled?(i, outcomes[i])
                advance()
                return
            }
            if let retry = step.retry, retry.on.statuses.contains(r.status),
               scheduleRetry(i, retryAfter: r.header("retry-after")) { return }
            fail(i, kind: .status, message: "upstream answered \(r.status)", response: r)
        case .failure(let f):
            let kind: StepErrorKind
            let retryable: Bool
            switch f.kind {
            case .timeout: kind = .timeout; retryable = step.retry?.on.timeout ?? false
            case .connect: kind = .connect; retryable = step.retry?.on.connect ?? false
            case .protocol: kind = .protocol; retryable = step.retry?.on.protocol ?? false
            }
            if retryable, scheduleRetry(i, retryAfter: nil) { return }
            fail(i, kind: kind, message: redactor.redact(f.message), response: nil)
        }
    }

    /// Schedules the next attempt after backoff; false when attempts or time ran out.
    private func scheduleRetry(_ i: Int, retryAfter: String?) -> Bool {
        guard let retry = route.steps[i].retry, outcomes[i].attempts < retry.attempts, response == nil else { return false }
        let n = outcomes[i].attempts  // attempts made so far (≥ 1)
        let base = retry.backoff.nanosecondsClamped
        let exp = base.multipliedReportingOverflow(by: Int64(1) << Int64(min(n - 1, 20)))
        let cap = exp.overflow ? Int64.max / 4 : exp.partialValue
        // Equal jitter: half fixed, half random, so retries from many runs spread out.
        var delay = cap / 2 + Int64.random(in: 0...max(0, cap / 2))
        if let ra = retryAfter.flatMap(FlowRun.retryAfterSeconds) { delay = max(delay, ra * 1_000_000_000) }
        let at = loop.now + .nanoseconds(delay)
        // Never retry past the step's deadline: an attempt must have time to run.
        if at >= stepDeadline(i) { return false }
        loop.schedule(at: at) { [weak self] in
            guard let self else { return }
            if self.response == nil { self.attempt(i) }
        }
        return true
    }

    private func fail(_ i: Int, kind: StepErrorKind, message: String, response r: UpstreamResponse?) {
        outcomes[i].state = .failed
        outcomes[i].errorKind = kind
        outcomes[i].message = message
        outcomes[i].finishedAt = loop.now
        onStepSettled?(i, outcomes[i])
        let step = route.steps[i]
        if step.optional {
            isPartial = true
            advance()
            return
        }
        // A required step failed: the run's answer is decided now; later steps never start.
        var ext: [(String, JSON)] = [("step", .string(step.id)), ("error", .string(kind.rawValue))]
        if let r {
            ext.append(("upstream_status", .int(Int64(r.status))))
            ext.append(("upstream_body", outcomes[i].body))
        }
        let status = kind == .timeout ? 504 : 502
        let detail = "step \(step.id) failed: \(message)"
        var resp = Problem(status: status, detail: detail, extensions: ext).response
        resp.body = redactor.redactJSON(resp.body)
        for j in route.steps.indices where outcomes[j].state == .pending {
            skip(j, because: "run failed at step \(step.id)")
        }
        finish(with: resp)
    }

    // MARK: - Response

    /// The most a composed response body reserves up front (bytes, 16 KiB); larger
    /// bodies grow as they are written.
    static let reservedResponseBytesLimit = 16 * 1024

    private func composeResponse() -> FlowResponse {
        var headers: [(String, String)] = []
        if isPartial { headers.append(("Switchboard-Partial", "true")) }
        guard let spec = route.response else {
            var steps = JSONObject()
            for (i, s) in route.steps.enumerated() {
                let o = outcomes[i]
                var e = JSONObject()
                switch o.state {
                case .skipped:
                    e["status"] = .string("skipped")
                case .failed:
                    e["status"] = .string("failed")
                    e["error"] = .string(o.errorKind?.rawValue ?? "")
                    if let st = o.status { e["upstream_status"] = .int(Int64(st)) }
                default:
                    e["status"] = o.status.map { .int(Int64($0)) } ?? .null
                    e["body"] = o.body
                }
                steps[s.id] = .object(e)
            }
            var top = JSONObject()
            top["steps"] = .object(steps)
            if isPartial { top["partial"] = .bool(true) }
            headers.append(("Content-Type", "application/json"))
            return FlowResponse(status: 200, headers: headers, body: redactor.redactJSON(JSON.object(top).serialized))
        }
        let ctx = RunContext(run: self, step: nil, deadline: .distantFuture)
        do {
            var hasContentType = false
            for (name, t) in spec.headers {
                if name.lowercased() == "content-type" { hasContentType = true }
                headers.append((name, try t.renderHeaderValue(ctx)))
            }
            var body: [UInt8] = []
            if let b = spec.body {
                // Room for the steps' bodies, which templates usually pass through, and
                // the template's own text: one allocation instead of a growth per copy.
                // Capped: a template may read one field of large bodies, and the response
                // keeps this capacity until it is written.
                var upstreamBytes = 0
                for i in outcomes.indices { upstreamBytes += outcomes[i].upstreamBodyCount }
                body.reserveCapacity(min(upstreamBytes + 256, FlowRun.reservedResponseBytesLimit))
                // Straight to bytes: an upstream body already in canonical form is copied as is.
                try b.serialize(ctx, into: &body)
                if !hasContentType { headers.append(("Content-Type", "application/json")) }
            }
            return FlowResponse(status: spec.status, headers: headers, body: redactor.redactJSON(body))
        } catch {
            let ref = error.reference
            return Problem(status: 502, detail: "the route's response needs {{\(ref)}}, which the steps did not provide",
                           extensions: [("error", .string("template"))]).response
        }
    }

    // MARK: - Helpers

    /// An upstream body as JSON: parsed when it is JSON, else a string; `.null` when empty.
    static func parseBody(_ bytes: [UInt8]) -> JSON {
        if bytes.isEmpty { return .null }
        if let j = try? JSON.parse(bytes) { return j }
        return .string(String(decoding: bytes, as: UTF8.self))
    }

    /// `Retry-After` as seconds (RFC 9110 §10.2.3: delay-seconds; HTTP-dates are not honoured).
    static func retryAfterSeconds(_ v: String) -> Int64? {
        guard let s = Int64(v.trimmingSpaces), s >= 0 else { return nil }
        return min(s, 86_400)
    }

    fileprivate func header(_ headers: [(String, String)], _ name: String) -> String? {
        for (n, v) in headers where n.utf8.count == name.utf8.count && n.lowercased() == name.lowercased() { return v }
        return nil
    }

    fileprivate func queryValue(_ name: String) -> String? {
        if queryCache == nil { queryCache = FlowRun.parseQuery(input.query ?? "") }
        return queryCache!.first { $0.0 == name }?.1
    }

    /// `application/x-www-form-urlencoded` pairs of a query string (`+` is a space),
    /// percent-decoded, in order.
    public static func parseQuery(_ q: String) -> [(String, String)] {
        q.split(separator: "&", omittingEmptySubsequences: true).map { part in
            let kv = part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = percentDecode(kv[0])
            let v = kv.count > 1 ? percentDecode(kv[1]) : ""
            return (k, v)
        }
    }

    /// The first name or value of query string `q` (as `parseQuery` splits it) that is
    /// not valid UTF-8 once percent-decoded, as written in `q`; nil when every one is.
    /// `parseQuery` would replace such bytes with U+FFFD, changing what is sent on.
    public static func firstNonUTF8QueryPart(_ q: String) -> Substring? {
        for part in q.split(separator: "&", omittingEmptySubsequences: true) {
            for piece in part.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            where piece.utf8.contains(UInt8(ascii: "%")) && !isUTF8(percentDecodedBytes(piece)) {
                return piece
            }
        }
        return nil
    }

    private static func isUTF8(_ bytes: [UInt8]) -> Bool {
        var it = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&it) {
            case .scalarValue: continue
            case .emptyInput: return true
            case .error: return false
            }
        }
    }

    static func percentDecode(_ s: Substring) -> String {
        String(decoding: percentDecodedBytes(s), as: UTF8.self)
    }

    private static func percentDecodedBytes(_ s: Substring) -> [UInt8] {
        var out: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            let c = u[i]
            if c == UInt8(ascii: "+") { out.append(0x20); i += 1; continue }
            if c == UInt8(ascii: "%"), i + 2 < u.count, let h = Crypto.fromHex(String(decoding: u[(i + 1)...(i + 2)], as: UTF8.self)) {
                out.append(h[0]); i += 3; continue
            }
            out.append(c); i += 1
        }
        return out
    }
}

/// Per-thread buffer of CSPRNG bytes for job ids (see `FlowRun.newJobID()`).
private final class JobIDPool {
    private static let size = 4096
    private let bytes = UnsafeMutablePointer<UInt8>.allocate(capacity: JobIDPool.size)
    private var used = JobIDPool.size

    deinit { bytes.deallocate() }

    private static let key: pthread_key_t = {
        var k = pthread_key_t()
        pthread_key_create(&k) { p in if let p { Unmanaged<JobIDPool>.fromOpaque(p).release() } }
        return k
    }()

    static var current: JobIDPool {
        if let p = pthread_getspecific(key) { return Unmanaged<JobIDPool>.fromOpaque(p).takeUnretainedValue() }
        let pool = JobIDPool()
        pthread_setspecific(key, Unmanaged.passRetained(pool).toOpaque())
        return pool
    }

    func next() -> String {
        if used + 16 > JobIDPool.size {
            let fresh = Crypto.randomBytes(JobIDPool.size)
            fresh.withUnsafeBufferPointer { bytes.update(from: $0.baseAddress!, count: JobIDPool.size) }
            used = 0
        }
        let src = bytes + used
        used += 16
        let id = String(unsafeUninitializedCapacity: 32) { out in
            let digits: StaticString = "0123456789abcdef"
            let d = digits.utf8Start
            for k in 0..<16 {
                out[2 * k] = d[Int(src[k] >> 4)]
                out[2 * k + 1] = d[Int(src[k] & 15)]
            }
            return 32
        }
        // Never hand out the same bytes twice.
        src.update(repeating: 0, count: 16)
        return id
    }
}

extension String {
    var trimmingSpaces: Substring {
        var s = self[...]
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}

extension UpstreamResponse {
    fileprivate func header(_ name: String) -> String? {
        for (n, v) in headers where n.lowercased() == name { return v }
        return nil
    }
}

/// What templates see while rendering one step's request (or the response).
private struct RunContext: TemplateContext {
    unowned let run: FlowRun
    let step: Int?
    let deadline: Instant

    func resolveSerialized(_ ref: TemplateRef) -> [UInt8]? {
        // A whole upstream body received in canonical form: pass its bytes through.
        guard case .stepBody(let i, let path) = ref, path.isEmpty else { return nil }
        return run.withOutcome(i) { o in
            let state = o.pointee.state
            if state == .skipped || (state == .failed && o.pointee.status == nil) { return nil }
            return o.pointee.lazyBody?.canonicalRaw  // `serializedBodyIfCanonical`, in place
        }
    }

    func resolve(_ ref: TemplateRef) -> JSON? {
        switch ref {
        case .requestBody(let path): return run.input.body?.lookup(path)
        case .requestQuery(let name): return run.queryValue(name).map { .string($0) }
        case .requestHeader(let name): return run.header(run.input.headers, name).map { .string($0) }
        case .requestPath(let name): return run.input.pathParams.first { $0.0 == name }.map { .string($0.1) }
        case .stepStatus(let i):
            let o = run.outcomes[i]
            if o.state == .skipped { return .null }
            return o.status.map { .int(Int64($0)) } ?? (o.state == .failed ? .null : nil)
        case .stepBody(let i, let path):
            let o = run.outcomes[i]
            if o.state == .skipped || (o.state == .failed && o.status == nil) { return .null }
            return o.body.lookup(path)
        case .stepHeader(let i, let name):
            let o = run.outcomes[i]
            if o.state == .skipped { return .null }
            return run.header(o.headers, name).map { .string($0) }
        case .jobID: return .string(run.jobID)
        case .stepIdempotencyKey:
            guard let step else { return nil }
            return .string(run.idempotencyKey(step: step))
        case .stepRemainingMs:
            guard step != nil else { return nil }
            return .int(max(0, (deadline - run.loop.now).milliseconds))
        }
    }
}
