import Foundation
import Glibc
import Testing
import TestSupport

/// Secrets in response header values (SPEC §7): a header a route fills from `{{env.*}}`,
/// or from an upstream header that echoes one, reaches the synchronous caller as the
/// route wrote it, and is redacted wherever the result is reported — job status,
/// callback bodies — and never logged.
@Suite struct HeaderRedactionTests {
    static let token = "sk_live_HEADER_SECRET_4242"

    /// A route whose response headers carry the token twice: straight from `{{env.CRM_TOKEN}}`
    /// and through the upstream's echo of the `Authorization` header the step sent.
    static func route(wait: String = "100ms") -> String {
        routeJSON(["name": "hdr", "method": "POST", "path": "/hdr", "wait": wait, "max_wait": "5s",
                   "steps": [["id": "crm", "request": ["method": "GET", "url": "{{env.U}}/",
                                                        "headers": ["Authorization": "Bearer {{env.CRM_TOKEN}}"]],
                              "timeout": "5s"]],
                   "response": ["status": 200,
                                "headers": ["X-Api-Key": "{{env.CRM_TOKEN}}",
                                            "X-Upstream-Auth": "{{steps.crm.headers.x-echo-authorization}}"],
                                "body": ["ok": true]]])
    }

    /// An upstream that answers after `delay` and reflects the request's `Authorization`
    /// in its `X-Echo-Authorization` response header.
    static func echoingUpstream(delay: Duration) throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                Thread.sleep(forTimeInterval: Double(delay.milliseconds) / 1000)
                let auth = req.header("authorization") ?? ""
                let body = "{\"ok\":true}"
                if !conn.write("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Echo-Authorization: \(auth)\r\n"
                               + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)") { return }
            }
        }
    }

    /// The `headers` object of a job status's or callback body's `response`.
    static func responseHeaders(_ object: [String: Any]) -> [String: String]? {
        (object["response"] as? [String: Any])?["headers"] as? [String: String]
    }

    /// Job status shows `[redacted]` for header values holding a secret (from env or echoed by
    /// the upstream), while a synchronous caller of the same route gets them as written.
    @Test func jobStatus_RedactsSecretInResponseHeaders_SyncCallerGetsThemAsWritten() throws {
        let up = try Self.echoingUpstream(delay: .milliseconds(600))
        let h = try GatewayHarness(routes: ["hdr.json": Self.route()],
                                   env: ["U": "http://127.0.0.1:\(up.port)", "CRM_TOKEN": Self.token])
        let accepted = try h.request("POST", "/hdr")
        #expect(accepted.status == 202)
        let id = try #require(accepted.object["job_id"] as? String)

        let job = try h.request("GET", "/jobs/\(id)?wait=5")
        #expect(job.status == 200)
        #expect(job.object["status"] as? String == "succeeded")
        #expect(up.requests.first?.header("authorization") == "Bearer \(Self.token)")
        #expect(!job.text.contains(Self.token))
        let headers = try #require(Self.responseHeaders(job.object))
        #expect(headers["X-Api-Key"] == "[redacted]")
        #expect(headers["X-Upstream-Auth"] == "Bearer [redacted]")
        #expect(((job.object["response"] as? [String: Any])?["body"] as? [String: Any])?["ok"] as? Bool == true)

        let sync = try h.request("POST", "/hdr", headers: [("Prefer", "wait=5")])
        #expect(sync.status == 200)
        #expect(sync.header("x-api-key") == Self.token)
        #expect(sync.header("x-upstream-auth") == "Bearer \(Self.token)")
    }

    /// The callback body of an async job carries the response headers with the secret
    /// redacted, and its signature covers that redacted body.
    @Test func callbackBody_RedactsSecretInResponseHeaders() throws {
        let up = try Self.echoingUpstream(delay: .milliseconds(400))
        let rx = try CallbackAndIdempotencyTests.receiver([204])
        let h = try GatewayHarness(routes: ["hdr.json": Self.route()],
                                   env: ["U": "http://127.0.0.1:\(up.port)", "CRM_TOKEN": Self.token]) { c in
            c.callbackAllow = ["127.0.0.0/8"]
            c.callbackSecret = CallbackAndIdempotencyTests.secret
        }
        let r = try h.request("POST", "/hdr", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/hook")])
        #expect(r.status == 202)
        #expect(eventually { rx.requests.count == 1 })
        let d = try #require(rx.requests.first)
        #expect(d.header("webhook-signature") == CallbackAndIdempotencyTests.expectedSignature(secret: CallbackAndIdempotencyTests.secret, d))
        #expect(d.object["status"] as? String == "succeeded")
        #expect(!d.text.contains(Self.token))
        let headers = try #require(Self.responseHeaders(d.object))
        #expect(headers["X-Api-Key"] == "[redacted]")
        #expect(headers["X-Upstream-Auth"] == "Bearer [redacted]")
    }

    /// The real binary, logging at `debug`: an async job whose response headers hold the
    /// secret never shows it in a log line, its job status or its callback body.
    @Test func serve_AsyncJobWithSecretInResponseHeaders_KeepsItOutOfLogsStatusAndCallback() throws {
        let up = try Self.echoingUpstream(delay: .milliseconds(400))
        let rx = try CallbackAndIdempotencyTests.receiver([204])
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Self.route().write(toFile: "\(dir)/hdr.json", atomically: true, encoding: .utf8)
        let configDir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: configDir) }
        try "{\"log_level\": \"debug\"}".write(toFile: "\(configDir)/config.json", atomically: true, encoding: .utf8)
        let server = try CLITests.Server(routesDir: dir, env: ["U": "http://127.0.0.1:\(up.port)", "CRM_TOKEN": Self.token],
                                         extra: ["--config", "\(configDir)/config.json", "--callback-allow", "127.0.0.0/8"])
        defer { kill(server.process.processIdentifier, SIGTERM); server.process.waitUntilExit() }

        let r = try #require(RawConnection(port: server.port).request("POST", "/hdr", headers: [("Callback-URL", "http://127.0.0.1:\(rx.port)/hook")]))
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        let job = try #require(RawConnection(port: server.port).request("GET", "/jobs/\(id)?wait=5"))
        #expect(job.object["status"] as? String == "succeeded")
        #expect(eventually { server.log.contains("\"msg\":\"callback delivered\"") })

        #expect(up.requests.first?.header("authorization") == "Bearer \(Self.token)")
        #expect(!job.text.contains(Self.token))
        #expect(Self.responseHeaders(job.object)?["X-Api-Key"] == "[redacted]")
        let d = try #require(rx.requests.first)
        #expect(!d.text.contains(Self.token))
        #expect(Self.responseHeaders(d.object)?["X-Upstream-Auth"] == "Bearer [redacted]")
        #expect(server.log.contains("\"msg\":\"job finished\""))
        #expect(!server.log.contains(Self.token))
    }
}
