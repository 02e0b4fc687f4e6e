import EventLoop
import HTTP1
import JSON
import Synchronization

/// A fake third-party API for demos, tests and benchmarks (`switchboard sandbox`):
/// a payment processor that honours `Idempotency-Key` and can decline or be slow, a
/// fulfillment, inventory, pricing and shipping-quote service, endpoints that answer
/// late, fail with a chosen status or fail a set number of times, and a callback
/// receiver that verifies Standard Webhooks signatures and lists what it received.
///
/// All bodies are JSON (`Content-Type: application/json`). Every endpoint honours
/// `?delay_ms=N` (answer after N ms, on a loop timer, never blocking a loop),
/// `?fail_status=S` (answer S with a JSON error body and no side effect) and
/// `?retry_after=S` (adds `Retry-After: S` to any non-2xx answer, and to every
/// `/status/{code}` answer). Endpoints:
///
/// - `POST /payments` `{"amount": number, "currency"?: string, "order"?: any, "card"?: string}`
///   → `200 {"id": "pay_…", "status": "succeeded", "amount", "currency", "order"?}`, or
///   `402 {"id", "status": "declined", "decline_code": "card_declined", …}` when `card` is
///   `"tok_decline"` or `?decline=1`; `400` when `amount` is missing or not a number.
///   The first request with an `Idempotency-Key` decides the answer; later ones with that
///   key replay it (status and body, plus `Idempotent-Replayed: true`) without a new charge.
///   `GET /payments/{id}` → `200` with the charge, `404` when unknown.
/// - `POST /shipments` → `201 {"id": "shp_…", "status": "created", "payment": <body.payment>}`.
/// - `GET /stock/{sku}` → `{"sku", "available": <1…100 from the SKU; 0 when it starts with
///   "oos">, "warehouse": "ams-1"}`; `GET /prices/{sku}` → `{"sku", "amount": <cents>,
///   "currency": "EUR"}`; `POST /quotes` → `{"carrier": "dhl", "amount": <cents>, "days": 2}`.
///   All derived deterministically from their input.
/// - `ANY /delay?delay_ms=N` → `{"delayed_ms": N}`; `ANY /status/{code}` → that status with
///   `{"status": code}`; `ANY /flaky/{key}?fail=N&status=S` → the first N calls for `key`
///   (default 1) answer S (default 503), later ones `200 {"attempt": k}`.
/// - `POST /hooks/{name}` records `{"name", "webhook_id", "timestamp", "verified", "body"}`
///   and answers `204`; `verified` is true when `webhook-signature` matches under any known
///   secret and `webhook-timestamp` is within 5 minutes of now. `?fail=N`: the first N
///   attempts for the name answer `500` (not recorded); `?status=S`: answer S (recorded only
///   when S is 2xx). `GET /hooks/{name}` → `{"received": [...], "attempts": n}` in arrival
///   order. `POST /hooks/_secret {"secret": "whsec_…"}` adds a secret (`204`).
/// - `GET /_stats` → see ``stats()``; `POST /_reset` forgets everything except the secrets
///   given to ``init(group:address:callbackSecrets:)`` (`204`).
/// - Anything else: `404`, or `405` with `Allow` for a known path with another method.
///
/// Safe from any thread: the state is shared by all loops behind a `Locked` (pthread mutex).
public final class Sandbox: @unchecked Sendable {
    private let core: SandboxCore
    private let server: HTTPServer

    /// Creates a sandbox that will listen on `address` (port 0: the kernel picks one; read
    /// ``port`` after ``start()``), serving on the loops of `group`.
    /// - Parameters:
    ///   - callbackSecrets: `whsec_…` secrets that `POST /hooks/{name}` verifies signatures
    ///     against; malformed ones are ignored. More can be added with `POST /hooks/_secret`.
    public init(group: EventLoopGroup, address: SocketAddress, callbackSecrets: [String] = []) {
        let core = SandboxCore(callbackSecrets: callbackSecrets)
        self.core = core
        server = HTTPServer(group: group, address: address, limits: HTTPLimits()) { request, writer in
            Sandbox.serve(core, request, writer)
        }
    }

    /// Binds the listener and starts accepting connections.
    /// - Throws: the HTTP server's error when the address cannot be bound.
    public func start() throws {
        try server.start()
    }

    /// The port actually listened on (meaningful after ``start()``).
    public var port: UInt16 { server.port }

    /// Stops accepting and closes the listener. Does not shut the event-loop group down.
    public func shutdown() {
        server.shutdown()
    }

    /// The counters, as served by `GET /_stats`:
    /// `{"requests": {"POST /payments": n, …}, "charges": <distinct charges, declined
    /// included>, "charges_by_key": {key: n}, "payment_requests_by_key": {key: n},
    /// "shipments": n, "hooks_received": {name: n}, "hook_attempts": {name: n}}`.
    /// Request labels are the method and the path pattern (`"GET /stock/{sku}"`);
    /// `/_stats` and `/_reset` are not counted, unknown paths count as `"GET (unmatched)"`.
    public func stats() -> JSON { core.stats() }

    /// Answers one request on `writer.loop`, after the reply's delay when it has one.
    private static func serve(_ core: SandboxCore, _ request: HTTPRequest, _ writer: HTTPResponseWriter) {
        let headers = request.headers
        let reply = core.handle(SandboxRequest(
            method: request.method, path: request.path, query: parseQuery(request.query),
            header: { headers[$0] }, body: request.body))
        var responseHeaders = reply.headers
        var body: [UInt8] = []
        if let json = reply.body {
            body = json.serialized
            responseHeaders.append(("Content-Type", "application/json"))
        }
        let response = HTTPResponse(status: reply.status, headers: responseHeaders, body: body)
        if reply.delayMilliseconds > 0 {
            let loop = writer.loop
            loop.schedule(at: loop.now + .milliseconds(reply.delayMilliseconds)) { writer.respond(response) }
        } else {
            writer.respond(response)
        }
    }
}
