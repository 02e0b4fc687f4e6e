import Crypto
import EventLoop
import JSON
import Locking

/// A registered callback endpoint (`POST /callbacks`): where a caller's job
/// results go when it sends `Callback: <id>`. Plain data, so the journal can
/// persist it as is.
public struct CallbackEndpoint: Sendable, Equatable {
    /// `cb_` followed by 32 hex digits (128 random bits).
    public var id: String
    /// The API key name of the caller that registered it ("" when the gateway runs open).
    public var owner: String
    /// The URL as registered (it passed the SSRF guard then; deliveries check it again).
    public var url: String
    /// This endpoint's signing secret, `whsec_<base64 of 32 random bytes>`.
    public var secret: String
    /// True once deliveries must stop (the receiver answered `410 Gone`).
    public var disabled: Bool
    /// Why it was disabled, for listings and logs; nil while enabled.
    public var disabledReason: String?
    /// Wall-clock registration time, milliseconds since the Unix epoch.
    public var createdAt: Int64

    /// An endpoint with every field given (journal replay; new ones come from `CallbackEndpoints.register`).
    public init(id: String, owner: String, url: String, secret: String, disabled: Bool = false,
                disabledReason: String? = nil, createdAt: Int64) {
        self.id = id
        self.owner = owner
        self.url = url
        self.secret = secret
        self.disabled = disabled
        self.disabledReason = disabledReason
        self.createdAt = createdAt
    }

    /// `{"id", "url", "secret"?, "disabled", "disabled_reason"?, "created_at"}`;
    /// `created_at` as an RFC 3339 UTC timestamp, as jobs show theirs. Show the secret only
    /// to its owner (`POST /callbacks` answers with it; listings may omit it).
    public func json(includingSecret: Bool) -> JSON {
        var o = JSONObject()
        o["id"] = .string(id)
        o["url"] = .string(url)
        if includingSecret { o["secret"] = .string(secret) }
        o["disabled"] = .bool(disabled)
        if let disabledReason { o["disabled_reason"] = .string(disabledReason) }
        o["created_at"] = .string(rfc3339Timestamp(createdAt))
        return .object(o)
    }
}

/// One change to the endpoint registry, in the order it happened (for the journal).
public enum CallbackEndpointChange: Sendable {
    /// A new endpoint.
    case registered(CallbackEndpoint)
    /// An endpoint's `disabled` state changed; the value is the endpoint after the change.
    case updated(CallbackEndpoint)
    /// An endpoint was deleted.
    case deleted(id: String)
}

/// All callback endpoints, by id. Thread-safe (one `Locked`): any loop may read
/// or change it; every operation is short and does no I/O.
///
/// Callers see only their own endpoints: the `owner` argument is the caller's
/// API key name, and another owner's endpoint is reported as missing.
public final class CallbackEndpoints: Sendable {
    private struct State {
        var byID: [String: CallbackEndpoint] = [:]
        var order: [String] = []
        /// Endpoints whose deletion is being recorded: still listed and delivered to,
        /// not deleted again. The value is true when `setDisabled` changed the endpoint
        /// meanwhile (that change is recorded only if the deletion fails).
        var deleting: [String: Bool] = [:]
    }
    private let state = Locked(State())
    private let onChange: (@Sendable (CallbackEndpointChange, _ recorded: (@Sendable (Bool) -> Void)?) -> Void)?

    /// - Parameter onChange: called once per change, in order, while the
    ///   registry's lock is held (so the order is the order of changes). Keep it
    ///   short (e.g. append to the journal's queue) and never call back into the
    ///   registry from it. Replays via `restore` do not call it. Its second
    ///   argument, when not nil, is the `recorded` callback the change's caller
    ///   passed (`register`), or the registry's own (`delete`, always given: the
    ///   endpoint goes only when it reports true): call it once, from any thread,
    ///   with whether the change was recorded (e.g. is durable in the journal).
    public init(onChange: (@Sendable (CallbackEndpointChange, _ recorded: (@Sendable (Bool) -> Void)?) -> Void)? = nil) {
        self.onChange = onChange
    }

    /// Whether `id` has the shape of an endpoint id (`cb_` + 32 lowercase hex
    /// digits), so malformed ids can be answered `400` without a lookup.
    public static func isWellFormedID(_ id: String) -> Bool {
        let u = Array(id.utf8)
        guard u.count == 35, id.hasPrefix("cb_") else { return false }
        return u[3...].allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }
    }

    /// Registers a vetted target for `owner` with a fresh id and a fresh
    /// `whsec_` secret. Taking a `CallbackTarget` (not a string) means the URL
    /// has passed the SSRF guard; vet it off the loop first (`AddressPolicy.vet`).
    /// - Parameters:
    ///   - now: wall-clock milliseconds since the Unix epoch (for tests).
    ///   - recorded: handed to `onChange` with the change, to learn whether it was
    ///     recorded (answer the caller only then). Without an `onChange` it is
    ///     called at once with true.
    /// - Returns: the new endpoint, secret included (show it to the caller once).
    public func register(_ target: CallbackTarget, owner: String, now: Int64 = wallClockMilliseconds(),
                         recorded: (@Sendable (Bool) -> Void)? = nil) -> CallbackEndpoint {
        let e = CallbackEndpoint(id: "cb_" + Crypto.hex(Crypto.randomBytes(16)), owner: owner, url: target.url.text,
                                 secret: WebhookSignature.newSecret(), createdAt: now)
        state.withLock { s in
            s.byID[e.id] = e
            s.order.append(e.id)
            onChange?(.registered(e), recorded)
        }
        if onChange == nil { recorded?(true) }
        return e
    }

    /// `owner`'s endpoints, oldest first.
    public func list(owner: String) -> [CallbackEndpoint] {
        state.withLock { s in s.order.compactMap { s.byID[$0] }.filter { $0.owner == owner } }
    }

    /// The endpoint `id` when `owner` registered it; nil when missing or another's.
    public func find(_ id: String, owner: String) -> CallbackEndpoint? {
        guard let e = endpoint(id: id), e.owner == owner else { return nil }
        return e
    }

    /// The endpoint `id` whoever owns it (for delivery, not for answering callers).
    public func endpoint(id: String) -> CallbackEndpoint? {
        state.withLock { $0.byID[id] }
    }

    /// Deletes `owner`'s endpoint `id` once the deletion is recorded: until
    /// `onChange`'s `recorded` reports true, the endpoint stays listed, found and
    /// delivered to (so a deletion that cannot be recorded changes nothing); when it
    /// reports false the endpoint stays as it was, in its place in `list`. Without
    /// an `onChange` the deletion takes effect at once. Pending deliveries to it are
    /// dead-lettered at their next attempt (or at once with
    /// `CallbackDeliverer.endpointDeleted`, after `recorded` reports true).
    /// - Parameter recorded: called once with whether the deletion was recorded
    ///   (on whatever thread `onChange`'s callback runs; the registry is already
    ///   updated when it runs); not called when this returns false.
    /// - Returns: false when there is no such endpoint of `owner`'s, or when a
    ///   deletion of it is already being recorded (that one decides its fate; use
    ///   `startDeletion` to tell the two apart).
    @discardableResult
    public func delete(_ id: String, owner: String, recorded: (@Sendable (Bool) -> Void)? = nil) -> Bool {
        startDeletion(id, owner: owner, recorded: recorded) == .started
    }

    /// What `startDeletion` did.
    public enum DeletionStart: Sendable, Equatable {
        /// The deletion is being recorded; `recorded` will be called once.
        case started
        /// No such endpoint of the caller's (missing, or another owner's).
        case missing
        /// A deletion of this endpoint is already being recorded and decides its
        /// fate: the endpoint may still survive it (when that write fails).
        case inProgress
    }

    /// `delete`, telling why a deletion did not start: `recorded` is called (once)
    /// only when this returns `.started`. Same semantics and threading as `delete`.
    public func startDeletion(_ id: String, owner: String, recorded: (@Sendable (Bool) -> Void)? = nil) -> DeletionStart {
        // The change's callback may run before `onChange` returns (a closed journal
        // answers on the calling thread), with the lock still held: then the outcome
        // is handed back here and applied before the lock is released.
        let early = Locked<(waiting: Bool, outcome: Bool?)>((true, nil))
        let (started, earlyOutcome) = state.withLock { s -> (DeletionStart, Bool?) in
            guard let e = s.byID[id], e.owner == owner else { return (.missing, nil) }
            guard s.deleting[id] == nil else { return (.inProgress, nil) }
            guard let onChange else {
                s.byID[id] = nil
                s.order.removeAll { $0 == id }
                return (.started, true)
            }
            s.deleting[id] = false
            onChange(.deleted(id: id)) { [self] ok in
                let handedBack = early.withLock { h -> Bool in
                    guard h.waiting else { return false }
                    h.outcome = ok
                    return true
                }
                guard !handedBack else { return }
                state.withLock { s in finishDeletion(id, recorded: ok, &s) }
                recorded?(ok)
            }
            let outcome = early.withLock { h -> Bool? in
                h.waiting = false
                return h.outcome
            }
            if let outcome { finishDeletion(id, recorded: outcome, &s) }
            return (.started, outcome)
        }
        if let earlyOutcome { recorded?(earlyOutcome) }
        return started
    }

    /// Ends the deletion of `id` that `delete` started: removes the endpoint when the
    /// deletion was recorded; otherwise keeps it and records a `setDisabled` change
    /// made meanwhile (held back so no change of it could follow its deletion in the
    /// journal). Under the lock.
    private func finishDeletion(_ id: String, recorded: Bool, _ s: inout State) {
        guard let changed = s.deleting.removeValue(forKey: id) else { return }
        if recorded {
            s.byID[id] = nil
            s.order.removeAll { $0 == id }
        } else if changed, let e = s.byID[id] {
            onChange?(.updated(e), nil)
        }
    }

    /// Takes back a `register` whose change could not be recorded: the endpoint is
    /// removed without calling `onChange` (nothing of it was recorded).
    public func unregister(_ id: String) {
        state.withLock { s in
            guard s.byID.removeValue(forKey: id) != nil else { return }
            s.order.removeAll { $0 == id }
        }
    }

    /// Disables (`reason` kept) or re-enables endpoint `id`, whoever owns it.
    /// The deliverer disables an endpoint that answers `410 Gone`. While the
    /// endpoint's deletion is being recorded the change is held back (see `delete`).
    /// - Returns: the endpoint after the change; nil when there is no such endpoint.
    @discardableResult
    public func setDisabled(_ id: String, _ disabled: Bool, reason: String? = nil) -> CallbackEndpoint? {
        state.withLock { s in
            guard var e = s.byID[id] else { return nil }
            if e.disabled == disabled && (!disabled || e.disabledReason == reason) { return e }
            e.disabled = disabled
            e.disabledReason = disabled ? reason : nil
            s.byID[id] = e
            if s.deleting[id] != nil { s.deleting[id] = true } else { onChange?(.updated(e), nil) }
            return e
        }
    }

    /// Puts endpoints back as they were (journal replay); replaces any with the
    /// same id; does not call `onChange`.
    public func restore(_ endpoints: [CallbackEndpoint]) {
        state.withLock { s in
            for e in endpoints {
                if s.byID[e.id] == nil { s.order.append(e.id) }
                s.byID[e.id] = e
            }
        }
    }

    /// Every endpoint of every owner, oldest first (for compaction snapshots).
    public var all: [CallbackEndpoint] {
        state.withLock { s in s.order.compactMap { s.byID[$0] } }
    }

    /// Number of registered endpoints.
    public var count: Int { state.withLock { $0.byID.count } }
}
