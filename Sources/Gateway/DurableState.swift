import Crypto
import Flows
import JSON
import Jobs
import Journal

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

    init(journal: Journal) { self.journal = journal }

    // MARK: Writing

    /// Appends `records`; `completion` runs (on the journal's writer thread) once
    /// they are durable when `durable` is true, or written otherwise.
    func write(_ records: [JournalRecord], durable: Bool, completion: (@Sendable (Bool) -> Void)? = nil) {
        journal.append(records, durable: durable) { result in
            if case .success = result { completion?(true) } else { completion?(false) }
        }
    }

    static func jobKey(_ id: String) -> String { "job/\(id)" }

    /// The record that makes a job durable: everything needed to run it again.
    static func jobAccepted(id: String, route: String, owner: String, createdAt: Int64, traceID: String,
                            input: FlowInput, callback: DeliveryTarget?, idempotency: (IdempotencyScope, String)?) -> JournalRecord {
        var o = JSONObject()
        o["route"] = .string(route)
        o["owner"] = .string(owner)
        o["created_at"] = .int(createdAt)
        o["trace_id"] = .string(traceID)
        var i = JSONObject()
        i["method"] = .string(input.method)
        i["path"] = .string(input.path)
        i["params"] = pairs(input.pathParams)
        if let q = input.query { i["query"] = .string(q) }
        // Never persist the caller's credentials.
        i["headers"] = pairs(input.headers.filter { $0.0.lowercased() != "authorization" })
        i["body"] = input.body ?? .null
        i["has_body"] = .bool(input.body != nil)
        o["input"] = .object(i)
        if let callback { o["callback"] = target(callback) }
        if let (scope, key) = idempotency {
            o["idempotency"] = .object(["caller": .string(scope.caller), "route": .string(scope.route), "key": .string(key)])
        }
        return .put(jobKey(id), kind: RecordKind.jobAccepted.rawValue, payload: JSON.object(o).serialized)
    }

    static func stepFinished(job: String, index: Int, outcome: StepOutcome) -> JournalRecord {
        var o = JSONObject()
        o["index"] = .int(Int64(index))
        o["state"] = .string(outcome.state.rawValue)
        if let s = outcome.status { o["status"] = .int(Int64(s)) }
        o["headers"] = pairs(outcome.headers)
        o["body"] = outcome.body
        o["attempts"] = .int(Int64(outcome.attempts))
        if let k = outcome.errorKind { o["error"] = .string(k.rawValue) }
        if let m = outcome.message { o["message"] = .string(m) }
        return .append(jobKey(job), kind: RecordKind.stepFinished.rawValue, payload: JSON.object(o).serialized)
    }

    static func jobFinished(job: String, response: FlowResponse) -> JournalRecord {
        .append(jobKey(job), kind: RecordKind.jobFinished.rawValue, payload: JSON.object([
            "status": .int(Int64(response.status)), "headers": pairs(response.headers), "body": .string(Crypto.base64(response.body)),
        ]).serialized)
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
        var steps: [(Int, StepOutcome)] = []
        var response: FlowResponse?
    }

    /// Everything live in the journal, decoded. Records that do not decode are skipped and counted.
    struct Recovered {
        var jobs: [RecoveredJob] = []
        var deliveries: [DeliveryRecord] = []
        var idempotency: [IdempotencyRecord] = []
        var endpoints: [CallbackEndpoint] = []
        var undecodable = 0
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
                jobs[id]?.steps.append((Int(i), s))
            case .jobFinished:
                let id = String(rec.key.dropFirst(4))
                jobs[id]?.response = FlowResponse(status: Int(o["status"]?.intValue ?? 500), headers: DurableState.unpairs(o["headers"]),
                                                  body: o["body"]?.stringValue.flatMap(Crypto.fromBase64) ?? [])
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
