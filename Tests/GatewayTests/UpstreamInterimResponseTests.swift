import Foundation
import Gateway
import Glibc
import Testing
import TestSupport

/// Interim (1xx) upstream responses: real gateway, real sockets, real libcurl.
@Suite struct UpstreamInterimResponseTests {
    static func route() -> String {
        routeJSON([
            "name": "interim", "method": "GET", "path": "/interim",
            "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.UP}}/x"], "timeout": "10s"]],
        ])
    }

    /// An unsolicited `101 Switching Protocols` (no step sends `Upgrade`) fails the step
    /// as a malformed response at once (`502`, `protocol`), instead of the transfer
    /// waiting for a final response until the step's deadline (`504`).
    @Test func unsolicited101_FailsStepAsProtocol() throws {
        let up = try ScriptedServer { conn, server in
            guard let req = conn.readRequest() else { return }
            server.record(req)
            _ = conn.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{\"id\":\"x\"}")
            _ = conn.readRequest()  // holds the connection open until the gateway closes it
        }
        let h = try GatewayHarness(routes: ["r.json": Self.route()], env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/interim")
        #expect(r.status == 502, "\(r.text)")
        #expect(r.header("content-type") == "application/problem+json")
        #expect(r.object["error"] as? String == "protocol")
        #expect((r.object["detail"] as? String)?.contains("101") == true)
    }

    /// Many `102 Processing` answers before the final one are skipped; the final one counts.
    @Test func repeated102_ThenFinal_Succeeds() throws {
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let interim = String(repeating: "HTTP/1.1 102 Processing\r\nX-Progress: 1\r\n\r\n", count: 200)
                if !conn.write(interim + "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"ok\":1}") { return }
            }
        }
        let h = try GatewayHarness(routes: ["r.json": Self.route()], env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/interim")
        #expect(r.status == 200, "\(r.text)")
        let a = (r.object["steps"] as? [String: Any])?["a"] as? [String: Any]
        #expect((a?["body"] as? [String: Any])?["ok"] as? Int == 1)
    }
}
