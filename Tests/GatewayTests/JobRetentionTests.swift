import Foundation
import Testing
import TestSupport

/// A finished job is kept for `job_retention` — across restarts — and then leaves
/// memory and the journal, so the data directory does not grow with history.
@Suite struct JobRetentionTests {
    @Test func expiredJob_IsDeletedFromTheJournal_AndNotBroughtBackByARestart() throws {
        let up = try ScriptedServer.answering(body: "{\"ok\":true}")
        let data = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let routes = ["s.json": AsyncEndToEndTests.slowRoute(wait: "5s")]
        let env = ["U": "http://127.0.0.1:\(up.port)"]
        func gateway(retention: Duration) throws -> GatewayHarness {
            try GatewayHarness(routes: routes, env: env) { $0.data = data; $0.jobRetention = retention }
        }

        // A finished async job survives a restart while its retention lasts.
        var id = ""
        do {
            let h = try gateway(retention: .seconds(3600))
            let r = try h.request("POST", "/slow", headers: [("Prefer", "respond-async")], body: "{\"n\": 1}")
            #expect(r.status == 202)
            id = try #require(r.object["job_id"] as? String)
            #expect(try h.request("GET", "/jobs/\(id)?wait=5").object["status"] as? String == "succeeded")
        }
        do {
            let h = try gateway(retention: .seconds(3600))
            let job = try h.request("GET", "/jobs/\(id)")
            #expect(job.status == 200)
            #expect(job.object["status"] as? String == "succeeded")
        }

        // Past a short retention the sweep drops it.
        do {
            let h = try gateway(retention: .milliseconds(200))
            var status = 0
            for _ in 0..<100 {
                status = try h.request("GET", "/jobs/\(id)").status
                if status == 404 { break }
                Thread.sleep(forTimeInterval: 0.1)
            }
            #expect(status == 404)
        }

        // With a long retention again, the journal no longer has it.
        let h = try gateway(retention: .seconds(3600))
        #expect(try h.request("GET", "/jobs/\(id)").status == 404)
        #expect(up.requests.count == 1)
    }
}
