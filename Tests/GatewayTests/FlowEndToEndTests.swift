import Crypto
import Foundation
import Gateway
import Glibc
import JSON
import Testing
import TestSupport

/// End-to-end: real gateway, real sockets, real libcurl, real upstream servers on 127.0.0.1:0.
@Suite struct FlowEndToEndTests {
    /// Three independent steps run concurrently: no upstream answers until all three
    /// hold their request.
    @Test func fanOut_RunsStepsConcurrently() throws {
        let meeting = Rendezvous(parties: 3)
        let a = try ScriptedServer.answering(body: "{\"v\":\"a\"}", meeting: meeting)
        let b = try ScriptedServer.answering(body: "{\"v\":\"b\"}", meeting: meeting)
        let c = try ScriptedServer.answering(body: "{\"v\":\"c\"}", meeting: meeting)
        let route = routeJSON([
            "name": "fan", "method": "GET", "path": "/fan",
            "steps": ["a", "b", "c"].map { ["id": $0, "request": ["method": "GET", "url": "{{env.\($0.uppercased())}}/x"], "timeout": "20s"] },
        ])
        let h = try GatewayHarness(routes: ["fan.json": route], env: ["A": "http://127.0.0.1:\(a.port)", "B": "http://127.0.0.1:\(b.port)", "C": "http://127.0.0.1:\(c.port)"])
        let r = try h.request("GET", "/fan")
        #expect(meeting.everyPartyMet)
        #expect(r.status == 200)
        let steps = r.object["steps"] as? [String: Any]
        #expect((steps?["b"] as? [String: Any])?["status"] as? Int == 200)
        #expect(((steps?["c"] as? [String: Any])?["body"] as? [String: Any])?["v"] as? String == "c")
    }

    static func checkoutRoute() -> String {
        routeJSON([
            "name": "checkout", "method": "POST", "path": "/checkout/{order}",
            "steps": [
                ["id": "payment", "request": ["method": "POST", "url": "{{env.PAY}}/payments",
                                              "headers": ["Idempotency-Key": "{{step.idempotency_key}}"],
                                              "body": ["amount": "{{request.body.amount}}", "order": "{{request.path.order}}"]],
                 "timeout": "2s"],
                ["id": "fulfillment", "after": ["payment"], "when": ["steps.payment.body.status": "succeeded"],
                 "request": ["method": "POST", "url": "{{env.SHIP}}/shipments", "body": ["payment": "{{steps.payment.body.id}}"]],
                 "timeout": "2s"],
            ],
        ])
    }

    /// After a declined payment (402) the fulfillment upstream receives no call, and the caller gets a 502 naming the step.
    @Test func ordering_DeclinedPayment_NeverCallsFulfillment() throws {
        let pay = try ScriptedServer.answering(status: 402, body: "{\"id\":\"pay_1\",\"status\":\"declined\"}")
        let ship = try ScriptedServer.answering(status: 201, body: "{\"id\":\"shp_1\"}")
        let h = try GatewayHarness(routes: ["c.json": Self.checkoutRoute()], env: ["PAY": "http://127.0.0.1:\(pay.port)", "SHIP": "http://127.0.0.1:\(ship.port)"])
        let r = try h.request("POST", "/checkout/7", body: "{\"amount\": 42}")
        #expect(r.status == 502)
        #expect(r.header("content-type") == "application/problem+json")
        #expect(r.object["step"] as? String == "payment")
        #expect(r.object["upstream_status"] as? Int == 402)
        #expect((r.object["upstream_body"] as? [String: Any])?["status"] as? String == "declined")
        usleep(100_000)
        #expect(pay.requests.count == 1)
        #expect(ship.requests.isEmpty)
    }

    /// A successful payment is followed by fulfillment with the payment id; the number stays a number upstream.
    @Test func ordering_SucceededPayment_CallsFulfillmentWithTypedValues() throws {
        let pay = try ScriptedServer.answering(body: "{\"id\":\"pay_9\",\"status\":\"succeeded\"}")
        let ship = try ScriptedServer.answering(status: 201, body: "{\"id\":\"shp_1\"}")
        let h = try GatewayHarness(routes: ["c.json": Self.checkoutRoute()], env: ["PAY": "http://127.0.0.1:\(pay.port)", "SHIP": "http://127.0.0.1:\(ship.port)"])
        let r = try h.request("POST", "/checkout/7", body: "{\"amount\": 42}")
        #expect(r.status == 200)
        let payBody = try #require(pay.requests.first?.json as? [String: Any])
        #expect(payBody["amount"] as? Int == 42)
        #expect(pay.requests.first?.text.contains("\"amount\":42") == true)
        #expect(payBody["order"] as? String == "7")
        #expect(pay.requests.first?.header("idempotency-key")?.isEmpty == false)
        #expect((ship.requests.first?.json as? [String: Any])?["payment"] as? String == "pay_9")
    }

    /// A `when` that does not hold skips the step; the default response lists it as skipped.
    @Test func when_NotHolding_SkipsStep() throws {
        let pay = try ScriptedServer.answering(body: "{\"id\":\"pay_2\",\"status\":\"pending\"}")
        let ship = try ScriptedServer.answering(status: 201, body: "{\"id\":\"shp_1\"}")
        let h = try GatewayHarness(routes: ["c.json": Self.checkoutRoute()], env: ["PAY": "http://127.0.0.1:\(pay.port)", "SHIP": "http://127.0.0.1:\(ship.port)"])
        let r = try h.request("POST", "/checkout/8", body: "{\"amount\": 1}")
        #expect(r.status == 200)
        let steps = try #require(r.object["steps"] as? [String: Any])
        #expect((steps["fulfillment"] as? [String: Any])?["status"] as? String == "skipped")
        #expect(ship.requests.isEmpty)
    }

    /// A step timeout answers 504 at the deadline, not when the slow upstream finally replies.
    @Test func stepTimeout_Answers504AtDeadline() throws {
        let slow = try ScriptedServer.answering(delay: .seconds(4))
        let route = routeJSON(["name": "slow", "method": "GET", "path": "/slow",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "300ms"]]])
        let h = try GatewayHarness(routes: ["s.json": route], env: ["U": "http://127.0.0.1:\(slow.port)"])
        let start = ContinuousClock.now
        let r = try h.request("GET", "/slow")
        #expect(r.status == 504)
        #expect(r.object["step"] as? String == "s")
        #expect(r.object["upstream_status"] == nil)
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    /// Retries stop after `attempts`: an always-503 upstream is called exactly 3 times, then 502.
    @Test func retry_RespectsAttempts() throws {
        let up = try ScriptedServer.answering(status: 503, body: "{\"e\":1}")
        let route = routeJSON(["name": "r", "method": "GET", "path": "/r",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s",
                                          "retry": ["attempts": 3, "backoff": "10ms", "on": [503]]]]])
        let h = try GatewayHarness(routes: ["r.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/r")
        #expect(r.status == 502)
        #expect(r.object["upstream_status"] as? Int == 503)
        #expect(up.requests.count == 3)
    }

    /// Retries stop at `retry.within`: with 10 attempts allowed, a 400 ms window admits only a few.
    @Test func retry_StopsAtWithinDeadline() throws {
        let up = try ScriptedServer.answering(status: 503)
        let route = routeJSON(["name": "r", "method": "GET", "path": "/r",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s",
                                          "retry": ["attempts": 10, "backoff": "100ms", "within": "400ms", "on": [503]]]]])
        let h = try GatewayHarness(routes: ["r.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        let start = ContinuousClock.now
        let r = try h.request("GET", "/r")
        #expect(r.status == 502)
        #expect(up.requests.count >= 2)
        #expect(up.requests.count < 10)
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    /// A status not listed in `retry.on` is not retried.
    @Test func retry_SkipsStatusNotListed() throws {
        let up = try ScriptedServer.answering(status: 500)
        let route = routeJSON(["name": "r", "method": "GET", "path": "/r",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s",
                                          "retry": ["attempts": 3, "backoff": "10ms", "on": [503]]]]])
        let h = try GatewayHarness(routes: ["r.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        #expect(try h.request("GET", "/r").status == 502)
        #expect(up.requests.count == 1)
    }

    /// A flaky upstream that fails twice then succeeds gives the caller the success.
    @Test func retry_RecoversFromTransientFailures() throws {
        let counter = Counter()
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let n = counter.increment()
                let status = n <= 2 ? 503 : 200
                conn.write("HTTP/1.1 \(status) X\r\nContent-Length: 11\r\n\r\n{\"n\":\(n)    }".prefix(100).description)
            }
        }
        let route = routeJSON(["name": "r", "method": "GET", "path": "/r",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s",
                                          "retry": ["attempts": 5, "backoff": "10ms", "on": [503]]]]])
        let h = try GatewayHarness(routes: ["r.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        #expect(try h.request("GET", "/r").status == 200)
        #expect(up.requests.count == 3)
    }

    /// A value from `{{env.*}}` echoed back by a failing upstream never reaches the caller's problem body.
    @Test func envSecret_NeverAppearsInProblemBody() throws {
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let auth = req.header("authorization") ?? ""
                let body = "{\"error\":\"bad token \(auth)\"}"
                conn.write("HTTP/1.1 500 X\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            }
        }
        let route = routeJSON(["name": "s", "method": "GET", "path": "/s",
                               "steps": [["id": "crm", "request": ["method": "GET", "url": "{{env.U}}/",
                                                                    "headers": ["Authorization": "Bearer {{env.CRM_TOKEN}}"]],
                                          "timeout": "1s"]]])
        let secret = "sk_live_TOPSECRET_12345"
        let h = try GatewayHarness(routes: ["s.json": route], env: ["U": "http://127.0.0.1:\(up.port)", "CRM_TOKEN": secret])
        let r = try h.request("GET", "/s")
        #expect(r.status == 502)
        #expect(up.requests.first?.header("authorization") == "Bearer \(secret)")
        #expect(!r.text.contains(secret))
        #expect(r.text.contains("[redacted]"))
    }

    /// Short env values (a flag, a year, a region) are not secrets: an upstream JSON body
    /// holding them reaches the caller byte for byte.
    @Test func envShortValues_LeaveUpstreamJSONUnchanged() throws {
        let upstreamBody = #"{"ok":true,"year":2024,"region":"eu-west","port":50051}"#
        let up = try ScriptedServer.answering(body: upstreamBody)
        let route = routeJSON(["name": "f", "method": "GET", "path": "/f",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/",
                                                                  "headers": ["X-Flag": "{{env.FLAG}}", "X-Year": "{{env.YEAR}}",
                                                                              "X-Region": "{{env.REGION}}", "X-Port": "{{env.PORT}}"]],
                                          "timeout": "1s"]],
                               "response": ["status": 200, "body": "{{steps.s.body}}"]])
        let h = try GatewayHarness(routes: ["f.json": route], env: ["U": "http://127.0.0.1:\(up.port)", "FLAG": "true", "YEAR": "2024",
                                                                    "REGION": "eu-west", "PORT": "50051"])
        let r = try h.request("GET", "/f")
        #expect(r.status == 200)
        #expect(up.requests.first?.header("x-flag") == "true")
        #expect(r.text == upstreamBody)
    }

    /// A secret echoed by the upstream as a JSON number is redacted from the default
    /// response and from a problem body, and both stay valid JSON.
    @Test func envSecret_InJSONNumber_IsRedacted_AndBodyStaysJSON() throws {
        let secret = "12345678901"
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let account = req.header("x-account") ?? ""
                let body = "{\"account\":\(account),\"note\":\"acct \(account)\",\"ok\":true}"
                let status = req.target == "/fail" ? 500 : 200
                conn.write("HTTP/1.1 \(status) X\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            }
        }
        let route = routeJSON(["name": "a", "method": "GET", "path": "/a/{mode}",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/{{request.path.mode}}",
                                                                  "headers": ["X-Account": "{{env.ACCOUNT}}"]],
                                          "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["a.json": route], env: ["U": "http://127.0.0.1:\(up.port)", "ACCOUNT": secret])

        let ok = try h.request("GET", "/a/ok")
        #expect(ok.status == 200)
        #expect(up.requests.first?.header("x-account") == secret)
        #expect(ok.text == #"{"steps":{"s":{"status":200,"body":{"account":"[redacted]","note":"acct [redacted]","ok":true}}}}"#)
        #expect((try? JSON.parse(ok.body)) != nil)

        let failed = try h.request("GET", "/a/fail")
        #expect(failed.status == 502)
        #expect(failed.header("content-type") == "application/problem+json")
        #expect(!failed.text.contains(secret))
        #expect((try? JSON.parse(failed.body)) != nil)
        #expect((failed.object["upstream_body"] as? [String: Any])?["account"] as? String == "[redacted]")
        #expect((failed.object["upstream_body"] as? [String: Any])?["ok"] as? Bool == true)
    }

    /// Garbage from an upstream gives a 502 naming the step, and the gateway keeps serving.
    @Test func garbageUpstream_Gives502_AndGatewayKeepsServing() throws {
        let bad = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            conn.write("NOT HTTP AT ALL\r\n\r\n")
            shutdown(conn.fd, Int32(SHUT_RDWR))  // the descriptor itself is closed once, by RawConnection
        }
        let good = try ScriptedServer.answering()
        let route = routeJSON(["name": "g", "method": "GET", "path": "/g",
                               "steps": [["id": "broken", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s"]]])
        let ok = routeJSON(["name": "ok", "method": "GET", "path": "/ok",
                            "steps": [["id": "fine", "request": ["method": "GET", "url": "{{env.V}}/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["g.json": route, "ok.json": ok], env: ["U": "http://127.0.0.1:\(bad.port)", "V": "http://127.0.0.1:\(good.port)"])
        let r = try h.request("GET", "/g")
        #expect(r.status == 502)
        #expect(r.object["step"] as? String == "broken")
        #expect(r.object["error"] as? String == "protocol")
        #expect(try h.request("GET", "/ok").status == 200)
    }

    /// An upstream that closes mid-body gives a 502 naming the step.
    @Test func upstreamClosingMidBody_Gives502() throws {
        let bad = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            conn.write("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"half\":")
            shutdown(conn.fd, Int32(SHUT_RDWR))
        }
        let route = routeJSON(["name": "g", "method": "GET", "path": "/g",
                               "steps": [["id": "half", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["g.json": route], env: ["U": "http://127.0.0.1:\(bad.port)"])
        let r = try h.request("GET", "/g")
        #expect(r.status == 502)
        #expect(r.object["step"] as? String == "half")
    }

    /// A refused connection gives a 502 with error kind `connect` and no upstream status.
    @Test func refusedConnection_Gives502Connect() throws {
        let gone = try ScriptedServer.answering()
        let port = gone.port
        gone.stop()
        let route = routeJSON(["name": "g", "method": "GET", "path": "/g",
                               "steps": [["id": "down", "request": ["method": "GET", "url": "http://127.0.0.1:\(port)/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["g.json": route])
        let r = try h.request("GET", "/g")
        #expect(r.status == 502)
        #expect(r.object["error"] as? String == "connect")
        #expect(r.object["upstream_status"] == nil)
    }

    /// An optional step that fails leaves a partial result, marked as such.
    @Test func optionalStepFailure_GivesPartialResult() throws {
        let good = try ScriptedServer.answering(body: "{\"x\":1}")
        let bad = try ScriptedServer.answering(status: 500)
        let route = routeJSON(["name": "p", "method": "GET", "path": "/p",
                               "steps": [["id": "main", "request": ["method": "GET", "url": "{{env.G}}/"], "timeout": "1s"],
                                         ["id": "extra", "optional": true, "request": ["method": "GET", "url": "{{env.B}}/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["p.json": route], env: ["G": "http://127.0.0.1:\(good.port)", "B": "http://127.0.0.1:\(bad.port)"])
        let r = try h.request("GET", "/p")
        #expect(r.status == 200)
        #expect(r.object["partial"] as? Bool == true)
        #expect(r.header("switchboard-partial") == "true")
        let steps = try #require(r.object["steps"] as? [String: Any])
        #expect((steps["extra"] as? [String: Any])?["status"] as? String == "failed")
    }

    /// A templated response composes step values, keeping their JSON types; skipped steps render as null.
    @Test func templatedResponse_ComposesStepValues() throws {
        let a = try ScriptedServer.answering(body: "{\"n\":5,\"tags\":[\"x\"]}")
        let route = routeJSON(["name": "t", "method": "GET", "path": "/t/{id}",
                               "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.A}}/"], "timeout": "1s"],
                                         ["id": "never", "after": ["a"], "when": ["steps.a.body.n": 6],
                                          "request": ["method": "GET", "url": "{{env.A}}/"], "timeout": "1s"]],
                               "response": ["status": 201, "headers": ["X-Id": "{{request.path.id}}"],
                                            "body": ["n": "{{steps.a.body.n}}", "tags": "{{steps.a.body.tags}}",
                                                     "label": "item-{{request.path.id}}", "skipped": "{{steps.never.body}}"]]])
        let h = try GatewayHarness(routes: ["t.json": route], env: ["A": "http://127.0.0.1:\(a.port)"])
        let r = try h.request("GET", "/t/77")
        #expect(r.status == 201)
        #expect(r.header("x-id") == "77")
        #expect(r.object["n"] as? Int == 5)
        #expect(r.object["tags"] as? [String] == ["x"])
        #expect(r.object["label"] as? String == "item-77")
        #expect(r.object["skipped"] is NSNull)
        #expect(a.requests.count == 1)
    }

    /// Unknown paths get 404 and wrong methods 405 with `Allow`, both as problems.
    @Test func routing_UnknownPathIs404_WrongMethodIs405() throws {
        let route = routeJSON(["name": "c", "method": "POST", "path": "/c", "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:1/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["c.json": route])
        let nf = try h.request("GET", "/nothing")
        #expect(nf.status == 404)
        #expect(nf.header("content-type") == "application/problem+json")
        let na = try h.request("GET", "/c")
        #expect(na.status == 405)
        #expect(na.header("allow") == "POST")
    }

    /// A route that reads the body refuses a non-JSON body with 400; one that never reads it accepts any body.
    @Test func requestBody_ParsedOnlyWhenRead() throws {
        let up = try ScriptedServer.answering()
        let reads = routeJSON(["name": "r", "method": "POST", "path": "/reads", "steps": [["id": "s", "request": ["method": "POST", "url": "{{env.U}}/", "body": ["a": "{{request.body.a}}"]], "timeout": "1s"]]])
        let ignores = routeJSON(["name": "i", "method": "POST", "path": "/ignores", "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["r.json": reads, "i.json": ignores], env: ["U": "http://127.0.0.1:\(up.port)"])
        let bad = try h.request("POST", "/reads", body: "not json")
        #expect(bad.status == 400)
        #expect(bad.header("content-type") == "application/problem+json")
        #expect(try h.request("POST", "/ignores", body: "not json").status == 200)
        #expect(up.requests.count == 1)
    }

    /// A caller cannot steer the upstream host: path values are percent-encoded into the URL.
    @Test func callerValues_CannotChangeUpstreamHostOrPath() throws {
        let up = try ScriptedServer.answering()
        let route = routeJSON(["name": "u", "method": "GET", "path": "/u/{id}",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/items/{{request.path.id}}?q={{request.query.q}}"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["u.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/u/a%2F..%2Fadmin?q=x%26admin%3D1")
        #expect(r.status == 200)
        let target = try #require(up.requests.first?.target)
        #expect(target.hasPrefix("/items/"))
        #expect(!target.contains("/admin"))
        #expect(!target.contains("&admin"))
    }

    /// Several requests on one keep-alive connection are all answered, in order.
    @Test func keepAlive_ServesSequentialRequestsOnOneConnection() throws {
        let up = try ScriptedServer.answering(body: "{\"ok\":1}")
        let route = routeJSON(["name": "k", "method": "GET", "path": "/k/{n}",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/"], "timeout": "1s"]],
                               "response": ["status": 200, "body": ["n": "{{request.path.n}}"]]])
        let h = try GatewayHarness(routes: ["k.json": route], env: ["U": "http://127.0.0.1:\(up.port)"])
        let c = try h.connect()
        for i in 0..<5 {
            let r = try #require(c.request("GET", "/k/\(i)"))
            #expect(r.object["n"] as? String == "\(i)")
        }
    }

    /// `/healthz` and `/readyz` answer 200 without an API key even when keys are configured.
    @Test func health_NeedsNoKey() throws {
        let route = routeJSON(["name": "c", "method": "GET", "path": "/c", "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:1/"], "timeout": "1s"]]])
        let h = try GatewayHarness(routes: ["c.json": route]) { c in
            c.apiKeys = [.init(name: "shop", sha256: Array(repeating: 1, count: 32))]
        }
        #expect(try h.request("GET", "/healthz").status == 200)
        #expect(try h.request("GET", "/readyz").status == 200)
        #expect(try h.request("GET", "/c").status == 401)
    }
}

/// `Expect: 100-continue` (RFC 9110 §10.1.1): a request refused from its head alone gets
/// its final answer instead of `100 Continue`, so its body is never sent.
@Suite struct ExpectContinueTests {
    @Test func refusedHead_GetsItsAnswerInsteadOf100_AcceptedHeadGets100() throws {
        let up = try ScriptedServer.answering(body: "{\"charged\":true}")
        let route = routeJSON(["name": "pay", "method": "POST", "path": "/pay",
                               "steps": [["id": "p", "request": ["method": "POST", "url": "http://127.0.0.1:\(up.port)/p", "body": "{{request.body}}"], "timeout": "5s"]],
                               "response": ["status": 200, "body": "{{steps.p.body}}"]])
        let h = try GatewayHarness(routes: ["p.json": route]) { c in
            c.apiKeys = [APIKey(name: "shop", sha256: Crypto.sha256(Array("k1".utf8)))]
        }
        func send(_ head: String) throws -> RawConnection {
            let c = try h.connect()
            #expect(c.write(head + "Host: g\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"))
            return c
        }
        for (head, status) in [("POST /pay HTTP/1.1\r\n", 401),                                        // no key
                               ("POST /pay HTTP/1.1\r\nAuthorization: Bearer nope\r\n", 401),         // wrong key
                               ("POST /nowhere HTTP/1.1\r\nAuthorization: Bearer k1\r\n", 404),       // no route
                               ("PUT /pay HTTP/1.1\r\nAuthorization: Bearer k1\r\n", 405)] {          // wrong method
            let c = try send(head)
            let r = try #require(c.readResponse())
            #expect(r.status == status, "\(head)")
            #expect(r.header("content-type") == "application/problem+json")
            #expect(c.isClosedByPeer())
        }
        #expect(up.requests.isEmpty)

        let c = try send("POST /pay HTTP/1.1\r\nAuthorization: Bearer k1\r\n")
        #expect(c.readResponse()?.status == 100)
        #expect(c.write("{\"a\":123}"))
        let r = try #require(c.readResponse())
        #expect(r.status == 200)
        #expect(r.text == "{\"charged\":true}")
        #expect(up.requests.first?.body == Array("{\"a\":123}".utf8))
    }

    /// The gateway's own endpoints are classified from the head like routes: a method or
    /// path of the `/jobs`, `/callbacks` and operations endpoints that can never succeed
    /// gets its `404`/`405` instead of `100` (after the API key check, except for
    /// `/healthz` and `/readyz`); what may succeed still gets `100` and is served.
    @Test func gatewayEndpoints_RefusedFromHead_WhenNoBodyCouldSucceed() throws {
        let h = try GatewayHarness(routes: GatewayEndpointsTests.routes) { c in
            c.apiKeys = [APIKey(name: "shop", sha256: Crypto.sha256(Array("k1".utf8)))]
            c.callbackAllow = ["127.0.0.0/8"]
        }
        func send(_ head: String, length: Int = 9) throws -> RawConnection {
            let c = try h.connect()
            #expect(c.write(head + "Host: g\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: \(length)\r\n\r\n"))
            return c
        }
        let key = "Authorization: Bearer k1\r\n"
        for (head, status, allow) in [("PUT /jobs/abc HTTP/1.1\r\n" + key, 405, "GET, HEAD"),
                                      ("POST /jobs/abc HTTP/1.1\r\n" + key, 405, "GET, HEAD"),
                                      ("PUT /jobs/abc/redeliver HTTP/1.1\r\n" + key, 405, "POST"),
                                      ("POST /jobs HTTP/1.1\r\n" + key, 404, nil),
                                      ("POST /jobs/ HTTP/1.1\r\n" + key, 404, nil),
                                      ("POST /jobs/abc/other HTTP/1.1\r\n" + key, 404, nil),
                                      ("POST /callbacks/nope/whatever HTTP/1.1\r\n" + key, 404, nil),
                                      ("POST /callbacks/ HTTP/1.1\r\n" + key, 404, nil),
                                      ("PUT /callbacks HTTP/1.1\r\n" + key, 405, "GET, HEAD, POST"),
                                      ("PUT /callbacks/nope HTTP/1.1\r\n" + key, 405, "GET, HEAD, DELETE"),
                                      ("POST /callbacks/nope/deliveries HTTP/1.1\r\n" + key, 405, "GET, HEAD"),
                                      ("PUT /jobs/abc HTTP/1.1\r\n", 401, nil),                      // the key comes first
                                      ("POST /metrics HTTP/1.1\r\n", 401, nil),
                                      ("POST /metrics HTTP/1.1\r\n" + key, 405, "GET, HEAD"),
                                      ("POST /healthz HTTP/1.1\r\n", 405, "GET, HEAD"),               // never needs a key
                                      ("PUT /readyz HTTP/1.1\r\n", 405, "GET, HEAD")] as [(String, Int, String?)] {
            let c = try send(head)
            let r = try #require(c.readResponse(), "\(head)")
            #expect(r.status == status, "\(head)")
            #expect(r.header("content-type") == "application/problem+json", "\(head)")
            #expect(r.header("allow") == allow, "\(head)")
            #expect(c.isClosedByPeer(), "\(head)")
        }

        // Requests that may succeed get 100 and are answered after their body.
        let body = "{\"url\": \"http://127.0.0.1:9/hook\"}"
        let c = try send("POST /callbacks HTTP/1.1\r\n" + key, length: body.utf8.count)
        #expect(c.readResponse()?.status == 100)
        #expect(c.write(body))
        #expect(c.readResponse()?.status == 201)
        let redeliver = try send("POST /jobs/abc/redeliver HTTP/1.1\r\n" + key, length: 2)
        #expect(redeliver.readResponse()?.status == 100)
        #expect(redeliver.write("{}"))
        #expect(redeliver.readResponse()?.status == 404)  // no delivery for that job
    }
}

/// A thread-safe counter for scripted upstreams.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() -> Int { lock.withLock { n += 1; return n } }
    var value: Int { lock.withLock { n } }
}
