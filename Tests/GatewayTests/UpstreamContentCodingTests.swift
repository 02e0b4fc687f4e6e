import Foundation
import Gateway
import Glibc
import Testing
import TestSupport

/// Upstream bodies sent with a content coding (RFC 9110 §8.4): steps and templates see
/// the decoded content, never the compressed bytes as text. Real gateway, real sockets,
/// real libcurl.
@Suite struct UpstreamContentCodingTests {
    /// `{"id":"abc","n":1}`, gzip-compressed (mtime 0).
    static let gzipJSON: [UInt8] = [31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 171, 86, 202, 76, 81, 178, 82, 74, 76, 74, 86, 210, 81,
                                    202, 83, 178, 50, 172, 5, 0, 82, 45, 197, 85, 18, 0, 0, 0]

    /// A JSON string of 200 000 `a`s (200 002 bytes), gzip-compressed to 231 bytes.
    static let gzipBomb: [UInt8] = [31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 237, 193, 177, 0, 0, 0, 0, 2, 48, 151, 204, 242, 151, 136, 161, 127, 91, 10]
        + [UInt8](repeating: 0, count: 193) + [220, 50, 178, 86, 67, 206, 66, 13, 3, 0]

    /// An upstream answering every request with `body` and the given `Content-Encoding`.
    static func encodingUpstream(_ coding: String, body: [UInt8]) throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: \(coding)\r\nContent-Length: \(body.count)\r\n\r\n"
                if !conn.write(Array(head.utf8) + body) { return }
            }
        }
    }

    static func route(headers: [String: String] = [:]) -> String {
        var request: [String: Any] = ["method": "GET", "url": "{{env.UP}}/data"]
        if !headers.isEmpty { request["headers"] = headers }
        return routeJSON([
            "name": "coded", "method": "GET", "path": "/coded",
            "steps": [["id": "a", "request": request, "timeout": "5s"]],
            "response": ["status": 200, "body": ["id": "{{steps.a.body.id}}", "whole": "{{steps.a.body}}"]],
        ])
    }

    /// A gzip body (which an upstream may send when the request has no `Accept-Encoding`,
    /// RFC 9110 §12.5.3) is decoded: `steps.a.body.id` reads the JSON inside, and the
    /// whole body is that JSON, not the compressed bytes as a string.
    @Test func gzipBody_IsDecodedForTemplates() throws {
        let up = try Self.encodingUpstream("gzip", body: Self.gzipJSON)
        let h = try GatewayHarness(routes: ["r.json": Self.route()], env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/coded")
        #expect(r.status == 200, "\(r.text)")
        #expect(r.object["id"] as? String == "abc")
        #expect((r.object["whole"] as? [String: Any])?["n"] as? Int == 1)
        // The request is as before decoding was on: no `Accept-Encoding` (curl's own
        // line for the coding it decodes is left out).
        #expect(up.requests.first?.header("accept-encoding") == nil)
    }

    /// A route that asks for gzip itself gets the decoded body too.
    @Test func gzipBody_RouteAskingForGzip_IsDecoded() throws {
        let up = try Self.encodingUpstream("gzip", body: Self.gzipJSON)
        let h = try GatewayHarness(routes: ["r.json": Self.route(headers: ["Accept-Encoding": "gzip"])],
                                   env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/coded")
        #expect(r.status == 200, "\(r.text)")
        #expect(r.object["id"] as? String == "abc")
        #expect(up.requests.first?.header("accept-encoding") == "gzip")
    }

    /// A coding the gateway cannot decode fails the step as a malformed response (`502`,
    /// `protocol`) instead of passing undecodable bytes on as text.
    @Test func unknownCoding_FailsStepAsProtocol() throws {
        let up = try Self.encodingUpstream("x-unknown", body: Array("{\"id\":\"abc\"}".utf8))
        let h = try GatewayHarness(routes: ["r.json": Self.route()], env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/coded")
        #expect(r.status == 502, "\(r.text)")
        #expect(r.header("content-type") == "application/problem+json")
        #expect(r.object["error"] as? String == "protocol")
        #expect(r.object["step"] as? String == "a")
    }

    /// `limits.upstream_body_bytes` bounds the decoded body: 231 compressed bytes that
    /// expand past the limit fail the step (`502`, `protocol`), and the gateway goes on.
    @Test func gzipBomb_IsBoundedByDecodedSize() throws {
        let up = try Self.encodingUpstream("gzip", body: Self.gzipBomb)
        let h = try GatewayHarness(routes: ["r.json": Self.route()], env: ["UP": "http://127.0.0.1:\(up.port)"]) {
            $0.upstreamBodyBytes = 65_536
        }
        let r = try h.request("GET", "/coded")
        #expect(r.status == 502, "\(r.text)")
        #expect(r.object["error"] as? String == "protocol")
        #expect((r.object["detail"] as? String)?.contains("larger than 65536") == true)
        #expect(try h.request("GET", "/healthz").status == 200)
    }
}
