/// Histogram bucket upper bounds in seconds, suited to a gateway: sub-millisecond
/// to a minute.
let durationBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]

/// A cumulative-on-render histogram: per-bucket counts (non-cumulative while
/// observing), the sum and the count.
struct Histogram: Sendable {
    var counts = [UInt64](repeating: 0, count: durationBuckets.count + 1)  // last = +Inf
    var sum = 0.0
    var count: UInt64 = 0

    mutating func observe(_ seconds: Double) {
        var i = 0
        while i < durationBuckets.count && seconds > durationBuckets[i] { i += 1 }
        counts[i] &+= 1
        sum += seconds
        count &+= 1
    }

    mutating func merge(_ o: Histogram) {
        for i in counts.indices { counts[i] &+= o.counts[i] }
        sum += o.sum
        count &+= o.count
    }
}

struct RequestKey: Hashable, Sendable {
    var route: String
    var outcome: String
    var status: Int

    static func == (a: RequestKey, b: RequestKey) -> Bool {
        a.status == b.status && a.route == b.route && a.outcome == b.outcome
    }
}

struct StepKey: Hashable, Sendable {
    var route: String
    var step: String
}

struct UpstreamErrorKey: Hashable, Sendable {
    var route: String
    var step: String
    var kind: String
}

/// Values by key in insertion order, found by a linear scan while there are few
/// keys (the common case: a handful of routes — comparing short strings that
/// usually share storage is cheaper than hashing them) and by a hash index beyond.
struct SlotMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private(set) var keys: [Key] = []
    var values: [Value] = []
    private var index: [Key: Int] = [:]
    private static var scanLimit: Int { 16 }

    /// The slot of `key`, created with `initial` when new.
    @inline(__always)
    mutating func slot(_ key: Key, _ initial: @autoclosure () -> Value) -> Int {
        if keys.count <= Self.scanLimit {
            var i = 0
            while i < keys.count {
                if keys[i] == key { return i }
                i += 1
            }
        } else if let i = index[key] {
            return i
        }
        keys.append(key)
        values.append(initial())
        index[key] = keys.count - 1
        return keys.count - 1
    }

    /// As a dictionary (for rendering).
    var dictionary: [Key: Value] {
        var d: [Key: Value] = [:]
        d.reserveCapacity(keys.count)
        for i in keys.indices { d[keys[i]] = values[i] }
        return d
    }
}

/// One event loop's counters. Each loop mutates its own copy without locks;
/// a scrape copies every loop's value (on that loop) and merges them, so the
/// request path takes no lock and shares no cache line.
struct MetricsSnapshot: Sendable {
    private var requestSlots = SlotMap<RequestKey, UInt64>()
    private var requestDurationSlots = SlotMap<String, Histogram>()
    private var stepDurationSlots = SlotMap<StepKey, Histogram>()
    private var upstreamErrorSlots = SlotMap<UpstreamErrorKey, UInt64>()

    var requests: [RequestKey: UInt64] { requestSlots.dictionary }
    var requestDurations: [String: Histogram] { requestDurationSlots.dictionary }
    var stepDurations: [StepKey: Histogram] { stepDurationSlots.dictionary }
    var upstreamErrors: [UpstreamErrorKey: UInt64] { upstreamErrorSlots.dictionary }

    /// Counts one answered request. `route` is "" when no route matched.
    mutating func request(route: String, outcome: String, status: Int, seconds: Double) {
        let i = requestSlots.slot(RequestKey(route: route, outcome: outcome, status: status), 0)
        requestSlots.values[i] &+= 1
        if !route.isEmpty {
            let h = requestDurationSlots.slot(route, Histogram())
            requestDurationSlots.values[h].observe(seconds)
        }
    }

    /// Observes one step's duration.
    mutating func step(route: String, step: String, seconds: Double) {
        let i = stepDurationSlots.slot(StepKey(route: route, step: step), Histogram())
        stepDurationSlots.values[i].observe(seconds)
    }

    /// Counts one step's final upstream failure.
    mutating func upstreamError(route: String, step: String, kind: String) {
        let i = upstreamErrorSlots.slot(UpstreamErrorKey(route: route, step: step, kind: kind), 0)
        upstreamErrorSlots.values[i] &+= 1
    }

    mutating func merge(_ o: MetricsSnapshot) {
        for (k, v) in zip(o.requestSlots.keys, o.requestSlots.values) { requestSlots.values[requestSlots.slot(k, 0)] &+= v }
        for (k, v) in zip(o.requestDurationSlots.keys, o.requestDurationSlots.values) {
            requestDurationSlots.values[requestDurationSlots.slot(k, Histogram())].merge(v)
        }
        for (k, v) in zip(o.stepDurationSlots.keys, o.stepDurationSlots.values) {
            stepDurationSlots.values[stepDurationSlots.slot(k, Histogram())].merge(v)
        }
        for (k, v) in zip(o.upstreamErrorSlots.keys, o.upstreamErrorSlots.values) {
            upstreamErrorSlots.values[upstreamErrorSlots.slot(k, 0)] &+= v
        }
    }
}

/// Gauges read at scrape time.
struct Gauges: Sendable {
    var connectionsOpen = 0
    var jobsRunning = 0
    var callbacksPending = 0
    var journalBytes = 0
    var callbacksDeadLettered: UInt64 = 0
}

/// Renders the Prometheus text exposition format, version 0.0.4.
enum PrometheusText {
    /// Escapes a label value: backslash, double quote and line feed.
    static func escape(_ v: String) -> String {
        var out = ""
        for c in v {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            default: out.append(c)
            }
        }
        return out
    }

    static func labels(_ pairs: [(String, String)]) -> String {
        "{" + pairs.map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: ",") + "}"
    }

    static func number(_ d: Double) -> String {
        if d == d.rounded() && abs(d) < 1e15 { return String(Int64(d)) }
        return "\(d)"
    }

    static func histogram(_ out: inout String, _ name: String, _ base: [(String, String)], _ h: Histogram) {
        var cumulative: UInt64 = 0
        for (i, bound) in durationBuckets.enumerated() {
            cumulative &+= h.counts[i]
            out += "\(name)_bucket\(labels(base + [("le", number(bound))])) \(cumulative)\n"
        }
        cumulative &+= h.counts[durationBuckets.count]
        out += "\(name)_bucket\(labels(base + [("le", "+Inf")])) \(cumulative)\n"
        out += "\(name)_sum\(base.isEmpty ? "" : labels(base)) \(h.sum)\n"
        out += "\(name)_count\(base.isEmpty ? "" : labels(base)) \(h.count)\n"
    }

    /// The whole exposition, families in a fixed order, series sorted by labels.
    static func render(_ m: MetricsSnapshot, _ g: Gauges) -> String {
        var out = ""
        out += "# HELP switchboard_requests_total Requests answered, by route, outcome (sync, async, error) and status.\n"
        out += "# TYPE switchboard_requests_total counter\n"
        for (k, v) in m.requests.sorted(by: { ($0.key.route, $0.key.outcome, $0.key.status) < ($1.key.route, $1.key.outcome, $1.key.status) }) {
            out += "switchboard_requests_total\(labels([("route", k.route), ("outcome", k.outcome), ("status", String(k.status))])) \(v)\n"
        }
        out += "# HELP switchboard_request_duration_seconds Time from request to answer (the 202 for async), by route.\n"
        out += "# TYPE switchboard_request_duration_seconds histogram\n"
        for (route, h) in m.requestDurations.sorted(by: { $0.key < $1.key }) {
            histogram(&out, "switchboard_request_duration_seconds", [("route", route)], h)
        }
        out += "# HELP switchboard_step_duration_seconds Time from a step's first attempt to its end, by route and step.\n"
        out += "# TYPE switchboard_step_duration_seconds histogram\n"
        for (k, h) in m.stepDurations.sorted(by: { ($0.key.route, $0.key.step) < ($1.key.route, $1.key.step) }) {
            histogram(&out, "switchboard_step_duration_seconds", [("route", k.route), ("step", k.step)], h)
        }
        out += "# HELP switchboard_upstream_errors_total Failed step attempts' final failures, by route, step and kind.\n"
        out += "# TYPE switchboard_upstream_errors_total counter\n"
        for (k, v) in m.upstreamErrors.sorted(by: { ($0.key.route, $0.key.step, $0.key.kind) < ($1.key.route, $1.key.step, $1.key.kind) }) {
            out += "switchboard_upstream_errors_total\(labels([("route", k.route), ("step", k.step), ("kind", k.kind)])) \(v)\n"
        }
        func gauge(_ name: String, _ help: String, _ v: Int) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) gauge\n\(name) \(v)\n"
        }
        gauge("switchboard_connections_open", "Client connections currently open.", g.connectionsOpen)
        gauge("switchboard_jobs_running", "Async jobs whose run has not finished.", g.jobsRunning)
        gauge("switchboard_callbacks_pending", "Callback deliveries waiting to succeed.", g.callbacksPending)
        gauge("switchboard_journal_bytes", "Bytes in the journal's segment files.", g.journalBytes)
        out += "# HELP switchboard_callbacks_dead_lettered_total Callback deliveries that exhausted their retries.\n"
        out += "# TYPE switchboard_callbacks_dead_lettered_total counter\n"
        out += "switchboard_callbacks_dead_lettered_total \(g.callbacksDeadLettered)\n"
        return out
    }
}
