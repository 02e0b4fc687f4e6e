import Foundation
import Routes
import Testing
import TestSupport
@testable import Gateway

/// A journaled job meets a changed route file after a restart: its journaled step
/// outcomes go to the steps they belong to, and a job whose route is gone waits
/// (saying so) until a reload brings the route back.
@Suite struct RouteChangeRecoveryTests {
    static func step(_ id: String, _ port: UInt16, after: [String] = []) -> [String: Any] {
        var s: [String: Any] = ["id": id, "request": ["method": "GET", "url": "http://127.0.0.1:\(port)/\(id)"], "timeout": "30s"]
        if !after.isEmpty { s["after"] = after }
        return s
    }

    static func write(_ name: String, steps: [[String: Any]], in dir: String) throws {
        try routeJSON(["name": name, "method": "POST", "path": "/\(name)", "wait": "0s", "steps": steps])
            .write(toFile: "\(dir)/\(name).json", atomically: true, encoding: .utf8)
    }

    /// A step is added in front of the others while a job is halfway (its first step
    /// journaled, its second in flight when the gateway stops). After the restart the
    /// journaled outcome still belongs to its own step — not to the new step now at its
    /// position — so the new step is called, the journaled one is not called again, and
    /// the one that was in flight is sent again.
    @Test func stepAddedBeforeJournaledOnes_OutcomesFollowTheirStepIDs() throws {
        let gate = Gate()
        let a = try ScriptedServer.answering(body: "{\"from\":\"a\"}")
        let b = try ScriptedServer.answering(body: "{\"from\":\"b\"}", heldBy: gate)
        let z = try ScriptedServer.answering(body: "{\"from\":\"z\"}")
        defer { gate.open() }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.write("order", steps: [Self.step("a", a.port), Self.step("b", b.port, after: ["a"])], in: dir)

        var jobID = ""
        do {
            let gateway = try CallbackDurabilityTests.start(dir: dir, data: "\(dir)/data")
            defer { gateway.shutdown() }
            let accepted = try #require(RawConnection(port: gateway.port).request("POST", "/order"))
            #expect(accepted.status == 202)
            jobID = try #require(accepted.object["job_id"] as? String)
            #expect(eventually { b.requests.count == 1 }, "step b never started")
        }
        // The new version: a step in front, then the old ones.
        try Self.write("order", steps: [Self.step("z", z.port), Self.step("a", a.port), Self.step("b", b.port, after: ["a"])], in: dir)
        gate.open()

        let gateway = try CallbackDurabilityTests.start(dir: dir, data: "\(dir)/data")
        defer { gateway.shutdown() }
        let job = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)?wait=10"))
        #expect(job.object["status"] as? String == "succeeded", "\(job.text)")
        let body = ((job.object["response"] as? [String: Any])?["body"] as? [String: Any])?["steps"] as? [String: Any]
        for id in ["z", "a", "b"] {
            let from = ((body?[id] as? [String: Any])?["body"] as? [String: Any])?["from"] as? String
            #expect(from == id, "step \(id) shows the outcome of \(from ?? "nothing"): \(job.text)")
        }
        #expect(z.requests.count == 1, "the new step was never called")
        #expect(a.requests.count == 1, "the journaled step was called again")
        #expect(b.requests.count == 2)
    }

    /// A job journaled on a route that the restarted gateway does not have: `GET
    /// /jobs/{id}` says so (`503`, not a `404` that reads as "lost"), and a reload that
    /// brings the route back resumes the job without another restart.
    @Test func routeMissingAtRestart_JobSaysSo_AndResumesWhenAReloadBringsItBack() throws {
        let gate = Gate()
        let up = try ScriptedServer.answering(body: "{\"ok\":true}", heldBy: gate)
        defer { gate.open() }
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.write("report", steps: [Self.step("build", up.port)], in: dir)
        try Self.write("other", steps: [Self.step("x", up.port)], in: dir)

        var jobID = ""
        do {
            let gateway = try CallbackDurabilityTests.start(dir: dir, data: "\(dir)/data")
            defer { gateway.shutdown() }
            let accepted = try #require(RawConnection(port: gateway.port).request("POST", "/report"))
            #expect(accepted.status == 202)
            jobID = try #require(accepted.object["job_id"] as? String)
            #expect(eventually { up.requests.count == 1 })
        }
        let file = "\(dir)/report.json"
        try FileManager.default.moveItem(atPath: file, toPath: "\(dir)/report.json.off")

        let gateway = try CallbackDurabilityTests.start(dir: dir, data: "\(dir)/data")
        defer { gateway.shutdown() }
        let waiting = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)"))
        #expect(waiting.status == 503, "\(waiting.text)")
        #expect((waiting.object["detail"] as? String)?.contains("report is not configured") == true, "\(waiting.text)")
        #expect(up.requests.count == 1)

        try FileManager.default.moveItem(atPath: "\(dir)/report.json.off", toPath: file)
        gateway.reload(routes: try RouteLoader.load(directory: dir, environment: [:]))
        gate.open()
        // Right after the reload, while the job is handed to a loop: found, not 404.
        let job = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)?wait=10"))
        #expect(job.status == 200, "\(job.text)")
        #expect(job.object["status"] as? String == "succeeded", "\(job.text)")
        #expect(up.requests.count == 2)
    }
}
