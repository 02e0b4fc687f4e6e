import Crypto
import EventLoop
import Upstream

/// How callbacks are delivered (SPEC §4). Value type, safe from any thread.
public struct DeliveryOptions: Sendable {
    /// SPEC §4 default: at once, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    public static let defaultSchedule: [Duration] = [
        .zero, .seconds(5), .seconds(300), .seconds(1800), .seconds(7200), .seconds(18_000), .seconds(36_000), .seconds(36_000),
    ]

    /// One entry per attempt: the delay before that attempt (the first entry is
    /// the delay before the first attempt). Its count is the number of attempts;
    /// after the last one fails the delivery is dead-lettered. Must not be
    /// empty. Default: `defaultSchedule` (config `callback_retry`).
    public var schedule: [Duration]
    /// Longest one attempt may take once the address is resolved, from sending
    /// to the whole answer read. Default: 15 s.
    public var attemptTimeout: Duration
    /// Longest time to connect (TCP and TLS), within `attemptTimeout`. Default: 5 s.
    public var connectTimeout: Duration
    /// Jitter as a fraction of each delay: the delay is multiplied by a uniform
    /// random factor in `1 - jitter ... 1 + jitter` (never negative; a zero
    /// delay stays zero). Default: 0.2 (±20 %). Clamped to 0...1.
    public var jitter: Double
    /// Largest receiver answer body read, in bytes; a larger one fails the
    /// attempt. Default: 64 KiB.
    public var maxResponseBytes: Int
    /// The `user-agent` sent. Default: `Switchboard-Webhooks/1`.
    public var userAgent: String

    /// Options with SPEC §4 defaults; each parameter overrides one (see the properties).
    /// Traps when `schedule` is empty.
    public init(schedule: [Duration] = DeliveryOptions.defaultSchedule, attemptTimeout: Duration = .seconds(15),
                connectTimeout: Duration = .seconds(5), jitter: Double = 0.2, maxResponseBytes: Int = 64 * 1024,
                userAgent: String = "Switchboard-Webhooks/1") {
        precondition(!schedule.isEmpty, "a delivery schedule needs at least one attempt")
        self.schedule = schedule
        self.attemptTimeout = attemptTimeout
        self.connectTimeout = connectTimeout
        self.jitter = min(1, max(0, jitter))
        self.maxResponseBytes = maxResponseBytes
        self.userAgent = userAgent
    }

    /// The jittered delay before attempt `index` (0-based); `.zero` past the schedule.
    public func delay(beforeAttempt index: Int) -> Duration {
        guard index >= 0, index < schedule.count else { return .zero }
        let base = schedule[index]
        guard base > .zero, jitter > 0 else { return max(.zero, base) }
        let factor = Double.random(in: (1 - jitter)...(1 + jitter))
        let ns = Double(base.nanosecondsClamped) * factor
        return .nanoseconds(Int64(max(0, min(ns, Double(Int64.max / 2)))))
    }
}

/// Something that happened to a delivery, reported on the deliverer's loop
/// (for logs and metrics; the store's `onChange` is the place for the journal).
public enum DeliveryEvent: Sendable {
    /// A receiver answered 2xx.
    case delivered(DeliveryRecord)
    /// An attempt failed; the next one is due after `retryIn`.
    case attemptFailed(DeliveryRecord, retryIn: Duration)
    /// No more attempts: the delivery is listed as failed.
    case deadLettered(DeliveryRecord)
    /// The receiver answered `410 Gone`: endpoint `endpointID` is now disabled
    /// (followed by `.deadLettered` for this delivery).
    case endpointDisabled(endpointID: String, DeliveryRecord)
}

/// Delivers job results to callback URLs, signed per Standard Webhooks, with
/// retries — one per event loop, on that loop's `UpstreamClient`.
///
/// Each attempt: look up the endpoint (deleted or disabled → dead-lettered),
/// re-run the SSRF guard on a background queue (resolution blocks; the result
/// hops back with `EventLoop.execute`), then POST the body through the loop's
/// libcurl multi client to exactly the checked addresses (`CURLOPT_RESOLVE`)
/// with `webhook-id` (stable), `webhook-timestamp` (Unix seconds, per attempt),
/// `webhook-signature: v1,<base64 HMAC-SHA256("id.timestamp.body")>` and
/// `content-type: application/json`. Success is 2xx. 3xx is a failure (curl never
/// follows redirects here); `410 Gone` disables the endpoint and dead-letters
/// the delivery; anything else (other status, timeout, connection error,
/// refused address) is retried per `DeliveryOptions.schedule` with jitter, then
/// dead-lettered. A slow receiver only occupies its own transfer.
///
/// Create it anywhere; every method, the timers and `onEvent` run on
/// `client.loop`'s thread ("loop thread only"). Records live in the shared
/// `DeliveryStore`, so any loop's deliverer can redeliver any finished one.
public final class CallbackDeliverer: @unchecked Sendable {
    /// The loop it runs on (`client.loop`).
    public let loop: EventLoop
    /// The shared store of records.
    public let store: DeliveryStore
    /// The shared endpoint registry.
    public let endpoints: CallbackEndpoints
    /// The SSRF policy checked at each attempt.
    public let policy: AddressPolicy
    /// Schedule, timeouts, jitter.
    public let options: DeliveryOptions
    /// Called on the loop thread for each `DeliveryEvent`. Default: nil.
    public var onEvent: ((DeliveryEvent) -> Void)?

    private let client: UpstreamClient
    private let defaultKey: [UInt8]
    private let resolver: HostResolver

    /// Loop-local handle on a delivery this deliverer is working on. Touched only
    /// on the loop; it crosses to the resolver queue and back untouched.
    private final class Active: @unchecked Sendable {
        /// The registered endpoint the delivery goes to; nil for a `Callback-URL`.
        let endpointID: String?
        var timer: LoopTimer?
        var transfer: UpstreamTransfer?
        init(endpointID: String?) { self.endpointID = endpointID }
    }
    private var active: [String: Active] = [:]

    /// - Parameters:
    ///   - client: the loop's upstream client; deliveries run on `client.loop`.
    ///   - store: the process-wide delivery store.
    ///   - endpoints: the process-wide endpoint registry.
    ///   - policy: the SSRF policy (`callback_allow`).
    ///   - secret: `callback_secret` (`whsec_…`), which signs ad-hoc `Callback-URL`
    ///     deliveries; traps when it is not a valid `whsec_` secret (the config
    ///     loader validates it first).
    ///   - options: schedule and timeouts. Default: SPEC §4 defaults.
    ///   - resolver: host resolution for the guard. Default: `getaddrinfo`, run
    ///     on a background queue.
    public init(client: UpstreamClient, store: DeliveryStore, endpoints: CallbackEndpoints, policy: AddressPolicy,
                secret: String, options: DeliveryOptions = DeliveryOptions(), resolver: HostResolver = .system) {
        guard let key = WebhookSignature.key(fromSecret: secret), !key.isEmpty else {
            preconditionFailure("callback secret must be whsec_<base64>")
        }
        self.client = client
        self.loop = client.loop
        self.store = store
        self.endpoints = endpoints
        self.policy = policy
        self.options = options
        self.defaultKey = key
        self.resolver = resolver
    }

    /// Deliveries this deliverer is waiting on or sending now. Loop thread only.
    public var activeCount: Int { active.count }

    /// Starts delivering job `jobID`'s result: records it (status `pending`) and
    /// makes the first attempt after `schedule[0]`. A job that already has a
    /// delivery is not enqueued twice: its existing record is returned.
    /// Loop thread only.
    /// - Parameters:
    ///   - owner: the API key name of the job's caller.
    ///   - body: the JSON callback body (SPEC §4), sent unchanged on every attempt.
    @discardableResult
    public func enqueue(jobID: String, owner: String, target: DeliveryTarget, body: [UInt8]) -> DeliveryRecord {
        let now = wallClockMilliseconds()
        let delay = options.delay(beforeAttempt: 0)
        let rec = DeliveryRecord(jobID: jobID, webhookID: DeliveryRecord.webhookID(forJob: jobID), owner: owner,
                                 target: target, body: body, createdAt: now, updatedAt: now,
                                 nextAttemptAt: now + delay.milliseconds)
        let (stored, isNew) = store.insert(rec)
        if isNew { schedule(jobID, after: delay, endpointID: stored.endpointID) }
        return stored
    }

    /// Sends a finished (dead-lettered or delivered) delivery again: attempts
    /// start over from zero with the first attempt at once, then the schedule;
    /// same `webhook-id` and body. Loop thread only (any loop's deliverer).
    /// - Returns: the record, now pending, or why it cannot be redelivered.
    public func redeliver(jobID: String, owner: String) -> Result<DeliveryRecord, RedeliveryError> {
        guard let rec = store.record(jobID: jobID, owner: owner) else { return .failure(.notFound) }
        if rec.status == .pending { return .failure(.alreadyPending) }
        if let id = rec.endpointID {
            guard let ep = endpoints.endpoint(id: id) else { return .failure(.endpointDeleted) }
            if ep.disabled { return .failure(.endpointDisabled) }
        }
        var raced = false
        let now = wallClockMilliseconds()
        let updated = store.update(jobID, now: now) { r in
            guard r.status != .pending else { raced = true; return false }
            r.status = .pending
            r.attempts = 0
            r.nextAttemptAt = now
            return true
        }
        guard let updated else { return .failure(raced ? .alreadyPending : .notFound) }
        schedule(jobID, after: .zero, endpointID: updated.endpointID)
        return .success(updated)
    }

    /// Stops this deliverer's work for endpoint `endpointID`, which was just
    /// deleted, and dead-letters at once every pending delivery of `owner`'s to it:
    /// `last_error` "callback endpoint was deleted", no further attempt (it would only
    /// find the endpoint gone — after waiting out its retry delay, up to hours,
    /// counted as pending all that time). Scans the whole shared store (under its
    /// lock), so call it on one loop's deliverer per deletion, and
    /// `cancelAttempts(toEndpoint:)` on every other loop's: records no longer pending
    /// are left as they are. Its own timers and transfers to the endpoint are
    /// cancelled whatever their record's status. A request already sent may still
    /// reach the receiver. Reports `.deadLettered` for each record it dead-letters.
    /// Loop thread only.
    /// - Returns: how many deliveries this call dead-lettered.
    @discardableResult
    public func endpointDeleted(_ endpointID: String, owner: String) -> Int {
        cancelAttempts(toEndpoint: endpointID)
        var count = 0
        for rec in store.deliveries(endpointID: endpointID, owner: owner, status: .pending) {
            let r = store.update(rec.jobID) { r in
                guard r.status == .pending else { return false }
                r.status = .failed
                r.lastError = "callback endpoint was deleted"
                return true
            }
            if let r {
                count += 1
                onEvent?(.deadLettered(r))
            }
        }
        return count
    }

    /// Cancels this deliverer's timers and transfers to endpoint `endpointID` (just
    /// deleted), found in its own table of active deliveries: no store access, no
    /// record changed (`endpointDeleted`, run on one loop, dead-letters them). A
    /// request already sent may still reach the receiver. Loop thread only.
    /// - Returns: how many deliveries it stopped working on.
    @discardableResult
    public func cancelAttempts(toEndpoint endpointID: String) -> Int {
        var count = 0
        for (jobID, a) in active where a.endpointID == endpointID {
            active[jobID] = nil
            loop.cancel(a.timer)
            a.transfer?.cancel()
            count += 1
        }
        return count
    }

    /// Picks up a pending delivery restored from the journal: its next attempt
    /// runs at `nextAttemptAt` (at once when that has passed or is unknown).
    /// Records that are not pending, or already active here, are ignored.
    /// Loop thread only.
    public func resume(jobID: String) {
        guard active[jobID] == nil, let rec = store.record(jobID: jobID), rec.status == .pending else { return }
        let wait = max(0, (rec.nextAttemptAt ?? 0) - wallClockMilliseconds())
        schedule(jobID, after: .milliseconds(wait), endpointID: rec.endpointID)
    }

    /// Stops every timer and transfer of this deliverer (shutdown). Records stay
    /// pending in the store, to be resumed after a restart. Loop thread only, or
    /// after the loop has stopped (`Gateway.shutdown`).
    public func cancelAll() {
        for (_, a) in active {
            loop.cancel(a.timer)
            a.transfer?.cancel()
        }
        active.removeAll()
    }

    // MARK: - Attempts (loop thread)

    private func schedule(_ jobID: String, after delay: Duration, endpointID: String?) {
        if let old = active[jobID] {
            loop.cancel(old.timer)
            old.transfer?.cancel()
        }
        let a = Active(endpointID: endpointID)
        active[jobID] = a
        a.timer = loop.schedule(at: loop.now + delay) { [self] in
            a.timer = nil
            self.startAttempt(jobID, a)
        }
    }

    private func startAttempt(_ jobID: String, _ a: Active) {
        guard active[jobID] === a else { return }
        guard let rec = store.record(jobID: jobID), rec.status == .pending else {
            active[jobID] = nil
            return
        }
        let url: String
        let key: [UInt8]
        switch rec.target {
        case .url(let u):
            url = u
            key = defaultKey
        case .endpoint(let id):
            guard let ep = endpoints.endpoint(id: id) else {
                return finish(jobID, a, status: nil, error: "callback endpoint was deleted", final: true)
            }
            guard !ep.disabled else {
                return finish(jobID, a, status: nil, error: "callback endpoint is disabled", final: true)
            }
            guard let k = WebhookSignature.key(fromSecret: ep.secret) else {
                return finish(jobID, a, status: nil, error: "callback endpoint has no valid secret", final: true)
            }
            url = ep.url
            key = k
        }
        let loop = self.loop
        policy.vetAsync(url, resolver: resolver) { [self] result in
            loop.execute { self.vetted(jobID, a, result, key: key, webhookID: rec.webhookID, body: rec.body) }
        }
    }

    private func vetted(_ jobID: String, _ a: Active, _ result: Result<CallbackTarget, CallbackTargetError>,
                        key: [UInt8], webhookID: String, body: [UInt8]) {
        guard active[jobID] === a else { return }
        let target: CallbackTarget
        switch result {
        case .failure(let e): return finish(jobID, a, status: nil, error: e.description, final: false)
        case .success(let t): target = t
        }
        let timestamp = wallClockMilliseconds() / 1000
        let signature = WebhookSignature.sign(secret: key, id: webhookID, timestamp: timestamp, body: body)
        let request = UpstreamRequest(
            method: "POST", url: target.url.text,
            headers: [("content-type", "application/json"), ("webhook-id", webhookID),
                      ("webhook-timestamp", String(timestamp)), ("webhook-signature", signature),
                      ("user-agent", options.userAgent)],
            body: body, deadline: loop.now + options.attemptTimeout, connectTimeout: options.connectTimeout,
            maxBodyBytes: options.maxResponseBytes, resolve: target.resolve)
        // Weak: a transfer still in flight when the deliverer goes away (shutdown) must
        // not keep it — and through it the client that would cancel the transfer — alive.
        a.transfer = client.send(request) { [weak self] r in
            a.transfer = nil
            self?.answered(jobID, a, r)
        }
    }

    private func answered(_ jobID: String, _ a: Active, _ result: UpstreamResult) {
        guard active[jobID] === a else { return }
        switch result {
        case .success(let resp) where (200...299).contains(resp.status):
            active[jobID] = nil
            let r = store.update(jobID) { r in
                guard r.status == .pending else { return false }
                r.status = .delivered
                r.attempts += 1
                r.lastStatus = resp.status
                r.lastError = nil
                return true
            }
            if let r { onEvent?(.delivered(r)) }
        case .success(let resp) where resp.status == 410:
            let rec = store.record(jobID: jobID)
            if let id = rec?.endpointID, endpoints.setDisabled(id, true, reason: "receiver answered 410 Gone") != nil, var rec {
                // The record as `finish` below leaves it: this attempt counted, its answer kept.
                rec.attempts += 1
                rec.lastStatus = 410
                rec.lastError = "receiver answered 410 Gone"
                onEvent?(.endpointDisabled(endpointID: id, rec))
            }
            finish(jobID, a, status: 410, error: "receiver answered 410 Gone", final: true)
        case .success(let resp) where (300...399).contains(resp.status):
            finish(jobID, a, status: resp.status, error: "HTTP \(resp.status) (redirects are not followed)", final: false)
        case .success(let resp):
            finish(jobID, a, status: resp.status, error: "HTTP \(resp.status)", final: false)
        case .failure(let f):
            finish(jobID, a, status: nil, error: f.description, final: false)
        }
    }

    /// Records a failed attempt, then schedules the next one or dead-letters.
    private func finish(_ jobID: String, _ a: Active, status: Int?, error: String, final: Bool) {
        guard active[jobID] === a else { return }
        var retryIn: Duration? = nil
        let now = wallClockMilliseconds()
        let r = store.update(jobID, now: now) { r in
            guard r.status == .pending else { return false }
            r.attempts += 1
            r.lastStatus = status
            r.lastError = error
            if !final && r.attempts < options.schedule.count {
                let d = options.delay(beforeAttempt: r.attempts)
                retryIn = d
                r.nextAttemptAt = now + d.milliseconds
            } else {
                r.status = .failed
            }
            return true
        }
        guard let r else {
            active[jobID] = nil
            return
        }
        if let retryIn {
            onEvent?(.attemptFailed(r, retryIn: retryIn))
            schedule(jobID, after: retryIn, endpointID: r.endpointID)
        } else {
            active[jobID] = nil
            onEvent?(.deadLettered(r))
        }
    }
}
