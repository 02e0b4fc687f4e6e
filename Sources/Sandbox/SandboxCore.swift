import Crypto
import EventLoop
import JSON
import Locking
import Synchronization

/// The sandbox's endpoints as plain functions from `SandboxRequest` to `SandboxReply`,
/// with the shared state behind one `Locked` (pthread mutex). Safe from any thread: every loop of the
/// server calls `handle(_:)` concurrently.
final class SandboxCore: Sendable {
    /// The longest `?delay_ms` accepted (10 minutes).
    static let maxDelayMilliseconds = 600_000
    /// How far `webhook-timestamp` may be from the current time and still verify (5 minutes,
    /// the Standard Webhooks default tolerance).
    static let timestampToleranceSeconds: Int64 = 300

    private let state = Locked(SandboxState())
    /// Keys of the secrets given at construction; they survive `POST /_reset`.
    private let configuredKeys: [[UInt8]]

    init(callbackSecrets: [String]) {
        configuredKeys = callbackSecrets.compactMap { WebhookSignature.key(fromSecret: $0) }.filter { !$0.isEmpty }
    }

    /// A snapshot of the counters (the `GET /_stats` body).
    func stats() -> JSON { state.withLock { $0.statsJSON() } }

    /// Forgets everything except the secrets given at construction.
    func reset() { state.withLock { $0 = SandboxState() } }

    // MARK: - Routing

    /// The endpoints, by path shape.
    private enum Endpoint {
        case createPayment, getPayment(String), shipments, stock(String), prices(String), quotes
        case delay, status(String), flaky(String), hookSecret, hook(String), stats, reset
    }

    /// Matches a path to an endpoint, its label pattern and the methods it takes (nil: any).
    private func match(_ s: [String]) -> (Endpoint, String, [String]?)? {
        switch s.count {
        case 1:
            switch s[0] {
            case "payments": return (.createPayment, "/payments", ["POST"])
            case "shipments": return (.shipments, "/shipments", ["POST"])
            case "quotes": return (.quotes, "/quotes", ["POST"])
            case "delay": return (.delay, "/delay", nil)
            case "_stats": return (.stats, "/_stats", ["GET"])
            case "_reset": return (.reset, "/_reset", ["POST"])
            default: return nil
            }
        case 2:
            switch s[0] {
            case "payments": return (.getPayment(s[1]), "/payments/{id}", ["GET"])
            case "stock": return (.stock(s[1]), "/stock/{sku}", ["GET"])
            case "prices": return (.prices(s[1]), "/prices/{sku}", ["GET"])
            case "status": return (.status(s[1]), "/status/{code}", nil)
            case "flaky": return (.flaky(s[1]), "/flaky/{key}", nil)
            case "hooks" where s[1] == "_secret": return (.hookSecret, "/hooks/_secret", ["POST"])
            case "hooks": return (.hook(s[1]), "/hooks/{name}", ["GET", "POST"])
            default: return nil
            }
        default:
            return nil
        }
    }

    /// Answers one request: routing, the common `delay_ms` / `fail_status` /
    /// `retry_after` parameters, then the endpoint.
    func handle(_ request: SandboxRequest) -> SandboxReply {
        guard let (endpoint, pattern, methods) = match(request.segments) else {
            state.withLock { $0.count("\(request.method) (unmatched)") }
            return SandboxReply(status: 404, body: ["error": "no such endpoint", "status": 404, "path": .string(request.path)])
        }
        let isAdmin: Bool
        switch endpoint {
        case .stats, .reset: isAdmin = true
        default: isAdmin = false
        }
        if !isAdmin { state.withLock { $0.count("\(request.method) \(pattern)") } }
        if let methods, !methods.contains(request.method) {
            var reply = SandboxReply.error(405, "method not allowed")
            reply.headers.append(("Allow", methods.joined(separator: ", ")))
            return reply
        }

        var delay = 0
        if let text = request.query["delay_ms"] {
            guard let n = Int(text), n >= 0, n <= Self.maxDelayMilliseconds else {
                return .error(400, "delay_ms must be an integer from 0 to \(Self.maxDelayMilliseconds)")
            }
            delay = n
        }
        var retryAfter: String? = nil
        if let text = request.query["retry_after"] {
            guard let n = Int(text), n >= 0 else { return .error(400, "retry_after must be a non-negative integer") }
            retryAfter = String(n)
        }

        var reply: SandboxReply
        if let text = request.query["fail_status"] {
            guard let s = Self.statusCode(text) else { return .error(400, "fail_status must be a status from 200 to 599") }
            reply = .error(s, "failure requested with fail_status")
        } else {
            reply = dispatch(endpoint, request, delay: delay)
        }
        reply.delayMilliseconds = delay
        if let retryAfter, reply.status >= 300 || { if case .status = endpoint { return true } else { return false } }() {
            reply.headers.append(("Retry-After", retryAfter))
        }
        if Self.hasNoBody(reply.status) { reply.body = nil }
        return reply
    }

    private func dispatch(_ endpoint: Endpoint, _ request: SandboxRequest, delay: Int) -> SandboxReply {
        switch endpoint {
        case .createPayment: return createPayment(request)
        case .getPayment(let id): return getPayment(id)
        case .shipments: return createShipment(request)
        case .stock(let sku): return stock(sku)
        case .prices(let sku): return price(sku)
        case .quotes: return quote(request)
        case .delay: return SandboxReply(status: 200, body: ["delayed_ms": .int(Int64(delay))])
        case .status(let code): return status(code)
        case .flaky(let key): return flaky(key, request)
        case .hookSecret: return addSecret(request)
        case .hook(let name): return request.method == "GET" ? listHook(name) : receiveHook(name, request)
        case .stats: return SandboxReply(status: 200, body: stats())
        case .reset:
            reset()
            return SandboxReply(status: 204, body: nil)
        }
    }

    /// A status code from 200 to 599, parsed from decimal text.
    static func statusCode(_ text: String) -> Int? {
        guard let s = Int(text), (200...599).contains(s) else { return nil }
        return s
    }

    /// Statuses that never carry a body (RFC 9110 §6.4.1).
    static func hasNoBody(_ status: Int) -> Bool { status == 204 || status == 304 || status < 200 }

    /// `prefix` followed by `bytes` random bytes in hex, e.g. `pay_3f9a…`.
    static func newID(_ prefix: String, bytes: Int = 12) -> String { prefix + Crypto.hex(Crypto.randomBytes(bytes)) }

    /// The body parsed as JSON; `.null` when empty, nil when not JSON.
    private static func parseBody(_ body: [UInt8]) -> JSON? {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0A || $0 == 0x0D }) { return .null }
        return try? JSON.parse(body)
    }

    // MARK: - Payments

    /// `POST /payments`: creates a charge, or replays the answer stored under the
    /// request's `Idempotency-Key`.
    private func createPayment(_ request: SandboxRequest) -> SandboxReply {
        let key = request.header("Idempotency-Key").flatMap { $0.isEmpty ? nil : $0 }

        // Validate first (pure), decide under the lock, so that concurrent requests with one
        // key create exactly one charge.
        var invalid: SandboxReply? = nil
        var amount: JSON = .null
        var currency = "EUR"
        var order: JSON? = nil
        var card: String? = nil
        if let body = Self.parseBody(request.body), case .object(let object) = body {
            switch object["amount"] {
            case .some(.int), .some(.double): amount = object["amount"]!
            default: invalid = .error(400, "amount must be a number")
            }
            switch object["currency"] {
            case .none, .some(.null): break
            case .some(.string(let c)): currency = c
            default: invalid = .error(400, "currency must be a string")
            }
            if let o = object["order"], !o.isNull { order = o }
            card = object["card"]?.stringValue
        } else {
            invalid = .error(400, "body must be a JSON object with a numeric amount")
        }
        let declineParameter = request.query["decline"].map { $0 == "1" || $0 == "true" } ?? false
        let decline = declineParameter || card == "tok_decline"

        let (stored, replayed) = state.withLock { st -> (StoredReply?, Bool) in
            if let key {
                st.paymentRequestsByKey[key, default: 0] += 1
                if let previous = st.idempotent[key] { return (previous, true) }
            }
            if invalid != nil { return (nil, false) }
            let id = Self.newID("pay_")
            var body: JSONObject = ["id": .string(id)]
            let status: Int
            if decline {
                status = 402
                body["status"] = "declined"
                body["decline_code"] = "card_declined"
            } else {
                status = 200
                body["status"] = "succeeded"
            }
            body["amount"] = amount
            body["currency"] = .string(currency)
            if let order { body["order"] = order }
            let reply = StoredReply(status: status, body: .object(body))
            st.charges[id] = reply
            st.chargeOrder.append(id)
            if let key {
                st.idempotent[key] = reply
                st.chargesByKey[key, default: 0] += 1
            }
            return (reply, false)
        }
        guard let stored else { return invalid! }
        var reply = SandboxReply(status: stored.status, body: stored.body)
        if replayed { reply.headers.append(("Idempotent-Replayed", "true")) }
        return reply
    }

    /// `GET /payments/{id}`: the charge as it was created (`200` even for a declined one).
    private func getPayment(_ id: String) -> SandboxReply {
        guard let charge = state.withLock({ $0.charges[id] }) else { return .error(404, "no such payment") }
        return SandboxReply(status: 200, body: charge.body)
    }

    // MARK: - Fulfillment, inventory, pricing, shipping

    /// `POST /shipments`: `201` with a new shipment for the body's `payment`.
    private func createShipment(_ request: SandboxRequest) -> SandboxReply {
        guard let body = Self.parseBody(request.body), body.isNull || body.objectValue != nil else {
            return .error(400, "body must be a JSON object")
        }
        state.withLock { $0.shipments += 1 }
        return SandboxReply(status: 201, body: [
            "id": .string(Self.newID("shp_")),
            "status": "created",
            "payment": body["payment"] ?? .null,
        ])
    }

    /// `GET /stock/{sku}`: a stock level derived from the SKU (0 for SKUs starting `oos`).
    private func stock(_ sku: String) -> SandboxReply {
        let available = sku.hasPrefix("oos") ? 0 : Int64(stableHash(sku.utf8) % 100) + 1
        return SandboxReply(status: 200, body: ["sku": .string(sku), "available": .int(available), "warehouse": "ams-1"])
    }

    /// `GET /prices/{sku}`: a price in minor units (cents) derived from the SKU.
    private func price(_ sku: String) -> SandboxReply {
        let amount = Int64(stableHash(sku.utf8) % 9_900) + 100
        return SandboxReply(status: 200, body: ["sku": .string(sku), "amount": .int(amount), "currency": "EUR"])
    }

    /// `POST /quotes`: a shipping quote in minor units, derived from the body.
    private func quote(_ request: SandboxRequest) -> SandboxReply {
        let amount = Int64(stableHash(request.body) % 1_000) + 495
        return SandboxReply(status: 200, body: ["carrier": "dhl", "amount": .int(amount), "days": 2])
    }

    // MARK: - Failure helpers

    /// `ANY /status/{code}`: that status, body `{"status": code}`.
    private func status(_ code: String) -> SandboxReply {
        guard let s = Self.statusCode(code) else { return .error(400, "status must be from 200 to 599") }
        return SandboxReply(status: s, body: ["status": .int(Int64(s))])
    }

    /// `ANY /flaky/{key}?fail=N&status=S`: the first N calls for `key` answer S (default
    /// 1 and 503), later ones `200 {"attempt": k}`.
    private func flaky(_ key: String, _ request: SandboxRequest) -> SandboxReply {
        var failures = 1
        if let text = request.query["fail"] {
            guard let n = Int(text), n >= 0 else { return .error(400, "fail must be a non-negative integer") }
            failures = n
        }
        var failStatus = 503
        if let text = request.query["status"] {
            guard let s = Self.statusCode(text) else { return .error(400, "status must be from 200 to 599") }
            failStatus = s
        }
        let attempt = state.withLock { st -> Int in
            st.flakyCalls[key, default: 0] += 1
            return st.flakyCalls[key]!
        }
        if attempt <= failures {
            return SandboxReply(status: failStatus, body: [
                "error": "flaky failure", "status": .int(Int64(failStatus)), "attempt": .int(Int64(attempt)),
            ])
        }
        return SandboxReply(status: 200, body: ["attempt": .int(Int64(attempt))])
    }

    // MARK: - Callback receiver

    /// `POST /hooks/_secret {"secret": "whsec_…"}`: adds a verification secret.
    private func addSecret(_ request: SandboxRequest) -> SandboxReply {
        guard let body = Self.parseBody(request.body), let secret = body["secret"]?.stringValue,
              let key = WebhookSignature.key(fromSecret: secret), !key.isEmpty
        else { return .error(400, "body must be {\"secret\": \"whsec_<base64>\"}") }
        state.withLock { st in
            if !st.runtimeSecrets.contains(secret) { st.runtimeSecrets.append(secret) }
        }
        return SandboxReply(status: 204, body: nil)
    }

    /// Whether the Standard Webhooks headers of `request` verify under any known secret
    /// and the timestamp is within tolerance.
    private func verify(id: String?, timestamp: Int64?, _ request: SandboxRequest) -> Bool {
        guard let id, let timestamp, let signature = request.header("webhook-signature") else { return false }
        let now = wallClockMilliseconds() / 1000
        guard abs(now - timestamp) <= Self.timestampToleranceSeconds else { return false }
        let runtime = state.withLock { $0.runtimeSecrets }.compactMap { WebhookSignature.key(fromSecret: $0) }
        for key in configuredKeys + runtime
        where WebhookSignature.verify(secret: key, id: id, timestamp: timestamp, body: request.body, header: signature) {
            return true
        }
        return false
    }

    /// `POST /hooks/{name}`: records a delivery and answers `204`, unless `?fail=N` (the
    /// first N attempts for the name answer `500`) or `?status=S` (answer S) says otherwise.
    private func receiveHook(_ name: String, _ request: SandboxRequest) -> SandboxReply {
        var failures = 0
        if let text = request.query["fail"] {
            guard let n = Int(text), n >= 0 else { return .error(400, "fail must be a non-negative integer") }
            failures = n
        }
        var forced: Int? = nil
        if let text = request.query["status"] {
            guard let s = Self.statusCode(text) else { return .error(400, "status must be from 200 to 599") }
            forced = s
        }
        let id = request.header("webhook-id")
        let timestamp = request.header("webhook-timestamp").flatMap { Int64($0) }
        let verified = verify(id: id, timestamp: timestamp, request)
        let body = (try? JSON.parse(request.body)) ?? .string(String(decoding: request.body, as: UTF8.self))
        let record: JSON = [
            "name": .string(name),
            "webhook_id": id.map { .string($0) } ?? .null,
            "timestamp": timestamp.map { .int($0) } ?? .null,
            "verified": .bool(verified),
            "body": body,
        ]
        return state.withLock { st -> SandboxReply in
            st.hookAttempts[name, default: 0] += 1
            if st.hookAttempts[name]! <= failures { return .error(500, "failure requested with fail") }
            if let forced, forced >= 300 { return .error(forced, "status requested") }
            st.hooks[name, default: []].append(record)
            return SandboxReply(status: forced ?? 204, body: nil)
        }
    }

    /// `GET /hooks/{name}`: `{"received": [...], "attempts": n}`, deliveries in arrival order.
    private func listHook(_ name: String) -> SandboxReply {
        let (received, attempts) = state.withLock { ($0.hooks[name] ?? [], $0.hookAttempts[name] ?? 0) }
        return SandboxReply(status: 200, body: ["received": .array(received), "attempts": .int(Int64(attempts))])
    }
}

