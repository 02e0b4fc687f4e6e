import Foundation
import Gateway
import Glibc
import Testing
import TestSupport

/// Query and path parameters read by templates: percent-decoded bytes that are not UTF-8
/// are refused, not replaced. Real gateway, real sockets, real libcurl.
@Suite struct QueryEncodingTests {
    static func routes() -> [String: String] {
        [
            "item.json": routeJSON([
                "name": "item", "method": "GET", "path": "/items/{id}",
                "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.UP}}/items/{{request.path.id}}"], "timeout": "5s"]],
            ]),
            "q.json": routeJSON([
                "name": "q", "method": "GET", "path": "/q",
                "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.UP}}/x?v={{request.query.v}}"], "timeout": "5s"]],
            ]),
            "plain.json": routeJSON([
                "name": "plain", "method": "GET", "path": "/plain",
                "steps": [["id": "a", "request": ["method": "GET", "url": "{{env.UP}}/fixed"], "timeout": "5s"]],
            ]),
        ]
    }

    /// `?v=%ff%fe` decodes to bytes that are not UTF-8: a route reading `request.query.v`
    /// answers `400` (problem) and calls no upstream, instead of sending U+FFFD
    /// (`%EF%BF%BD`) in place of the caller's bytes.
    @Test func nonUTF8Value_IsRefusedWith400() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(), env: ["UP": "http://127.0.0.1:\(up.port)"])
        let r = try h.request("GET", "/q?v=%ff%fe")
        #expect(r.status == 400, "\(r.text)")
        #expect(r.header("content-type") == "application/problem+json")
        #expect((r.object["detail"] as? String)?.contains("%ff%fe") == true)
        usleep(100_000)
        #expect(up.requests.isEmpty)
        // So is a name that is not UTF-8.
        #expect(try h.request("GET", "/q?v=1&%C3=2").status == 400)
    }

    /// Percent-encoded UTF-8, NUL and CR/LF pass through, re-encoded; a repeated name
    /// reads its first value.
    @Test func utf8Value_IsSentReencoded() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(), env: ["UP": "http://127.0.0.1:\(up.port)"])
        #expect(try h.request("GET", "/q?v=%C3%A9&v=2").status == 200)
        #expect(try h.request("GET", "/q?v=a%00b%0D%0A").status == 200)
        let targets = up.requests.map(\.target)
        #expect(targets == ["/x?v=%C3%A9", "/x?v=a%00b%0D%0A"])
    }

    /// A path parameter that is not UTF-8 once percent-decoded (`%ff`), or has a
    /// malformed escape, answers `400` naming the parameter, and calls no upstream; valid
    /// percent-encoded UTF-8 reaches the upstream re-encoded.
    @Test func nonUTF8PathParameter_IsRefusedWith400() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(), env: ["UP": "http://127.0.0.1:\(up.port)"])
        for path in ["/items/%ff", "/items/a%zz"] {
            let r = try h.request("GET", path)
            #expect(r.status == 400, "\(path): \(r.text)")
            #expect(r.header("content-type") == "application/problem+json")
            #expect((r.object["detail"] as? String)?.contains("path parameter 'id'") == true, "\(r.text)")
        }
        usleep(100_000)
        #expect(up.requests.isEmpty)
        #expect(try h.request("GET", "/items/%C3%A9").status == 200)
        #expect(up.requests.map(\.target) == ["/items/%C3%A9"])
    }

    /// A route that reads no query parameter takes any query.
    @Test func routeNotReadingQuery_AcceptsAnyQuery() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(), env: ["UP": "http://127.0.0.1:\(up.port)"])
        #expect(try h.request("GET", "/plain?v=%ff").status == 200)
    }
}
