import Crypto
import Dispatch
import EventLoop
import Foundation
import JSON
import Sandbox
import Testing
import TestSupport

/// A sandbox on `127.0.0.1:0` with its own loop group (one loop by default), for the duration of a test.
final class SandboxHarness: @unchecked Sendable {
    let group: EventLoopGroup
    let sandbox: Sandbox

    init(secrets: [String] = [], loops: Int = 1) throws {
        group = try EventLoopGroup(count: loops)
        sandbox = Sandbox(group: group, address: SocketAddress(host: "127.0.0.1", port: 0), callbackSecrets: secrets)
        try sandbox.start()
    }

    deinit {
        sandbox.shutdown()
        group.shutdown()
    }

    /// A new keep-alive connection to the sandbox.
    func connect() throws -> RawConnection { try RawConnection(port: sandbox.port) }

    /// Sends one request on a new connection and returns the response (fails the test on none).
    func send(_ method: String, _ target: String, headers: [(String, String)] = [], body: String = "") throws -> RawMessage {
        let c = try connect()
        return try #require(c.request(method, target, headers: headers, body: Array(body.utf8)))
    }
}

/// The body of `m` parsed as JSON (`.null` when it is not JSON).
func json(_ m: RawMessage) -> JSON { (try? JSON.parse(m.body)) ?? .null }

@Suite struct SandboxTests {
    /// A payment with an amount succeeds with a new pay_ id, echoing amount and currency.
    @Test func payments_Succeed_WhenAmountGiven() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/payments", body: #"{"amount": 1250, "currency": "USD", "order": "o-1"}"#)
        #expect(r.status == 200)
        #expect(r.header("content-type") == "application/json")
        let b = json(r)
        #expect(b["status"] == "succeeded")
        #expect(b["amount"] == 1250)
        #expect(b["currency"] == "USD")
        #expect(b["order"] == "o-1")
        #expect(b["id"]?.stringValue?.hasPrefix("pay_") == true)
    }

    /// The currency defaults to EUR when the body has none.
    @Test func payments_DefaultCurrencyEUR_WhenCurrencyMissing() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/payments", body: #"{"amount": 9.5}"#)
        #expect(r.status == 200)
        #expect(json(r)["currency"] == "EUR")
        #expect(json(r)["amount"] == 9.5)
    }

    /// A repeated Idempotency-Key replays the first answer and creates no second charge.
    @Test func payments_ReplaySameResponse_WhenIdempotencyKeyRepeated() throws {
        let h = try SandboxHarness()
        let c = try h.connect()
        let first = try #require(c.request("POST", "/payments", headers: [("Idempotency-Key", "k-1")], body: Array(#"{"amount": 10}"#.utf8)))
        let second = try #require(c.request("POST", "/payments", headers: [("Idempotency-Key", "k-1")], body: Array(#"{"amount": 10}"#.utf8)))
        #expect(first.status == 200)
        #expect(second.status == first.status)
        #expect(second.body == first.body)
        #expect(second.header("idempotent-replayed") == "true")
        #expect(first.header("idempotent-replayed") == nil)
        let stats = h.sandbox.stats()
        #expect(stats["charges"] == 1)
        #expect(stats["charges_by_key"]?["k-1"] == 1)
        #expect(stats["payment_requests_by_key"]?["k-1"] == 2)
        #expect(stats["requests"]?["POST /payments"] == 2)
    }

    /// Requests with one Idempotency-Key sent at once over two loops create exactly one charge.
    @Test func payments_CreateOneCharge_WhenSameKeySentConcurrently() throws {
        let h = try SandboxHarness(loops: 2)
        // NSLock, not Synchronization.Mutex: the thread sanitizer does not see Mutex on
        // Linux and reports the inserts from concurrentPerform's threads as a race.
        let lock = NSLock()
        nonisolated(unsafe) var ids: Set<String> = []
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            guard let c = try? h.connect(),
                  let r = c.request("POST", "/payments", headers: [("Idempotency-Key", "race")], body: Array(#"{"amount": 5}"#.utf8)),
                  let id = json(r)["id"]?.stringValue
            else { return }
            lock.withLock { _ = ids.insert(id) }
        }
        #expect(lock.withLock { ids.count } == 1)
        let stats = h.sandbox.stats()
        #expect(stats["charges"] == 1)
        #expect(stats["payment_requests_by_key"]?["race"] == 8)
    }

    /// Different Idempotency-Keys create different charges.
    @Test func payments_CreateDistinctCharges_WhenKeysDiffer() throws {
        let h = try SandboxHarness()
        let a = try h.send("POST", "/payments", headers: [("Idempotency-Key", "a")], body: #"{"amount": 1}"#)
        let b = try h.send("POST", "/payments", headers: [("Idempotency-Key", "b")], body: #"{"amount": 1}"#)
        #expect(json(a)["id"] != json(b)["id"])
        #expect(h.sandbox.stats()["charges"] == 2)
    }

    /// The card tok_decline is declined with 402 and a decline code.
    @Test func payments_Decline402_WhenCardIsTokDecline() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/payments", body: #"{"amount": 10, "card": "tok_decline"}"#)
        #expect(r.status == 402)
        let b = json(r)
        #expect(b["status"] == "declined")
        #expect(b["decline_code"] == "card_declined")
        #expect(b["id"]?.stringValue?.hasPrefix("pay_") == true)
    }

    /// ?decline=1 declines a payment whatever the card.
    @Test func payments_Decline402_WhenDeclineParameterSet() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/payments?decline=1", body: #"{"amount": 10}"#)
        #expect(r.status == 402)
        #expect(json(r)["status"] == "declined")
    }

    /// A missing or non-numeric amount is a 400 and creates no charge.
    @Test func payments_Reject400_WhenAmountMissingOrNotNumber() throws {
        let h = try SandboxHarness()
        #expect(try h.send("POST", "/payments", body: #"{"currency": "EUR"}"#).status == 400)
        #expect(try h.send("POST", "/payments", body: #"{"amount": "10"}"#).status == 400)
        #expect(try h.send("POST", "/payments", body: "not json").status == 400)
        #expect(h.sandbox.stats()["charges"] == 0)
    }

    /// GET /payments/{id} returns a created charge, and 404 for an unknown id.
    @Test func getPayment_ReturnsCharge_WhenCreated() throws {
        let h = try SandboxHarness()
        let created = json(try h.send("POST", "/payments", body: #"{"amount": 42}"#))
        let id = try #require(created["id"]?.stringValue)
        let r = try h.send("GET", "/payments/\(id)")
        #expect(r.status == 200)
        #expect(json(r) == created)
        #expect(try h.send("GET", "/payments/pay_nope").status == 404)
    }

    /// POST /shipments answers 201 with a shp_ id and the body's payment.
    @Test func shipments_Create201_WithPayment() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/shipments", body: #"{"payment": "pay_1"}"#)
        #expect(r.status == 201)
        #expect(json(r)["status"] == "created")
        #expect(json(r)["payment"] == "pay_1")
        #expect(json(r)["id"]?.stringValue?.hasPrefix("shp_") == true)
        #expect(h.sandbox.stats()["shipments"] == 1)
    }

    /// Stock, price and quote answers are deterministic for the same input.
    @Test func catalog_AnswerDeterministically_ForSameInput() throws {
        let h = try SandboxHarness()
        let s1 = json(try h.send("GET", "/stock/sku-1")), s2 = json(try h.send("GET", "/stock/sku-1"))
        #expect(s1 == s2)
        #expect(s1["sku"] == "sku-1")
        #expect(s1["warehouse"] == "ams-1")
        #expect((s1["available"]?.intValue ?? 0) > 0)
        #expect(json(try h.send("GET", "/stock/oos-1"))["available"] == 0)
        let p = json(try h.send("GET", "/prices/sku-1"))
        #expect(p["currency"] == "EUR")
        #expect(p == json(try h.send("GET", "/prices/sku-1")))
        let q = try h.send("POST", "/quotes", body: #"{"to": "NL"}"#)
        #expect(q.status == 200)
        #expect(json(q)["carrier"] == "dhl")
        #expect(json(q)["days"] == 2)
        #expect(json(q)["amount"]?.intValue != nil)
    }

    /// ?delay_ms=N holds the answer back at least N ms, then answers normally.
    @Test func delay_AnswerAfterDelay_WhenDelayMsGiven() throws {
        let h = try SandboxHarness()
        let start = ContinuousClock.now
        let r = try h.send("GET", "/delay?delay_ms=150")
        let elapsed = ContinuousClock.now - start
        #expect(r.status == 200)
        #expect(json(r)["delayed_ms"] == 150)
        #expect(elapsed >= .milliseconds(150))
    }

    /// A delayed request does not hold up another request on the same loop.
    @Test func delay_DoesNotBlockLoop_WhenOtherRequestArrives() throws {
        let h = try SandboxHarness()
        let slow = try h.connect()
        // Ten minutes: were the loop blocked, the next request would hit its read timeout.
        #expect(slow.write("GET /delay?delay_ms=600000 HTTP/1.1\r\nHost: x\r\n\r\n"))
        let fast = try h.send("GET", "/stock/a")
        #expect(fast.status == 200)
    }

    /// /status/{code} answers that status, with Retry-After when asked.
    @Test func status_AnswerChosenStatus_WithRetryAfter() throws {
        let h = try SandboxHarness()
        let r = try h.send("GET", "/status/503?retry_after=7")
        #expect(r.status == 503)
        #expect(json(r)["status"] == 503)
        #expect(r.header("retry-after") == "7")
        #expect(try h.send("POST", "/status/418").status == 418)
        #expect(try h.send("GET", "/status/abc").status == 400)
    }

    /// ?fail_status=S answers S with a JSON error and has no side effect.
    @Test func failStatus_AnswerChosenStatus_WithoutCharge() throws {
        let h = try SandboxHarness()
        let r = try h.send("POST", "/payments?fail_status=502", headers: [("Idempotency-Key", "f")], body: #"{"amount": 1}"#)
        #expect(r.status == 502)
        #expect(json(r)["error"]?.stringValue != nil)
        #expect(h.sandbox.stats()["charges"] == 0)
        let ok = try h.send("POST", "/payments", headers: [("Idempotency-Key", "f")], body: #"{"amount": 1}"#)
        #expect(ok.status == 200)
        #expect(ok.header("idempotent-replayed") == nil)
    }

    /// /flaky/{key} fails the first N calls with the status, then answers 200 with the attempt.
    @Test func flaky_FailFirstN_ThenSucceed() throws {
        let h = try SandboxHarness()
        let c = try h.connect()
        for k in 1...2 {
            let r = try #require(c.request("GET", "/flaky/x?fail=2&status=502"))
            #expect(r.status == 502)
            #expect(json(r)["attempt"] == .int(Int64(k)))
        }
        let r = try #require(c.request("GET", "/flaky/x?fail=2&status=502"))
        #expect(r.status == 200)
        #expect(json(r)["attempt"] == 3)
        #expect(try h.send("GET", "/flaky/other?fail=0").status == 200)
    }

    /// A delivery signed with a configured secret is recorded as verified.
    @Test func hooks_RecordVerifiedTrue_WhenCorrectlySigned() throws {
        let secret = WebhookSignature.newSecret()
        let h = try SandboxHarness(secrets: [secret])
        let body = #"{"job_id": "j1", "status": "succeeded"}"#
        let r = try h.send("POST", "/hooks/shop", headers: signedHeaders(secret: secret, id: "msg_1", body: body), body: body)
        #expect(r.status == 204)
        let list = json(try h.send("GET", "/hooks/shop"))
        let received = try #require(list["received"]?.arrayValue)
        #expect(received.count == 1)
        #expect(received.first?["verified"] == true)
        #expect(received.first?["webhook_id"] == "msg_1")
        #expect(received.first?["name"] == "shop")
        #expect(received.first?["body"]?["job_id"] == "j1")
    }

    /// A delivery signed with another secret is recorded as not verified.
    @Test func hooks_RecordVerifiedFalse_WhenWronglySigned() throws {
        let h = try SandboxHarness(secrets: [WebhookSignature.newSecret()])
        let body = #"{"job_id": "j2"}"#
        let headers = signedHeaders(secret: WebhookSignature.newSecret(), id: "msg_2", body: body)
        #expect(try h.send("POST", "/hooks/shop", headers: headers, body: body).status == 204)
        #expect(try h.send("POST", "/hooks/shop", body: body).status == 204)
        let received = try #require(json(try h.send("GET", "/hooks/shop"))["received"]?.arrayValue)
        #expect(received.count == 2)
        #expect(received.allSatisfy { $0["verified"] == false })
    }

    /// A secret added with POST /hooks/_secret verifies later deliveries.
    @Test func hooks_VerifyDelivery_WhenSecretAddedAtRunTime() throws {
        let h = try SandboxHarness()
        let secret = WebhookSignature.newSecret()
        #expect(try h.send("POST", "/hooks/_secret", body: "{\"secret\": \"\(secret)\"}").status == 204)
        #expect(try h.send("POST", "/hooks/_secret", body: #"{"secret": "nope"}"#).status == 400)
        let body = #"{"n": 1}"#
        _ = try h.send("POST", "/hooks/rt", headers: signedHeaders(secret: secret, id: "m", body: body), body: body)
        let received = try #require(json(try h.send("GET", "/hooks/rt"))["received"]?.arrayValue)
        #expect(received.first?["verified"] == true)
    }

    /// ?fail=N answers 500 to the first N deliveries for a name, without recording them.
    @Test func hooks_Answer500_ForFirstNAttempts() throws {
        let h = try SandboxHarness()
        #expect(try h.send("POST", "/hooks/f?fail=2", body: "{}").status == 500)
        #expect(try h.send("POST", "/hooks/f?fail=2", body: "{}").status == 500)
        #expect(try h.send("POST", "/hooks/f?fail=2", body: "{}").status == 204)
        #expect(try h.send("POST", "/hooks/g?status=410", body: "{}").status == 410)
        let list = json(try h.send("GET", "/hooks/f"))
        #expect(list["received"]?.arrayValue?.count == 1)
        #expect(list["attempts"] == 3)
    }

    /// GET /_stats counts requests per endpoint and POST /_reset clears all state.
    @Test func stats_CountRequests_AndResetClears() throws {
        let h = try SandboxHarness()
        _ = try h.send("POST", "/payments", headers: [("Idempotency-Key", "s")], body: #"{"amount": 1}"#)
        _ = try h.send("GET", "/stock/a")
        _ = try h.send("GET", "/stock/b")
        let stats = json(try h.send("GET", "/_stats"))
        #expect(stats["requests"]?["POST /payments"] == 1)
        #expect(stats["requests"]?["GET /stock/{sku}"] == 2)
        #expect(stats["requests"]?["GET /_stats"] == nil)
        #expect(stats["charges"] == 1)
        #expect(try h.send("POST", "/_reset").status == 204)
        let after = h.sandbox.stats()
        #expect(after["charges"] == 0)
        #expect(after["requests"] == .object(JSONObject()))
        #expect(after["charges_by_key"] == .object(JSONObject()))
        let again = try h.send("POST", "/payments", headers: [("Idempotency-Key", "s")], body: #"{"amount": 1}"#)
        #expect(again.header("idempotent-replayed") == nil)
    }

    /// An unknown path is a JSON 404; a known path with another method is a 405 with Allow.
    @Test func routing_Answer404Or405_WhenNoEndpointMatches() throws {
        let h = try SandboxHarness()
        let r = try h.send("GET", "/nope")
        #expect(r.status == 404)
        #expect(json(r)["error"]?.stringValue != nil)
        let m = try h.send("DELETE", "/payments")
        #expect(m.status == 405)
        #expect(m.header("allow") == "POST")
    }
}

/// Standard Webhooks headers for `body`, signed now with `secret`.
func signedHeaders(secret: String, id: String, body: String) -> [(String, String)] {
    let ts = wallClockMilliseconds() / 1000
    let key = WebhookSignature.key(fromSecret: secret)!
    let sig = WebhookSignature.sign(secret: key, id: id, timestamp: ts, body: Array(body.utf8))
    return [("webhook-id", id), ("webhook-timestamp", String(ts)), ("webhook-signature", sig), ("Content-Type", "application/json")]
}
