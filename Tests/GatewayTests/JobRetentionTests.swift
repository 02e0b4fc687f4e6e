import Foundation
import Gateway
import Glibc
import Routes
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

    /// A finished job whose route is no longer configured cannot be shown, but it still
    /// leaves the journal once its retention has passed (restoring the route then does
    /// not bring it back).
    @Test func expiredJobOfARemovedRoute_IsDeletedToo() throws {
        let up = try ScriptedServer.answering(body: "{\"ok\":true}")
        let data = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let env = ["U": "http://127.0.0.1:\(up.port)"]
        let slow = ["s.json": AsyncEndToEndTests.slowRoute(wait: "5s")]
        let other = ["o.json": routeJSON(["name": "other", "method": "GET", "path": "/other",
                                          "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.U}}/a"], "timeout": "5s"]]])]
        var id = ""
        do {
            let h = try GatewayHarness(routes: slow, env: env) { $0.data = data; $0.jobRetention = .seconds(3600) }
            let r = try h.request("POST", "/slow", headers: [("Prefer", "respond-async")], body: "{\"n\": 1}")
            id = try #require(r.object["job_id"] as? String)
            #expect(try h.request("GET", "/jobs/\(id)?wait=5").object["status"] as? String == "succeeded")
        }
        Thread.sleep(forTimeInterval: 0.3)
        // Without its route, and past a 100 ms retention: deleted at start-up.
        do { _ = try GatewayHarness(routes: other, env: env) { $0.data = data; $0.jobRetention = .milliseconds(100) } }
        // The route is back, with a long retention: the job is gone for good.
        let h = try GatewayHarness(routes: slow, env: env) { $0.data = data; $0.jobRetention = .seconds(3600) }
        #expect(try h.request("GET", "/jobs/\(id)").status == 404)
    }

    /// `serve` refuses a config file whose `job_retention` is under 1 ms (zero included)
    /// with a `file: job_retention: message` line and exit code 1, before listening.
    @Test func serve_RefusesJobRetentionUnder1ms_WithFileFieldMessage() throws {
        let dir = try makeTempDir(), configDir = try makeTempDir()
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: configDir)
        }
        for (name, text) in GatewayEndpointsTests.routes { try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8) }
        let config = "\(configDir)/config.json"
        for value in ["0s", "0ms", "0.0001ms"] {
            try "{\"job_retention\": \"\(value)\"}".write(toFile: config, atomically: true, encoding: .utf8)
            let (code, out, err) = try CLITests.run(["serve", "--config", config, "--routes", dir, "--listen", "127.0.0.1:0",
                                                     "--data", "\(dir)/data", "--event-loops", "1"], timeout: .seconds(20))
            #expect(code == 1, "\(value)")
            #expect(err == "\(config): job_retention: must be at least 1ms (e.g. \"24h\")\n", "\(value)")
            #expect(!out.contains("listening"), "\(value)")
        }
        // The smallest retention allowed starts.
        try "{\"job_retention\": \"1ms\"}".write(toFile: config, atomically: true, encoding: .utf8)
        #expect(try GatewayConfig.load(file: config).jobRetention == .milliseconds(1))
        let server = try CLITests.Server(routesDir: dir, env: [:], extra: ["--config", config])
        #expect(try RawConnection(port: server.port).request("GET", "/healthz")?.status == 200)
        kill(server.process.processIdentifier, SIGTERM)
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)
    }

    /// A configuration built in code is checked too: the gateway refuses to start with a
    /// zero or negative retention (`job_retention: message`).
    @Test func gateway_RefusesZeroOrNegativeJobRetention() throws {
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for retention in [Duration.zero, .seconds(-5)] {
            var c = GatewayConfig()
            c.data = "\(dir)/data"
            c.jobRetention = retention
            let error = #expect(throws: GatewayConfig.Error.self) { _ = try Gateway(config: c, routes: try RouteTable(routes: [])) }
            #expect(error?.message == "job_retention: must be at least 1ms (e.g. \"24h\")")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/data"))  // refused before the journal is opened
    }
}
