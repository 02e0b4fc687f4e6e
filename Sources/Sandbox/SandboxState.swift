import JSON

/// A response remembered under an `Idempotency-Key`, replayed as is.
struct StoredReply {
    var status: Int
    var body: JSON
}

/// Everything the sandbox remembers between requests. Guarded by the `Locked` in
/// `SandboxCore`; every access is one short critical section.
struct SandboxState {
    /// Requests per endpoint label (`"POST /payments"`), not counting `/_stats` and `/_reset`.
    var requests: [String: Int] = [:]
    /// Charges by id (`pay_…`), succeeded and declined alike.
    var charges: [String: StoredReply] = [:]
    /// Charge ids in creation order.
    var chargeOrder: [String] = []
    /// The first answer given for each `Idempotency-Key` of `POST /payments`.
    var idempotent: [String: StoredReply] = [:]
    /// Charges created per `Idempotency-Key` (1 unless idempotency is broken).
    var chargesByKey: [String: Int] = [:]
    /// `POST /payments` requests per `Idempotency-Key`, replays included.
    var paymentRequestsByKey: [String: Int] = [:]
    /// Shipments created.
    var shipments: Int = 0
    /// Calls per `/flaky/{key}`.
    var flakyCalls: [String: Int] = [:]
    /// Deliveries accepted per hook name, in arrival order.
    var hooks: [String: [JSON]] = [:]
    /// Delivery attempts per hook name, failed ones included.
    var hookAttempts: [String: Int] = [:]
    /// Verification secrets added at run time with `POST /hooks/_secret`.
    var runtimeSecrets: [String] = []

    /// Increments the request count for `label`.
    mutating func count(_ label: String) {
        requests[label, default: 0] += 1
    }

    /// The `GET /_stats` body; object members sorted by key so the output is stable.
    func statsJSON() -> JSON {
        func sorted(_ d: [String: Int]) -> JSON {
            .object(JSONObject(d.sorted { $0.key < $1.key }.map { ($0.key, JSON.int(Int64($0.value))) }))
        }
        let hookCounts = hooks.mapValues { $0.count }
        return [
            "requests": sorted(requests),
            "charges": .int(Int64(charges.count)),
            "charges_by_key": sorted(chargesByKey),
            "payment_requests_by_key": sorted(paymentRequestsByKey),
            "shipments": .int(Int64(shipments)),
            "hooks_received": sorted(hookCounts),
            "hook_attempts": sorted(hookAttempts),
        ]
    }
}
