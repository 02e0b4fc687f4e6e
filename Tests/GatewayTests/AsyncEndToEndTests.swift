import Foundation
import Testing
import TestSupport

/// The wait budget and the switch of an in-flight run to async mode (SPEC §3).
@Suite struct AsyncEndToEndTests {
    static func slowRoute(wait: String = "200ms", maxWait: String = "5s") -> String {
        routeJSON(["name": "slow", "method": "POST", "path": "/slow", "wait": wait, "max_wait": maxWait,
                   "steps": [["id": "work", "request": ["method": "POST", "url": "{{env.U}}/work", "body": ["n": "{{request.body.n}}"]], "timeout": "5s"]],
                   "response": ["status": 200, "body": ["result": "{{steps.work.body}}"]]])
    }

    /// When the run outlasts the wait budget the caller gets 202 at the budget (not before,
    /// and while the upstream still holds its answer), the upstream is called once, and the
    /// job later holds exactly the response a sync caller gets.
    @Test func waitBudget_Gives202_ThenJobHoldsSyncResponse() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(body: "{\"done\":true}", heldBy: gate)
        let h = try GatewayHarness(routes: ["s.json": Self.slowRoute()], env: ["U": "http://127.0.0.1:\(up.port)"])
        let start = ContinuousClock.now
        let accepted = try h.request("POST", "/slow", body: "{\"n\": 1}")
        let elapsed = ContinuousClock.now - start
        #expect(up.answered == 0)
        gate.open()
        #expect(accepted.status == 202)
        #expect(elapsed >= .milliseconds(190))
        let id = try #require(accepted.object["job_id"] as? String)
        #expect(id.count >= 32)
        #expect(accepted.header("location") == "/jobs/\(id)")
        #expect(accepted.header("retry-after") != nil)
        #expect(accepted.object["status"] as? String == "running")
        #expect(accepted.object["status_url"] as? String == "/jobs/\(id)")

        let job = try h.request("GET", "/jobs/\(id)?wait=5")
        #expect(job.status == 200)
        #expect(job.object["status"] as? String == "succeeded")
        #expect(job.object["route"] as? String == "slow")
        let resp = try #require(job.object["response"] as? [String: Any])
        #expect(resp["status"] as? Int == 200)

        let sync = try h.request("POST", "/slow", headers: [("Prefer", "wait=5")], body: "{\"n\": 1}")
        #expect(sync.status == 200)
        #expect(sync.header("preference-applied") == "wait=5")
        let syncBody = sync.object as NSDictionary
        #expect((resp["body"] as? NSDictionary) == syncBody)
        #expect(up.requests.count == 2)
    }

    /// `Prefer: respond-async` answers 202 at once and says so in `Preference-Applied`.
    /// (The upstream holds its answer until the 202 is in; a gateway that ignored the
    /// preference would answer only at the 5 s budget, which the bound tells apart with
    /// seconds to spare even under a sanitizer.)
    @Test func preferRespondAsync_Gives202AtOnce() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try GatewayHarness(routes: ["s.json": Self.slowRoute(wait: "5s")], env: ["U": "http://127.0.0.1:\(up.port)"])
        let start = ContinuousClock.now
        let r = try h.request("POST", "/slow", headers: [("Prefer", "respond-async")], body: "{\"n\": 2}")
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(up.answered == 0)
        gate.open()
        #expect(r.status == 202)
        #expect(r.header("preference-applied") == "respond-async")
        let id = try #require(r.object["job_id"] as? String)
        let job = try h.request("GET", "/jobs/\(id)?wait=5")
        #expect(job.object["status"] as? String == "succeeded")
    }

    /// `Prefer: wait=N` is capped at the route's `max_wait`.
    @Test func preferWait_IsCappedAtMaxWait() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try GatewayHarness(routes: ["s.json": Self.slowRoute(wait: "100ms", maxWait: "1s")], env: ["U": "http://127.0.0.1:\(up.port)"])
        let start = ContinuousClock.now
        let r = try h.request("POST", "/slow", headers: [("Prefer", "wait=30")], body: "{\"n\": 3}")
        let elapsed = ContinuousClock.now - start
        #expect(up.answered == 0)
        #expect(r.status == 202)
        #expect(r.header("preference-applied") == "wait=1")
        #expect(elapsed >= .milliseconds(950))
    }

    /// A job that is still running reports `running` without a response; an unknown id is 404.
    @Test func jobStatus_RunningThenUnknown() throws {
        let gate = Gate()
        defer { gate.open() }
        let up = try ScriptedServer.answering(heldBy: gate)
        let h = try GatewayHarness(routes: ["s.json": Self.slowRoute(wait: "100ms")], env: ["U": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("POST", "/slow", body: "{\"n\": 4}")
        let id = try #require(r.object["job_id"] as? String)
        let running = try h.request("GET", "/jobs/\(id)")
        #expect(running.object["status"] as? String == "running")
        #expect(running.object["response"] == nil)
        #expect(running.object["created_at"] is String)
        #expect(try h.request("GET", "/jobs/0123456789abcdef0123456789abcdef").status == 404)
    }
}
