import Crypto
import Foundation
import Gateway
import Testing
import TestSupport

/// Callbacks (SPEC §4), idempotency keys (§5) and API keys (§7), end to end.
@Suite struct CallbackAndIdempotencyTests {
    static let secret = "whsec_" + Data(repeating: 7, count: 32).base64EncodedString()

    static func slowRoute() -> String {
        routeJSON(["name": "slow", "method": "POST", "path": "/slow", "wait": "100ms", "max_wait": "60s",
                   "steps": [["id": "work", "request": ["method": "POST", "url": "{{env.U}}/work", "body": ["n": "{{request.body.n}}"]], "timeout": "5s"]]])
    }

    static func harness(_ up: ScriptedServer, keys: [(String, String)] = [], retry: [Duration]? = nil) throws -> GatewayHarness {
        try GatewayHarness(routes: ["s.json": slowRoute()], env: ["U": "http://127.0.0.1:\(up.port)"]) { c in
            c.callbackAllow = ["127.0.0.0/8"]
            c.callbackSecret = secret
            c.apiKeys = keys.map { APIKey(name: $0.0, sha256: Crypto.sha256(Array($0.1.utf8))) }
            if let retry { c.callbackRetry = retry }
        }
    }

    /// A receiver answering each delivery with the next status of `statuses` (the last repeats).
    static func receiver(_ statuses: [Int]) throws -> ScriptedServer {
        let n = Counter()
        return try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let i = n.increment() - 1
                conn.write("HTTP/1.1 \(statuses[min(i, statuses.count - 1)]) X\r\nContent-Length: 0\r\n\r\n")
            }
        }
    }

    /// The expected `webhook-signature`, computed here from the spec's definition.
    static func expectedSignature(secret: String, _ req: RawMessage) -> String {
        let key = [UInt8](Data(base64Encoded: String(secret.dropFirst(6)))!)
        let content = Array("\(req.header("webhook-id")!).\(req.header("webhook-timestamp")!).".utf8) + req.body
        return "v1," + Data(Crypto.hmacSHA256(key: key, message: content)).base64EncodedString()
    }

    /// A run that outlasts the budget delivers its result, signed with `callback_secret`, to the `Callback-URL`.
    @Test func callbackURL_ReceivesSignedResult() throws {
        let up = try ScriptedServer.answering(body: "{\"done\":1}", delay: .milliseconds(400))
        let rx = try Self.receiver([204])
        let h = try Self.harness(up)
        let r = try h.request("POST", "/slow", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/hook")], body: "{\"n\":1}")
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        #expect(eventually { rx.requests.count == 1 })
        let d = try #require(rx.requests.first)
        #expect(d.method == "POST")
        #expect(d.target == "/hook")
        #expect(d.header("webhook-id")?.isEmpty == false)
        #expect(d.header("webhook-signature") == Self.expectedSignature(secret: Self.secret, d))
        let body = d.object
        #expect(body["job_id"] as? String == id)
        #expect(body["route"] as? String == "slow")
        #expect(body["status"] as? String == "succeeded")
        #expect(((body["response"] as? [String: Any])?["status"]) as? Int == 200)
        #expect((body["trace_id"] as? String)?.count == 32)
    }

    /// A run that finishes inside the budget sends no callback.
    @Test func syncCompletion_SendsNoCallback() throws {
        let up = try ScriptedServer.answering()
        let rx = try Self.receiver([204])
        let h = try Self.harness(up)
        let r = try h.request("POST", "/slow", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/hook"), ("Prefer", "wait=5")], body: "{\"n\":1}")
        #expect(r.status == 200)
        usleep(300_000)
        #expect(rx.requests.isEmpty)
    }

    /// A registered endpoint gets a fresh secret, signs its deliveries with it, is listed without its secret, and can be deleted.
    @Test func registeredEndpoint_SignsWithItsOwnSecret() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(300))
        let rx = try Self.receiver([200])
        let h = try Self.harness(up)
        let created = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(rx.port)/ep\"}")
        #expect(created.status == 201)
        let id = try #require(created.object["id"] as? String)
        let secret = try #require(created.object["secret"] as? String)
        #expect(secret.hasPrefix("whsec_"))
        #expect(secret != Self.secret)
        let list = try h.request("GET", "/callbacks")
        #expect(list.text.contains(id))
        #expect(!list.text.contains(secret))

        #expect(try h.request("POST", "/slow", headers: [("Callback", id)], body: "{\"n\":2}").status == 202)
        #expect(eventually { rx.requests.count == 1 })
        let d = try #require(rx.requests.first)
        #expect(d.header("webhook-signature") == Self.expectedSignature(secret: secret, d))

        #expect(try h.request("DELETE", "/callbacks/\(id)").status == 204)
        #expect(try h.request("GET", "/callbacks/\(id)").status == 404)
        #expect(try h.request("POST", "/slow", headers: [("Callback", id)], body: "{\"n\":3}").status == 422)
    }

    /// A refused callback address is a 422 before any upstream is called.
    @Test(arguments: ["http://10.0.0.5/hook", "http://169.254.169.254/latest", "http://192.168.1.1/", "http://[::1]:9/x", "http://0.0.0.0/", "ftp://127.0.0.1/x"])
    func callbackURL_RefusedAddress_Is422BeforeUpstream(url: String) throws {
        let up = try ScriptedServer.answering()
        let h = try Self.harness(up)
        let r = try h.request("POST", "/slow", headers: [("Callback-URL", url)], body: "{\"n\":1}")
        #expect(r.status == 422 || r.status == 400)
        #expect(r.header("content-type") == "application/problem+json")
        usleep(100_000)
        #expect(up.requests.isEmpty)
    }

    /// A delivery failing every attempt is dead-lettered and listed; redelivery then succeeds with the same webhook id.
    @Test func deadLetter_ThenRedeliver() throws {
        let gate = Gate()  // the run outlasts its budget: the upstream answers after the 202
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let flip = Counter()
        let rx = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let status = flip.value > 0 ? 200 : 500
                conn.write("HTTP/1.1 \(status) X\r\nContent-Length: 0\r\n\r\n")
            }
        }
        let h = try Self.harness(up, retry: [.zero, .milliseconds(50)])
        let ep = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(rx.port)/dl\"}")
        let epID = try #require(ep.object["id"] as? String)
        let r = try h.request("POST", "/slow", headers: [("Callback", epID)], body: "{\"n\":4}")
        gate.open()
        let jobID = try #require(r.object["job_id"] as? String)
        var listed: [String: Any]?
        #expect(eventually {
            let l = try? h.request("GET", "/callbacks/\(epID)/deliveries?status=failed")
            listed = ((l?.object["deliveries"] as? [[String: Any]]) ?? []).first
            return listed != nil
        })
        #expect(listed?["job_id"] as? String == jobID)
        #expect(listed?["attempts"] as? Int == 2)
        #expect(listed?["status"] as? String == "failed")
        #expect(listed?["last_status"] as? Int == 500)
        _ = flip.increment()
        #expect(try h.request("POST", "/jobs/\(jobID)/redeliver").status == 202)
        #expect(eventually { rx.requests.count == 3 })
        #expect(Set(rx.requests.compactMap { $0.header("webhook-id") }).count == 1)
    }

    /// Deleting an endpoint while a delivery to it waits for its next attempt (an hour
    /// away) dead-letters that delivery at once: nothing stays pending for an endpoint
    /// that is gone, no further attempt is made, and redelivery is refused (`409`).
    @Test func deleteEndpoint_WithDeliveryWaitingToRetry_DeadLettersItAtOnce() throws {
        let gate = Gate()  // the run outlasts its budget: the upstream answers after the 202
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let rx = try Self.receiver([500])
        let h = try Self.harness(up, retry: [.zero, .seconds(3600)])
        let ep = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(rx.port)/down\"}")
        let epID = try #require(ep.object["id"] as? String)
        let r = try h.request("POST", "/slow", headers: [("Callback", epID)], body: "{\"n\":6}")
        let jobID = try #require(r.object["job_id"] as? String)
        gate.open()
        func pending() throws -> Double? {
            try Exposition(try h.request("GET", "/metrics").text).value("switchboard_callbacks_pending", [:])
        }
        #expect(eventually {
            let l = try? h.request("GET", "/callbacks/\(epID)/deliveries?status=pending")
            return ((l?.object["deliveries"] as? [[String: Any]])?.first?["attempts"] as? Int) == 1
        }, "the first attempt never failed")
        #expect(try pending() == 1)

        #expect(try h.request("DELETE", "/callbacks/\(epID)").status == 204)
        #expect(try pending() == 0)
        let redeliver = try h.request("POST", "/jobs/\(jobID)/redeliver")
        #expect(redeliver.status == 409)
        #expect((redeliver.object["detail"] as? String)?.contains("deleted") == true, "\(redeliver.text)")
        #expect(rx.requests.count == 1)
    }

    /// Two `DELETE`s of one endpoint at once, on two connections (so often on two
    /// loops): both are answered, one `204` and one `404` or `409` problem (the latter
    /// while the first deletion is still being written), for every endpoint.
    /// (A second request that found the endpoint just before the first deleted it was
    /// once never answered.) Each request is sent but for its last bytes, which both
    /// threads send together, to make the two land as close together as they can.
    @Test func deleteEndpoint_ConcurrentDeletes_AreAllAnswered() throws {
        let up = try ScriptedServer.answering()
        let h = try Self.harness(up)
        var ids: [String] = []
        for _ in 0..<400 {
            let ep = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:9/hook\"}")
            ids.append(try #require(ep.object["id"] as? String, "\(ep.text)"))
        }
        for id in ids {
            let conns = try [h.connect(timeout: .seconds(30)), h.connect(timeout: .seconds(30))]
            for c in conns { #expect(c.write("DELETE /callbacks/\(id) HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n")) }
            let meet = Rendezvous(parties: 2)
            let lock = NSLock()
            nonisolated(unsafe) var answers: [Int] = []
            DispatchQueue.concurrentPerform(iterations: 2) { i in
                meet.arrive(timeout: .seconds(30))
                _ = conns[i].write("\r\n")
                let r = conns[i].readResponse()
                lock.withLock { answers.append(r?.status ?? 0) }
                if let r, r.status == 404 {
                    #expect(r.header("content-type") == "application/problem+json")
                    #expect((r.object["detail"] as? String) == "no callback endpoint \(id)", "\(r.text)")
                }
                if let r, r.status == 409 {
                    #expect(r.header("content-type") == "application/problem+json")
                    #expect(r.header("retry-after") == "1")
                    #expect((r.object["detail"] as? String) == "a deletion of this endpoint is in progress; retry", "\(r.text)")
                }
            }
            // The second is `404` when the first's deletion was durable before it came,
            // `409` while that deletion was still being written.
            let sorted = lock.withLock { answers.sorted() }
            #expect(sorted == [204, 404] || sorted == [204, 409], "endpoint \(id): \(sorted) (0 is a request never answered)")
        }
        let list = try h.request("GET", "/callbacks")
        #expect((list.object["callbacks"] as? [Any])?.isEmpty == true, "\(list.text)")
    }

    /// A `410 Gone` answer disables the endpoint.
    @Test func gone_DisablesEndpoint() throws {
        let gate = Gate()  // the run outlasts its budget: the upstream answers after the 202
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let rx = try Self.receiver([410])
        let h = try Self.harness(up)
        let ep = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(rx.port)/gone\"}")
        let epID = try #require(ep.object["id"] as? String)
        #expect(try h.request("POST", "/slow", headers: [("Callback", epID)], body: "{\"n\":5}").status == 202)
        gate.open()
        #expect(eventually { (try? h.request("GET", "/callbacks/\(epID)"))?.object["disabled"] as? Bool == true })
        #expect(rx.requests.count == 1)
    }

    /// Same key and request: the finished run's response is replayed, the upstream called once.
    @Test func idempotency_ReplaysFinishedRun() throws {
        let up = try ScriptedServer.answering(body: "{\"charge\":\"ch_1\"}")
        let h = try Self.harness(up)
        let hdr = [("Idempotency-Key", "order-1"), ("Prefer", "wait=5")]
        let first = try h.request("POST", "/slow", headers: hdr, body: "{\"n\":1}")
        let second = try h.request("POST", "/slow", headers: hdr, body: "{\"n\":1}")
        #expect(first.status == 200)
        #expect(second.status == 200)
        #expect(second.header("idempotent-replayed") == "true")
        #expect(first.header("idempotent-replayed") == nil)
        #expect(second.body == first.body)
        #expect(up.requests.count == 1)
    }

    /// An empty `Idempotency-Key` is a 400, not "no key".
    @Test func idempotency_EmptyKey_Is400() throws {
        let up = try ScriptedServer.answering()
        let h = try Self.harness(up)
        let r = try h.request("POST", "/slow", headers: [("Idempotency-Key", ""), ("Prefer", "wait=5")], body: "{\"n\":1}")
        #expect(r.status == 400)
        #expect(up.requests.isEmpty)
    }

    /// Two `Idempotency-Key` headers are a 400 before any upstream call, not the first
    /// key silently: a retry sending the second alone must not find a run it never started.
    @Test func idempotency_TwoKeyHeaders_Is400() throws {
        let up = try ScriptedServer.answering()
        let h = try Self.harness(up)
        let r = try h.request("POST", "/slow", headers: [("Idempotency-Key", "a"), ("Idempotency-Key", "b"), ("Prefer", "wait=5")], body: "{\"n\":1}")
        #expect(r.status == 400)
        #expect(up.requests.isEmpty)
        // Neither key was recorded: each alone starts its own run.
        #expect(try h.request("POST", "/slow", headers: [("Idempotency-Key", "a"), ("Prefer", "wait=5")], body: "{\"n\":1}").header("idempotent-replayed") == nil)
        #expect(try h.request("POST", "/slow", headers: [("Idempotency-Key", "b"), ("Prefer", "wait=5")], body: "{\"n\":1}").header("idempotent-replayed") == nil)
        #expect(up.requests.count == 2)
    }

    /// An attached duplicate's `202` says which of its own preferences was honoured
    /// (`Preference-Applied`, SPEC §3), as the first caller's does.
    @Test func idempotency_AttachedDuplicate_202_SaysPreferenceApplied() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try Self.harness(up)
        let first = try h.request("POST", "/slow", headers: [("Idempotency-Key", "pa"), ("Prefer", "respond-async")], body: "{\"n\":1}")
        #expect(first.status == 202)
        #expect(first.header("preference-applied") == "respond-async")
        for (prefer, applied) in [("respond-async", "respond-async"), ("wait=1", "wait=1")] {
            let dup = try h.request("POST", "/slow", headers: [("Idempotency-Key", "pa"), ("Prefer", prefer)], body: "{\"n\":1}")
            #expect(dup.status == 202)
            #expect(dup.object["job_id"] as? String == first.object["job_id"] as? String)
            #expect(dup.header("preference-applied") == applied, "\(prefer)")
        }
        let plain = try h.request("POST", "/slow", headers: [("Idempotency-Key", "pa")], body: "{\"n\":1}")
        #expect(plain.status == 202)
        #expect(plain.header("preference-applied") == nil)
        gate.open()
        #expect(up.requests.count == 1)
    }

    /// Same key, different body: 422, and no new upstream call.
    @Test func idempotency_DifferentRequest_Is422() throws {
        let up = try ScriptedServer.answering()
        let h = try Self.harness(up)
        #expect(try h.request("POST", "/slow", headers: [("Idempotency-Key", "k2"), ("Prefer", "wait=5")], body: "{\"n\":1}").status == 200)
        let r = try h.request("POST", "/slow", headers: [("Idempotency-Key", "k2"), ("Prefer", "wait=5")], body: "{\"n\":2}")
        #expect(r.status == 422)
        #expect(up.requests.count == 1)
    }

    /// A duplicate arriving while the run goes attaches to it: after its own budget it gets the same 202 and job id.
    @Test func idempotency_AttachesToRunningRun() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(900))
        let h = try Self.harness(up)
        let hdr = [("Idempotency-Key", "k3")]
        let first = try h.request("POST", "/slow", headers: hdr, body: "{\"n\":1}")
        #expect(first.status == 202)
        let second = try h.request("POST", "/slow", headers: hdr, body: "{\"n\":1}")
        #expect(second.status == 202)
        #expect(second.object["job_id"] as? String == first.object["job_id"] as? String)
        let id = try #require(first.object["job_id"] as? String)
        #expect(try h.request("GET", "/jobs/\(id)?wait=5").object["status"] as? String == "succeeded")
        let third = try h.request("POST", "/slow", headers: hdr, body: "{\"n\":1}")
        #expect(third.status == 200)
        #expect(third.header("idempotent-replayed") == "true")
        #expect(up.requests.count == 1)
    }

    /// A duplicate whose budget ends before the original caller's (here it asks for
    /// `respond-async`; the original waits up to 30 s) gets its `202` for a job that
    /// exists: the run becomes a durable job for it — `/jobs/{id}` knows it at once —
    /// while the original caller keeps waiting and still gets the run's own answer; the
    /// job then shows that result. Before, the `202` named a job that was never
    /// journaled nor registered: `404` at `/jobs/{id}`, and gone after a crash.
    @Test func idempotency_DuplicateWithShorterBudget_Gets202ForADurableJob() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try Self.harness(up)
        let body = "{\"n\":2}"
        nonisolated(unsafe) var original: RawMessage?
        let done = DispatchSemaphore(value: 0)
        Thread {
            original = try? h.request("POST", "/slow", headers: [("Idempotency-Key", "k4"), ("Prefer", "wait=30")], body: body)
            done.signal()
        }.start()
        #expect(eventually { up.requests.count == 1 })
        let duplicate = try h.request("POST", "/slow", headers: [("Idempotency-Key", "k4"), ("Prefer", "respond-async")], body: body)
        #expect(duplicate.status == 202, "\(duplicate.text)")
        let id = try #require(duplicate.object["job_id"] as? String)
        let running = try h.request("GET", "/jobs/\(id)")
        #expect(running.status == 200, "\(running.text)")
        #expect(running.object["status"] as? String == "running")

        gate.open()
        done.wait()
        #expect(original?.status == 200, "\(original?.text ?? "no answer")")
        let job = try h.request("GET", "/jobs/\(id)?wait=5")
        #expect(job.status == 200, "\(job.text)")
        #expect(job.object["status"] as? String == "succeeded")
        #expect(up.requests.count == 1)
    }

    /// The same with a `Callback-URL` on the original request: the run became a job for
    /// the duplicate, but the original caller got the run's own answer in time, so no
    /// callback is sent (SPEC §4) — none pending, none received — and the job shows
    /// the result. (`CrashRecoveryTests` checks the same across a SIGKILL.)
    @Test func idempotency_DuplicateWithShorterBudget_OriginalAnsweredInTime_SendsNoCallback() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let rx = try Self.receiver([204])
        let h = try Self.harness(up)
        let body = "{\"n\":3}"
        nonisolated(unsafe) var original: RawMessage?
        let done = DispatchSemaphore(value: 0)
        Thread {
            original = try? h.request("POST", "/slow", headers: [("Idempotency-Key", "k5"), ("Prefer", "wait=30"),
                                                                 ("Callback-URL", "http://127.0.0.1:\(rx.port)/hook")], body: body)
            done.signal()
        }.start()
        #expect(eventually(timeout: .seconds(30)) { up.requests.count == 1 })
        let duplicate = try h.request("POST", "/slow", headers: [("Idempotency-Key", "k5"), ("Prefer", "respond-async")], body: body)
        #expect(duplicate.status == 202, "\(duplicate.text)")
        let id = try #require(duplicate.object["job_id"] as? String)

        gate.open()
        done.wait()
        #expect(original?.status == 200, "\(original?.text ?? "no answer")")
        let job = try h.request("GET", "/jobs/\(id)?wait=30")
        #expect(job.object["status"] as? String == "succeeded", "\(job.text)")
        usleep(500_000)  // a delivery would have been made by now
        let pending = try Exposition(try h.request("GET", "/metrics").text).value("switchboard_callbacks_pending", [:])
        #expect(pending == 0)
        #expect(rx.requests.isEmpty, "callback sent for a job whose caller got the answer: \(rx.requests.map(\.text))")
    }

    /// Concurrent requests with one key call the upstream exactly once.
    @Test func idempotency_ConcurrentRequests_CallUpstreamOnce() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(200))
        let h = try Self.harness(up)
        let statuses = Counter()
        DispatchQueue.concurrentPerform(iterations: 6) { _ in
            if let r = try? h.request("POST", "/slow", headers: [("Idempotency-Key", "race"), ("Prefer", "wait=3")], body: "{\"n\":9}"), r.status == 200 {
                _ = statuses.increment()
            }
        }
        #expect(statuses.value == 6)
        #expect(up.requests.count == 1)
    }

    /// With API keys: a missing or wrong key is 401 with a `WWW-Authenticate` challenge;
    /// another caller's job is 404; the owner sees it.
    @Test func apiKeys_IsolateCallers() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(300))
        let h = try Self.harness(up, keys: [("shop", "key-shop"), ("crm", "key-crm")])
        // A 401 names the scheme to use (RFC 9110 §11.6.1), and says when the key was wrong (RFC 6750 §3).
        let missing = try h.request("POST", "/slow", body: "{\"n\":1}")
        #expect(missing.status == 401 && missing.header("www-authenticate") == "Bearer")
        let wrong = try h.request("POST", "/slow", headers: [("Authorization", "Bearer nope")], body: "{\"n\":1}")
        #expect(wrong.status == 401 && wrong.header("www-authenticate") == "Bearer error=\"invalid_token\"")
        let r = try h.request("POST", "/slow", headers: [("Authorization", "Bearer key-shop")], body: "{\"n\":1}")
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        #expect(try h.request("GET", "/jobs/\(id)", headers: [("Authorization", "Bearer key-crm")]).status == 404)
        #expect(try h.request("GET", "/jobs/\(id)", headers: [("Authorization", "Bearer key-shop")]).status == 200)
        let ep = try h.request("POST", "/callbacks", headers: [("Authorization", "Bearer key-shop")], body: "{\"url\": \"http://127.0.0.1:9/x\"}")
        let epID = try #require(ep.object["id"] as? String)
        #expect(try h.request("GET", "/callbacks/\(epID)", headers: [("Authorization", "Bearer key-crm")]).status == 404)
        #expect(try h.request("GET", "/metrics").status == 401)
    }

    /// Two `Authorization` headers are refused (`400`, RFC 6750 `invalid_request`) in
    /// either order, even when one holds a valid key: the first one must not decide
    /// whose jobs the request sees.
    @Test func apiKeys_TwoAuthorizationHeaders_AreRefused() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(300))
        let h = try Self.harness(up, keys: [("shop", "key-shop"), ("crm", "key-crm")])
        let r = try h.request("POST", "/slow", headers: [("Authorization", "Bearer key-shop")], body: "{\"n\":1}")
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        for pair in [("key-shop", "key-crm"), ("key-crm", "key-shop"), ("key-shop", "key-shop")] {
            let twice = try h.request("GET", "/jobs/\(id)", headers: [("Authorization", "Bearer \(pair.0)"), ("Authorization", "Bearer \(pair.1)")])
            #expect(twice.status == 400, "\(pair)")
            #expect(twice.header("www-authenticate") == "Bearer error=\"invalid_request\"")
        }
        let run = try h.request("POST", "/slow", headers: [("Authorization", "Bearer key-crm"), ("Authorization", "Bearer key-shop")], body: "{\"n\":2}")
        #expect(run.status == 400)
        #expect(try h.request("GET", "/jobs/\(id)", headers: [("Authorization", "Bearer key-shop")]).status == 200)
        #expect(up.requests.count == 1)
    }
}
