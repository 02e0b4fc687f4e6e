import EventLoop
import Flows
import JSON
import Locking
import Synchronization

/// A run that switched to asynchronous mode (the caller got `202`), or any run
/// that may be polled at `/jobs/{id}`. The `FlowRun` itself stays confined to
/// its loop; the registry only hands out the loop to hop onto.
final class JobEntry: @unchecked Sendable {
    let id: String
    /// The API key name of the caller that started the job ("" when the gateway runs open).
    let owner: String
    let routeName: String
    let loop: EventLoop
    /// Wall-clock creation time, milliseconds since the Unix epoch.
    let createdAt: Int64
    /// The run; touched only on `loop`.
    let run: FlowRun
    /// The run's W3C trace id.
    let traceID: String
    /// Wall-clock time the run finished, milliseconds since the Unix epoch (set on
    /// `loop`, read by the sweeper on `loop`): retention outlasts restarts and reboots,
    /// which the monotonic clock does not.
    var finishedAtMs: Int64?

    init(id: String, owner: String, routeName: String, loop: EventLoop, createdAt: Int64, run: FlowRun, traceID: String) {
        self.traceID = traceID
        self.id = id
        self.owner = owner
        self.routeName = routeName
        self.loop = loop
        self.createdAt = createdAt
        self.run = run
    }

    /// The job as `GET /jobs/{id}` shows it (SPEC §3). Call on `loop`.
    func statusJSON() -> JSON {
        var o = JSONObject()
        o["job_id"] = .string(id)
        o["route"] = .string(routeName)
        let status: String
        if let r = run.response {
            status = (200...299).contains(r.status) ? "succeeded" : "failed"
        } else {
            status = "running"
        }
        o["status"] = .string(status)
        o["created_at"] = .string(rfc3339Timestamp(createdAt))
        o["trace_id"] = .string(traceID)
        var steps = JSONObject()
        for (i, s) in run.route.steps.enumerated() {
            let out = run.outcomes[i]
            var e = JSONObject()
            e["state"] = .string(out.state.rawValue)
            if let st = out.status { e["status"] = .int(Int64(st)) }
            if out.attempts > 0 { e["attempts"] = .int(Int64(out.attempts)) }
            if let k = out.errorKind { e["error"] = .string(k.rawValue) }
            if let m = out.message { e["message"] = .string(m) }
            if let d = out.durationSeconds { e["duration_ms"] = .double((d * 1000 * 1000).rounded() / 1000) }
            steps[s.id] = .object(e)
        }
        o["steps"] = .object(steps)
        if let r = run.response {
            o["response"] = JobEntry.responseJSON(r, redactor: run.redactor)
        }
        return .object(o)
    }

    /// The callback body (SPEC §4): `{"job_id", "route", "status", "response", "trace_id"}`. Call on `loop`.
    func callbackBody() -> [UInt8] {
        guard case .object(let status) = statusJSON() else { return [] }
        var o = JSONObject()
        for k in ["job_id", "route", "status", "response", "trace_id"] { o[k] = status[k] }
        return JSON.object(o).serialized
    }

    /// `{"status", "headers", "body"}` of a response; the body as JSON when it is JSON.
    /// Header values go through `redactor` (SPEC §7: no secret in job status or callbacks):
    /// the run redacted the body already, but sends header values a route fills from
    /// templates (`{{env.*}}`, an upstream's `{{steps.ID.headers.x}}`) to the
    /// synchronous caller as written.
    static func responseJSON(_ r: FlowResponse, redactor: Redactor) -> JSON {
        var resp = JSONObject()
        resp["status"] = .int(Int64(r.status))
        var h = JSONObject()
        for (n, v) in redactor.redact(headers: r.headers) { h[n] = .string(v) }
        resp["headers"] = .object(h)
        if r.body.isEmpty {
            resp["body"] = .null
        } else if let j = try? JSON.parse(r.body) {
            resp["body"] = j
        } else {
            resp["body"] = .string(String(decoding: r.body, as: UTF8.self))
        }
        return .object(resp)
    }
}

/// All jobs of this process, by id. Thread-safe; lookups take a short lock.
final class JobRegistry: Sendable {
    private let jobs = Locked<[String: JobEntry]>([:])

    func add(_ e: JobEntry) { jobs.withLock { $0[e.id] = e } }

    /// The job `id` if `owner` may see it (same API key), else nil — another
    /// caller's job is indistinguishable from a missing one.
    func find(_ id: String, owner: String) -> JobEntry? {
        guard let e = jobs.withLock({ $0[id] }), e.owner == owner else { return nil }
        return e
    }

    func remove(_ id: String) { _ = jobs.withLock { $0.removeValue(forKey: id) } }

    /// Jobs currently registered (any state).
    var all: [JobEntry] { jobs.withLock { Array($0.values) } }

    var count: Int { jobs.withLock { $0.count } }
}
