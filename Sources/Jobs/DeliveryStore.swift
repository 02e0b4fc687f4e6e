import EventLoop
import JSON
import Locking

/// Where a job's callback goes.
public enum DeliveryTarget: Sendable, Equatable, Hashable {
    /// A registered endpoint (`Callback: <id>`): URL and secret are read from
    /// `CallbackEndpoints` at each attempt, so deleting or disabling it stops delivery.
    case endpoint(id: String)
    /// An ad-hoc `Callback-URL`, signed with the configured `callback_secret`.
    case url(String)
}

/// Where a delivery stands.
public enum DeliveryStatus: String, Sendable, Equatable, CaseIterable {
    /// Waiting for its next attempt, or an attempt is in flight.
    case pending
    /// A receiver answered 2xx.
    case delivered
    /// Dead-lettered: every attempt failed, the receiver answered `410 Gone`, or
    /// its endpoint was deleted or disabled. Can be redelivered.
    case failed
}

/// One job's callback delivery: the message and its progress. Plain data, so the
/// journal can persist it; `body` never changes after enqueueing.
public struct DeliveryRecord: Sendable, Equatable {
    /// The job whose result this is.
    public var jobID: String
    /// `webhook-id`: `msg_<job id>`, the same for every attempt and redelivery.
    public var webhookID: String
    /// The API key name of the job's caller.
    public var owner: String
    /// Where it goes.
    public var target: DeliveryTarget
    /// The JSON body POSTed (identical on every attempt).
    public var body: [UInt8]
    /// Where it stands.
    public var status: DeliveryStatus
    /// Attempts made since it was (re)enqueued.
    public var attempts: Int
    /// The last HTTP status a receiver answered; nil when no answer came.
    public var lastStatus: Int?
    /// Why the last attempt failed; nil before any failure.
    public var lastError: String?
    /// Wall-clock enqueue time, milliseconds since the Unix epoch.
    public var createdAt: Int64
    /// Wall-clock time of the last change, milliseconds since the Unix epoch.
    public var updatedAt: Int64
    /// Wall-clock time the next attempt is due (ms since the epoch); nil unless
    /// pending. After a restart, `CallbackDeliverer.resume` honours it.
    public var nextAttemptAt: Int64?

    /// A record with every field given (journal replay; new ones come from `CallbackDeliverer.enqueue`).
    public init(jobID: String, webhookID: String, owner: String, target: DeliveryTarget, body: [UInt8],
                status: DeliveryStatus = .pending, attempts: Int = 0, lastStatus: Int? = nil, lastError: String? = nil,
                createdAt: Int64, updatedAt: Int64, nextAttemptAt: Int64? = nil) {
        self.jobID = jobID
        self.webhookID = webhookID
        self.owner = owner
        self.target = target
        self.body = body
        self.status = status
        self.attempts = attempts
        self.lastStatus = lastStatus
        self.lastError = lastError
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.nextAttemptAt = nextAttemptAt
    }

    /// The `webhook-id` for a job: `msg_<job id>`.
    public static func webhookID(forJob jobID: String) -> String { "msg_" + jobID }

    /// The registered endpoint's id, when the target is one.
    public var endpointID: String? {
        if case .endpoint(let id) = target { return id }
        return nil
    }

    /// `{"job_id", "webhook_id", "attempts", "status", "last_status", "last_error"}`
    /// (SPEC §4 listing entry; `last_status`/`last_error` are null when unknown).
    public var listingJSON: JSON {
        var o = JSONObject()
        o["job_id"] = .string(jobID)
        o["webhook_id"] = .string(webhookID)
        o["attempts"] = .int(Int64(attempts))
        o["status"] = .string(status.rawValue)
        o["last_status"] = lastStatus.map { .int(Int64($0)) } ?? .null
        o["last_error"] = lastError.map { .string($0) } ?? .null
        return .object(o)
    }
}

/// One change to the delivery store, in order (for the journal).
public enum DeliveryChange: Sendable {
    /// A new delivery (body included).
    case enqueued(DeliveryRecord)
    /// Progress of an existing delivery; `body` is unchanged from `.enqueued`,
    /// so a journal may omit it.
    case updated(DeliveryRecord)
    /// Dropped by `sweep`.
    case removed(jobID: String)
}

/// Why `CallbackDeliverer.redeliver` refused.
public enum RedeliveryError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No delivery for that job of that caller's (the gateway answers `404`).
    case notFound
    /// It is still being delivered (`409`).
    case alreadyPending
    /// Its endpoint has been deleted (`409`/`410`).
    case endpointDeleted
    /// Its endpoint is disabled (`409`): re-enable it first.
    case endpointDisabled

    /// A one-line reason for a problem body's `detail`.
    public var description: String {
        switch self {
        case .notFound: return "no callback delivery for this job"
        case .alreadyPending: return "the callback is still being delivered"
        case .endpointDeleted: return "the callback endpoint was deleted"
        case .endpointDisabled: return "the callback endpoint is disabled"
        }
    }
}

/// Every callback delivery of this process, by job id (one per job), shared by
/// the per-loop `CallbackDeliverer`s. Thread-safe (one `Locked`), so listings
/// and redelivery work from any loop. Holds the counters for metrics.
public final class DeliveryStore: Sendable {
    private struct State {
        var byJob: [String: DeliveryRecord] = [:]
        var order: [String] = []
        var pending = 0
        var deadLettered = 0
    }
    private let state = Locked(State())
    private let onChange: (@Sendable (DeliveryChange) -> Void)?

    /// - Parameter onChange: called once per change, in order, while the store's
    ///   lock is held (the single place to hook the journal). Keep it short and
    ///   never call back into the store from it. `restore` does not call it.
    public init(onChange: (@Sendable (DeliveryChange) -> Void)? = nil) {
        self.onChange = onChange
    }

    /// The delivery of job `jobID`, whoever owns it.
    public func record(jobID: String) -> DeliveryRecord? { state.withLock { $0.byJob[jobID] } }

    /// The delivery of job `jobID` when `owner` owns it; nil otherwise.
    public func record(jobID: String, owner: String) -> DeliveryRecord? {
        guard let r = record(jobID: jobID), r.owner == owner else { return nil }
        return r
    }

    /// `owner`'s deliveries to endpoint `endpointID`, oldest first, optionally
    /// only those in `status`.
    public func deliveries(endpointID: String, owner: String, status: DeliveryStatus? = nil) -> [DeliveryRecord] {
        state.withLock { s in
            s.order.compactMap { s.byJob[$0] }.filter {
                $0.endpointID == endpointID && $0.owner == owner && (status == nil || $0.status == status)
            }
        }
    }

    /// `{"deliveries": [...]}` for `GET /callbacks/{id}/deliveries?status=…` (SPEC §4).
    public func listingJSON(endpointID: String, owner: String, status: DeliveryStatus? = nil) -> JSON {
        .object(["deliveries": .array(deliveries(endpointID: endpointID, owner: owner, status: status).map(\.listingJSON))])
    }

    /// Deliveries currently pending (`switchboard_callbacks_pending`).
    public var pendingCount: Int { state.withLock { $0.pending } }

    /// Deliveries dead-lettered since start (`switchboard_callbacks_dead_lettered_total`).
    public var deadLetteredTotal: Int { state.withLock { $0.deadLettered } }

    /// Every delivery, oldest first (compaction snapshots, restart).
    public var all: [DeliveryRecord] { state.withLock { s in s.order.compactMap { s.byJob[$0] } } }

    /// Puts records back as they were (journal replay), replacing any with the
    /// same job id; counts pending ones; does not call `onChange`. Then call
    /// `CallbackDeliverer.resume` for each pending one.
    public func restore(_ records: [DeliveryRecord]) {
        state.withLock { s in
            for r in records {
                if let old = s.byJob[r.jobID] {
                    if old.status == .pending { s.pending -= 1 }
                } else {
                    s.order.append(r.jobID)
                }
                s.byJob[r.jobID] = r
                if r.status == .pending { s.pending += 1 }
            }
        }
    }

    /// Drops finished deliveries last changed before the cutoffs (wall-clock ms
    /// since the epoch); pending ones are never dropped.
    /// - Returns: how many were dropped.
    @discardableResult
    public func sweep(deliveredBefore: Int64, failedBefore: Int64) -> Int {
        state.withLock { s in
            var dropped: Set<String> = []
            for (id, r) in s.byJob {
                if (r.status == .delivered && r.updatedAt < deliveredBefore) || (r.status == .failed && r.updatedAt < failedBefore) {
                    dropped.insert(id)
                }
            }
            guard !dropped.isEmpty else { return 0 }
            for id in dropped {
                s.byJob[id] = nil
                onChange?(.removed(jobID: id))
            }
            s.order.removeAll { dropped.contains($0) }
            return dropped.count
        }
    }

    // MARK: - Changes (used by CallbackDeliverer; each one reaches `onChange`)

    /// Adds `record` unless the job already has a delivery.
    /// - Returns: the stored record and whether it is new.
    func insert(_ record: DeliveryRecord) -> (DeliveryRecord, Bool) {
        state.withLock { s in
            if let old = s.byJob[record.jobID] { return (old, false) }
            s.byJob[record.jobID] = record
            s.order.append(record.jobID)
            if record.status == .pending { s.pending += 1 }
            if record.status == .failed { s.deadLettered += 1 }
            onChange?(.enqueued(record))
            return (record, true)
        }
    }

    /// Applies `change` to job `jobID`'s record, keeping the counters right.
    /// - Returns: the record after the change; nil when there is none or
    ///   `change` returned false (no change made).
    @discardableResult
    func update(_ jobID: String, now: Int64 = wallClockMilliseconds(), _ change: (inout DeliveryRecord) -> Bool) -> DeliveryRecord? {
        state.withLock { s in
            guard var r = s.byJob[jobID] else { return nil }
            let before = r.status
            guard change(&r) else { return nil }
            r.updatedAt = now
            if r.status != .pending { r.nextAttemptAt = nil }
            if before == .pending && r.status != .pending { s.pending -= 1 }
            if before != .pending && r.status == .pending { s.pending += 1 }
            if before != .failed && r.status == .failed { s.deadLettered += 1 }
            s.byJob[jobID] = r
            onChange?(.updated(r))
            return r
        }
    }
}
