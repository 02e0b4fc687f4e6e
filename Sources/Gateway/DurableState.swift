import Crypto
import Flows
import JSON
import Jobs
import Journal
import EventLoop
import Upstream
import Locking
import Synchronization

/// Record kinds in the journal (the `kind` tag of `JournalRecord`).
enum RecordKind: UInt16 {
    case jobAccepted = 1, stepFinished = 2, jobFinished = 3
    case delivery = 10, idempotency = 20, endpoint = 30
}

/// Everything that must outlive the process — accepted jobs, step outcomes,
/// job results, deliveries, idempotency records, callback endpoints — as
/// records in the embedded `Journal` (SPEC §6). Keys: `job/<id>`,
/// `delivery/<job id>`, `idem/<caller>/<route>/<key>`, `endpoint/<id>`.
///
/// The encodings are JSON (bodies as base64). Safe from any thread: the
/// journal serialises appends on its writer thread, in call order.
final class DurableState: Sendable {
    let journal: Journal
    /// One batch per event loop, indexed like the loops: job records appended on a
    /// loop during one iteration go to the journal as one append.
    let loopJournals: [LoopJournal]
    /// A decaying high-water mark of how long a durable batch took from being posted
    /// to being synced, in nanoseconds (see `writeAheadLead`). Until measured, a
    /// durable write is taken to cost 5 ms (an fsync on a common disk): with a floor
    /// of 2 ms instead, the first burst of waiting runs after a start wrote their
    /// records too late and their `202`s waited on the journal's first fsyncs.
    private let recentSyncNanos = Atomic<Int64>(5_000_000)
    /// Whether `noteWrite` must look at a success: a failure was seen and its end is
    /// not reported yet (the fast path of `noteWrite`).
    private let unsettled = Atomic<Bool>(false)
    private let health = Locked(Health())
    /// Called (on the journal's writer thread) when journal writes start failing,
    /// succeed again, or stop for good; see `noteWrite`. Set once, before serving.
    let onHealthChange = Locked<(@Sendable (HealthChange) -> Void)?>(nil)

    /// Where journal writes stand, for the log.
    private struct Health {
        var stopped = false
        /// Whether a failure has been reported whose end has not been.
        var reported = false
        /// When a failure was last reported, and when one last happened.
        var lastReport: Instant?
        var lastFailure: Instant?
        /// Failed writes not yet counted in a report.
        var failures = 0
    }

    /// A change in how journal writes go, reported by `noteWrite`.
    enum HealthChange: Sendable {
        /// Writes fail (e.g. the disk is full) but the journal goes on: a later one may
        /// succeed. `failures`: failed writes since the previous report.
        case failing(JournalError, failures: Int)
        /// The journal refuses every write until the process restarts.
        case stopped(JournalError)
        /// Writes succeed again: none failed for `DurableState.quietPeriod`.
        /// `failures`: failed writes since the previous report.
        case recovered(failures: Int)
    }

    /// How long writes must go without a failure before they count as recovered, and
    /// the least time between two failure reports. 10 s: on a nearly full disk small
    /// records still fit while larger ones fail, which must not flood the log.
    static let quietPeriod = Duration.seconds(10)

    /// Folds the outcome of one journal write into the journal's health and reports a
    /// change to `onHealthChange`: a failure (at most one report per `quietPeriod`,
    /// with the count of failures since the last), the journal stopping for good
    /// (once), and — at the first success once no write failed for `quietPeriod` —
    /// the end of a reported failing spell. A record rejected for its size and a
    /// closed journal say nothing about the disk. Any thread; while writes go well,
    /// one atomic load.
    func noteWrite(_ result: Result<Void, JournalError>) {
        let change: HealthChange?
        switch result {
        case .success:
            guard unsettled.load(ordering: .relaxed) else { return }
            let now = Instant.now()
            change = health.withLock { h -> HealthChange? in
                guard !h.stopped, let last = h.lastFailure, now - last >= DurableState.quietPeriod else { return nil }
                unsettled.store(false, ordering: .relaxed)
                guard h.reported else { return nil }
                h.reported = false
                defer { h.failures = 0 }
                return .recovered(failures: h.failures)
            }
        case .failure(.closed), .failure(.invalidRecord):
            return
        case .failure(let error):
            let now = Instant.now()
            change = health.withLock { h -> HealthChange? in
                h.failures += 1
                guard !h.stopped else { return nil }
                h.lastFailure = now
                unsettled.store(true, ordering: .relaxed)
                if case .poisoned = error {
                    h.stopped = true
                    return .stopped(error)
                }
                if let last = h.lastReport, now - last < DurableState.quietPeriod { return nil }
                h.lastReport = now
                h.reported = true
                defer { h.failures = 0 }
                return .failing(error, failures: h.failures)
            }
        }
        if let change, let hook = onHealthChange.withLock({ $0 }) { hook(change) }
    }

    init(journal: Journal, loops: [EventLoop] = []) {
        self.journal = journal
        self.loopJournals = loops.map { LoopJournal(loop: $0, journal: journal) }
        for lj in loopJournals { lj.durable = self }
    }

    /// How long before a wait budget ends a job's record should be written so that it
    /// is durable when the budget ends: twice the recent durable-write latency plus
    /// 1 ms, between 2 ms and 50 ms.
    var writeAheadLead: Duration {
        let ns = recentSyncNanos.load(ordering: .relaxed)
        return .nanoseconds(min(max(2 * ns + 1_000_000, 2_000_000), 50_000_000))
    }

    /// Folds one durable-write latency into `writeAheadLead` (a high-water mark that
    /// decays by 1/256 per sample: under load, with a batch per fsync, a spike is
    /// remembered for about a second — the fsync tail comes back often enough that a
    /// faster decay let a few % of `202`s wait on their record).
    func noteSyncLatency(_ nanos: Int64) {
        let old = recentSyncNanos.load(ordering: .relaxed)
        recentSyncNanos.store(max(nanos, old - old / 256), ordering: .relaxed)
    }

    // MARK: Writing

    /// Appends `records`; `completion` runs (on the journal's writer thread) once
    /// they are durable when `durable` is true, or written otherwise.
    func write(_ records: [JournalRecord], durable: Bool, completion: (@Sendable (Bool) -> Void)? = nil) {
        journal.append(records, durable: durable) { [self] result in
            noteWrite(result)
            if case .success = result { completion?(true) } else { completion?(false) }
        }
    }

    /// Job results waiting to be written with their callback's delivery record, by job id.
    private let heldResults = Locked<[String: JournalRecord]>([:])

    /// Keeps `result` (a `jobFinished` record) until the delivery record of job `id`
    /// is written: `takeResult` hands it to that write, so both are one append.
    func holdResult(_ result: JournalRecord, ofJob id: String) {
        heldResults.withLock { $0[id] = result }
    }

    /// The result held for job `id` (empty when none), no longer held.
    func takeResult(ofJob id: String) -> [JournalRecord] {
        heldResults.withLock { $0.removeValue(forKey: id) }.map { [$0] } ?? []
    }

    static func jobKey(_ id: String) -> String { "job/\(id)" }

    /// The record that makes a job durable: everything needed to run it again.
    ///
    /// Written straight into bytes (no `JSON` tree): the same text as serializing
    /// `{"route", "owner", "created_at", "trace_id", "input": {"method", "path",
    /// "params", "query"?, "headers", "body", "has_body"}, "callback"?, "idempotency"?}`.
    static func jobAccepted(id: String, route: String, owner: String, createdAt: Int64, traceID: String,
                            input: FlowInput, callback: DeliveryTarget?, idempotency: (IdempotencyScope, String)?) -> JournalRecord {
        var w = PayloadWriter(capacity: 512)
        w.open()
        w.field("route", route)
        w.field("owner", owner)
        w.field("created_at", createdAt)
        w.field("trace_id", traceID)
        w.key("input")
        w.open()
        w.field("method", input.method)
        w.field("path", input.path)
        w.key("params")
        w.pairs(input.pathParams)
        if let q = input.query { w.field("query", q) }
        // Never persist the caller's credentials.
        w.key("headers")
        w.pairs(input.headers, skipping: "authorization")
        w.key("body")
        w.value(input.body ?? .null)
        w.key("has_body")
        w.raw(input.body != nil ? "true" : "false")
        w.close()
        if let callback {
            w.key("callback")
            w.target(callback)
        }
        if let (scope, key) = idempotency {
            w.key("idempotency")
            w.open()
            w.field("caller", scope.caller)
            w.field("route", scope.route)
            w.field("key", key)
            w.close()
        }
        w.close()
        return .put(jobKey(id), kind: RecordKind.jobAccepted.rawValue, payload: w.bytes)
    }

    /// A step's outcome, appended to its job: `{"index", "step", "state", "status"?,
    /// "headers", "body", "attempts", "error"?, "message"?}` (written straight into
    /// bytes). `step` is the step's id: recovery restores the outcome to the step of
    /// that id, wherever the route file has it now (`index` is its position then).
    static func stepFinished(job: String, index: Int, step: String, outcome: StepOutcome) -> JournalRecord {
        var w = PayloadWriter(capacity: 512)
        w.open()
        w.field("index", Int64(index))
        w.field("step", step)
        w.field("state", outcome.state.rawValue)
        if let s = outcome.status { w.field("status", Int64(s)) }
        w.key("headers")
        // An upstream header block or body is written from its bytes when that gives
        // the same text as the parsed pairs or value would, without parsing it.
        if let block = outcome.headerBlock { w.pairs(block) } else { w.pairs(outcome.headers) }
        w.key("body")
        if let json = outcome.serializedBodyIfCanonical { w.serialized(json) } else { w.value(outcome.body) }
        w.field("attempts", Int64(outcome.attempts))
        if let k = outcome.errorKind { w.field("error", k.rawValue) }
        if let m = outcome.message { w.field("message", m) }
        w.close()
        return .append(jobKey(job), kind: RecordKind.stepFinished.rawValue, payload: w.bytes)
    }

    /// A job's result, appended to it: `{"finished_at", "status", "headers", "body": base64}`
    /// (`finished_at` in milliseconds since the Unix epoch: a restart keeps the job for
    /// what is left of its retention, not a whole new one).
    static func jobFinished(job: String, response: FlowResponse, finishedAt: Int64) -> JournalRecord {
        // Room for the fields, each header pair (quotes, brackets, commas: 8 bytes), the
        // body's base64 and the NUL `EVP_EncodeBlock` writes past it: one allocation.
        let headerBytes = response.headers.reduce(0) { $0 + $1.0.utf8.count + $1.1.utf8.count + 8 }
        var w = PayloadWriter(capacity: 96 + headerBytes + 4 * ((response.body.count + 2) / 3) + 1)
        w.open()
        w.field("finished_at", finishedAt)
        w.field("status", Int64(response.status))
        w.key("headers")
        w.pairs(response.headers)
        w.base64Field("body", response.body)
        w.close()
        return .append(jobKey(job), kind: RecordKind.jobFinished.rawValue, payload: w.bytes)
    }

    static func delivery(_ r: DeliveryRecord) -> JournalRecord {
        var o = JSONObject()
        o["job_id"] = .string(r.jobID)
        o["webhook_id"] = .string(r.webhookID)
        o["owner"] = .string(r.owner)
        o["target"] = target(r.target)
        o["body"] = .string(Crypto.base64(r.body))
        o["status"] = .string(r.status.rawValue)
        o["attempts"] = .int(Int64(r.attempts))
        if let s = r.lastStatus { o["last_status"] = .int(Int64(s)) }
        if let e = r.lastError { o["last_error"] = .string(e) }
        o["created_at"] = .int(r.createdAt)
        o["updated_at"] = .int(r.updatedAt)
        if let n = r.nextAttemptAt { o["next_attempt_at"] = .int(n) }
        return .put("delivery/\(r.jobID)", kind: RecordKind.delivery.rawValue, payload: JSON.object(o).serialized)
    }

    static func idempotencyKey(_ scope: IdempotencyScope, _ key: String) -> String {
        "idem/\(scope.caller.count):\(scope.caller)/\(scope.route.count):\(scope.route)/\(key)"
    }

    static func idempotency(_ r: IdempotencyRecord) -> JournalRecord {
        var o = JSONObject()
        o["caller"] = .string(r.scope.caller)
        o["route"] = .string(r.scope.route)
        o["key"] = .string(r.key)
        o["fingerprint"] = .string(Crypto.hex(r.fingerprint.bytes))
        o["job_id"] = .string(r.jobID)
        o["loop_index"] = .int(Int64(r.loopIndex))
        o["created_at"] = .int(r.createdAt)
        o["expires_at"] = .int(r.expiresAt)
        if let resp = r.response {
            o["response"] = .object(["status": .int(Int64(resp.status)), "headers": pairs(resp.headers), "body": .string(Crypto.base64(resp.body))])
        }
        return .put(idempotencyKey(r.scope, r.key), kind: RecordKind.idempotency.rawValue, payload: JSON.object(o).serialized)
    }

    static func endpoint(_ e: CallbackEndpoint) -> JournalRecord {
        var o = JSONObject()
        o["id"] = .string(e.id)
        o["owner"] = .string(e.owner)
        o["url"] = .string(e.url)
        o["secret"] = .string(e.secret)
        o["disabled"] = .bool(e.disabled)
        if let r = e.disabledReason { o["disabled_reason"] = .string(r) }
        o["created_at"] = .int(e.createdAt)
        return .put("endpoint/\(e.id)", kind: RecordKind.endpoint.rawValue, payload: JSON.object(o).serialized)
    }

    // MARK: Reading (replay)

    /// A job as the journal holds it.
    struct RecoveredJob {
        var id: String
        var route: String
        var owner: String
        var createdAt: Int64
        var traceID: String
        var input: FlowInput
        var callback: DeliveryTarget?
        var idempotency: (IdempotencyScope, String)?
        /// Journaled step outcomes: the step's position when journaled, its id (nil in
        /// records from before ids were journaled), the outcome.
        var steps: [(index: Int, id: String?, outcome: StepOutcome)] = []
        var response: FlowResponse?
        /// When it finished, milliseconds since the Unix epoch (nil: not finished, or
        /// journaled before the record carried it).
        var finishedAt: Int64?
    }

    /// Everything live in the journal, decoded. Records that do not decode are skipped and counted.
    struct Recovered {
        var jobs: [RecoveredJob] = []
        var deliveries: [DeliveryRecord] = []
        var idempotency: [IdempotencyRecord] = []
        var endpoints: [CallbackEndpoint] = []
        var undecodable = 0
        /// Jobs with step or result records but no record of being accepted: their
        /// record failed to be written (the caller got a `503`), the run went on.
        /// Nothing can resume them; their keys are deleted.
        var strayJobs: Set<String> = []
    }

    func recover() throws -> Recovered {
        var out = Recovered()
        var jobs: [String: RecoveredJob] = [:]
        var order: [String] = []
        try journal.forEachLiveRecord { rec in
            guard let kind = RecordKind(rawValue: rec.kind), case .object(let o)? = try? JSON.parse(rec.payload) else {
                out.undecodable += 1
                return
            }
            switch kind {
            case .jobAccepted:
                guard let j = DurableState.decodeJob(key: rec.key, o) else { out.undecodable += 1; return }
                if jobs[j.id] == nil { order.append(j.id) }
                jobs[j.id] = j
            case .stepFinished:
                let id = String(rec.key.dropFirst(4))
                guard let i = o["index"]?.intValue, let state = o["state"]?.stringValue.flatMap(StepState.init(rawValue:)) else { out.undecodable += 1; return }
                var s = StepOutcome()
                s.state = state
                s.status = o["status"]?.intValue.map { Int($0) }
                s.headers = DurableState.unpairs(o["headers"])
                s.body = o["body"] ?? .null
                s.attempts = Int(o["attempts"]?.intValue ?? 0)
                s.errorKind = o["error"]?.stringValue.flatMap(StepErrorKind.init(rawValue:))
                s.message = o["message"]?.stringValue
                guard jobs[id] != nil else { out.strayJobs.insert(id); return }
                jobs[id]?.steps.append((Int(i), o["step"]?.stringValue, s))
            case .jobFinished:
                let id = String(rec.key.dropFirst(4))
                guard jobs[id] != nil else { out.strayJobs.insert(id); return }
                jobs[id]?.response = FlowResponse(status: Int(o["status"]?.intValue ?? 500), headers: DurableState.unpairs(o["headers"]),
                                                  body: o["body"]?.stringValue.flatMap(Crypto.fromBase64) ?? [])
                jobs[id]?.finishedAt = o["finished_at"]?.intValue
            case .delivery:
                guard let d = DurableState.decodeDelivery(o) else { out.undecodable += 1; return }
                out.deliveries.append(d)
            case .idempotency:
                guard let r = DurableState.decodeIdempotency(o) else { out.undecodable += 1; return }
                out.idempotency.append(r)
            case .endpoint:
                guard let id = o["id"]?.stringValue, let owner = o["owner"]?.stringValue, let url = o["url"]?.stringValue,
                      let secret = o["secret"]?.stringValue else { out.undecodable += 1; return }
                out.endpoints.append(CallbackEndpoint(id: id, owner: owner, url: url, secret: secret, disabled: o["disabled"]?.boolValue ?? false,
                                                      disabledReason: o["disabled_reason"]?.stringValue, createdAt: o["created_at"]?.intValue ?? 0))
            }
        }
        out.jobs = order.compactMap { jobs[$0] }
        return out
    }

    private static func decodeJob(key: String, _ o: JSONObject) -> RecoveredJob? {
        guard key.hasPrefix("job/"), let route = o["route"]?.stringValue, let owner = o["owner"]?.stringValue,
              case .object(let i)? = o["input"], let method = i["method"]?.stringValue, let path = i["path"]?.stringValue else { return nil }
        let input = FlowInput(method: method, path: path, pathParams: unpairs(i["params"]), query: i["query"]?.stringValue,
                              headers: unpairs(i["headers"]), body: (i["has_body"]?.boolValue ?? false) ? (i["body"] ?? .null) : nil)
        var job = RecoveredJob(id: String(key.dropFirst(4)), route: route, owner: owner, createdAt: o["created_at"]?.intValue ?? 0,
                               traceID: o["trace_id"]?.stringValue ?? "", input: input)
        job.callback = o["callback"].flatMap(untarget)
        if case .object(let idem)? = o["idempotency"], let c = idem["caller"]?.stringValue, let r = idem["route"]?.stringValue, let k = idem["key"]?.stringValue {
            job.idempotency = (IdempotencyScope(caller: c, route: r), k)
        }
        return job
    }

    private static func decodeDelivery(_ o: JSONObject) -> DeliveryRecord? {
        guard let job = o["job_id"]?.stringValue, let wid = o["webhook_id"]?.stringValue, let owner = o["owner"]?.stringValue,
              let target = o["target"].flatMap(untarget), let body = o["body"]?.stringValue.flatMap(Crypto.fromBase64),
              let status = o["status"]?.stringValue.flatMap(DeliveryStatus.init(rawValue:)) else { return nil }
        return DeliveryRecord(jobID: job, webhookID: wid, owner: owner, target: target, body: body, status: status,
                              attempts: Int(o["attempts"]?.intValue ?? 0), lastStatus: o["last_status"]?.intValue.map { Int($0) },
                              lastError: o["last_error"]?.stringValue, createdAt: o["created_at"]?.intValue ?? 0,
                              updatedAt: o["updated_at"]?.intValue ?? 0, nextAttemptAt: o["next_attempt_at"]?.intValue)
    }

    private static func decodeIdempotency(_ o: JSONObject) -> IdempotencyRecord? {
        guard let caller = o["caller"]?.stringValue, let route = o["route"]?.stringValue, let key = o["key"]?.stringValue,
              let fp = o["fingerprint"]?.stringValue.flatMap(Crypto.fromHex), let job = o["job_id"]?.stringValue else { return nil }
        var response: StoredResponse?
        if case .object(let r)? = o["response"] {
            response = StoredResponse(status: Int(r["status"]?.intValue ?? 500), headers: unpairs(r["headers"]),
                                      body: r["body"]?.stringValue.flatMap(Crypto.fromBase64) ?? [])
        }
        return IdempotencyRecord(scope: IdempotencyScope(caller: caller, route: route), key: key, fingerprint: RequestFingerprint(bytes: fp),
                                 jobID: job, loopIndex: Int(o["loop_index"]?.intValue ?? 0), createdAt: o["created_at"]?.intValue ?? 0,
                                 expiresAt: o["expires_at"]?.intValue ?? 0, response: response)
    }

    // MARK: Helpers

    static func pairs(_ p: [(String, String)]) -> JSON { .array(p.map { .array([.string($0.0), .string($0.1)]) }) }

    static func unpairs(_ j: JSON?) -> [(String, String)] {
        guard case .array(let a)? = j else { return [] }
        return a.compactMap { e in
            guard case .array(let kv) = e, kv.count == 2, let k = kv[0].stringValue, let v = kv[1].stringValue else { return nil }
            return (k, v)
        }
    }

    static func target(_ t: DeliveryTarget) -> JSON {
        switch t {
        case .endpoint(let id): return .object(["endpoint": .string(id)])
        case .url(let u): return .object(["url": .string(u)])
        }
    }

    static func untarget(_ j: JSON) -> DeliveryTarget? {
        if let id = j["endpoint"]?.stringValue { return .endpoint(id: id) }
        if let u = j["url"]?.stringValue { return .url(u) }
        return nil
    }
}

/// Where a waiting run's job record stands: not written, written but not yet
/// durable, durable, or failed to be written.
enum JournalState {
    case none, pending, durable, failed
}

/// The job records appended on one event loop during one loop iteration, posted to
/// the journal as one durable append when the iteration ends. Under load this turns
/// one journal append, one writer hand-off and one hop back to the loop per record
/// into one of each per iteration. Loop thread only (`@unchecked Sendable` so the
/// journal's completion can carry it back to its loop).
///
/// Order: records are posted in the order they were appended here; `flush()` posts
/// what is pending at once, for a caller about to write something else to the journal
/// directly that must come after them. Each record is still durable before its
/// completion runs; the records of one iteration are all-or-nothing together.
final class LoopJournal: @unchecked Sendable {
    let loop: EventLoop
    let journal: Journal
    /// Where durable-write latencies are reported (set by `DurableState.init`).
    weak var durable: DurableState?
    private var records: [JournalRecord] = []
    private var completions: [(Bool) -> Void] = []
    private var scheduled = false

    init(loop: EventLoop, journal: Journal) {
        self.loop = loop
        self.journal = journal
    }

    /// Appends `records` durably; `completion` runs on this loop once they are synced
    /// (true) or failed (false).
    func append(_ records: [JournalRecord], completion: ((Bool) -> Void)? = nil) {
        for r in records where !journal.fits(r) {
            // An oversize record must fail alone, not take the iteration's batch with it.
            flush()
            self.records = records
            if let completion { completions.append(completion) }
            flush()
            return
        }
        self.records.append(contentsOf: records)
        if let completion { completions.append(completion) }
        if !scheduled {
            scheduled = true
            loop.deferUntilEndOfIteration { [self] in flush() }
        }
    }

    /// Posts the pending records now.
    func flush() {
        scheduled = false
        guard !records.isEmpty || !completions.isEmpty else { return }
        let batch = records, done = completions
        records = []
        completions = []
        let loop = self.loop, durable = self.durable
        let posted = Instant.now()
        let box = LoopBound(done)
        journal.append(batch, durable: true) { result in
            durable?.noteWrite(result)
            let ok: Bool
            if case .success = result { ok = true } else { ok = false }
            if ok { durable?.noteSyncLatency((Instant.now() - posted).nanosecondsClamped) }
            if box.value.isEmpty { return }
            loop.execute { for c in box.value { c(ok) } }
        }
    }
}

/// Compact JSON written member by member into one byte buffer: the same text as
/// building a `JSONObject` and serializing it, without the intermediate tree.
struct PayloadWriter {
    private(set) var bytes: [UInt8] = []
    /// Whether the innermost open object or array has no member yet.
    private var atStart = true

    init(capacity: Int) { bytes.reserveCapacity(capacity) }

    mutating func open() {
        separate()
        bytes.append(0x7B)
        atStart = true
    }

    mutating func close() {
        bytes.append(0x7D)
        atStart = false
    }

    /// `"name":` (after a comma unless first); the value must follow.
    mutating func key(_ name: StaticString) {
        separate()
        bytes.append(0x22)
        bytes.append(contentsOf: UnsafeBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
        bytes.append(0x22)
        bytes.append(0x3A)
        atStart = true  // the value that follows takes no comma
    }

    mutating func field(_ name: StaticString, _ value: String) {
        key(name)
        JSON.appendQuoted(value, to: &bytes)
        atStart = false
    }

    mutating func field(_ name: StaticString, _ value: Int64) {
        key(name)
        JSON.appendInteger(value, to: &bytes)
        atStart = false
    }

    /// `"name":"<standard base64 of bytes>"` (base64 needs no JSON escape).
    mutating func base64Field(_ name: StaticString, _ value: [UInt8]) {
        key(name)
        bytes.append(0x22)
        Crypto.appendBase64(value, to: &bytes)
        bytes.append(0x22)
        atStart = false
    }

    mutating func value(_ v: JSON) {
        separate()
        v.serialize(into: &bytes)
        atStart = false
    }

    /// A value already serialized as compact JSON.
    mutating func serialized(_ json: [UInt8]) {
        separate()
        bytes.append(contentsOf: json)
        atStart = false
    }

    mutating func raw(_ text: StaticString) {
        separate()
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
        atStart = false
    }

    /// `[["name","value"],…]`, leaving out names equal (ASCII case-insensitively) to `skipping`.
    mutating func pairs(_ p: [(String, String)], skipping: StaticString? = nil) {
        separate()
        bytes.append(0x5B)
        pairElements(p, skipping: skipping)
        bytes.append(0x5D)
        atStart = false
    }

    /// `[["name","value"],…]` of `block.pairs`, written from the block's bytes when it
    /// is plain (see `UpstreamHeaderBlock.forEachPlainField`): the same text, unparsed.
    mutating func pairs(_ block: UpstreamHeaderBlock) {
        separate()
        bytes.append(0x5B)
        let start = bytes.count
        let plain = block.forEachPlainField { name, value in
            if bytes.count > start { bytes.append(0x2C) }
            bytes.append(0x5B)
            JSON.appendQuoted(utf8: name, to: &bytes)
            bytes.append(0x2C)
            JSON.appendQuoted(utf8: value, to: &bytes)
            bytes.append(0x5D)
        }
        if !plain { pairElements(block.pairs) }
        bytes.append(0x5D)
        atStart = false
    }

    private mutating func pairElements(_ p: [(String, String)], skipping: StaticString? = nil) {
        var first = true
        for (k, v) in p {
            if let skipping, PayloadWriter.asciiCaseInsensitiveEquals(k, skipping) { continue }
            if !first { bytes.append(0x2C) }
            first = false
            bytes.append(0x5B)
            JSON.appendQuoted(k, to: &bytes)
            bytes.append(0x2C)
            JSON.appendQuoted(v, to: &bytes)
            bytes.append(0x5D)
        }
    }

    /// `{"endpoint": id}` or `{"url": url}`.
    mutating func target(_ t: DeliveryTarget) {
        open()
        switch t {
        case .endpoint(let id): field("endpoint", id)
        case .url(let u): field("url", u)
        }
        close()
    }

    private mutating func separate() {
        if !atStart { bytes.append(0x2C) }
        atStart = false
    }

    /// `a` equals the lowercase ASCII `lower`, ignoring ASCII case.
    static func asciiCaseInsensitiveEquals(_ a: String, _ lower: StaticString) -> Bool {
        let u = a.utf8
        guard u.count == lower.utf8CodeUnitCount else { return false }
        var i = 0
        for c in u {
            let l = (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
            if l != lower.utf8Start[i] { return false }
            i += 1
        }
        return true
    }
}
