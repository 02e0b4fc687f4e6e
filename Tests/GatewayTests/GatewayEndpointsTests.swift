import Crypto
import EventLoop
import Foundation
import Gateway
import Testing
import TestSupport

/// The gateway's own endpoints (`/jobs`, `/callbacks`, `/metrics`, `/healthz`,
/// `/readyz`): exactly their paths and methods are served; any other path under
/// them is a `404` problem and any other method a `405` problem with `Allow`.
@Suite struct GatewayEndpointsTests {
    /// One route, so the gateway starts (it is never called).
    static let routes = ["p.json": routeJSON(["name": "p", "method": "GET", "path": "/p",
                                              "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:9/"], "timeout": "1s"]]])]

    /// Checks that `r` is an RFC 9457 problem with `status` (and `Allow: allow` when given).
    static func expectProblem(_ r: RawMessage, _ status: Int, allow: String? = nil, _ what: String) {
        #expect(r.status == status, "\(what)")
        #expect(r.header("content-type") == "application/problem+json", "\(what)")
        #expect(r.object["status"] as? Int == status, "\(what)")
        #expect(r.header("allow") == allow, "\(what)")
    }

    /// A trailing slash or an empty segment names nothing: `GET /callbacks/` is a `404`
    /// (only `/callbacks` lists), and so are `/jobs/`, `/jobs/{id}/`, `/callbacks/{id}/`
    /// and `/callbacks/{id}/deliveries/` of a job and an endpoint that exist.
    @Test func trailingSlashOrEmptySegment_IsNotFound() throws {
        let up = try ScriptedServer.answering()
        let route = routeJSON(["name": "later", "method": "GET", "path": "/later", "wait": "0s",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "{{env.U}}/s"], "timeout": "5s"]]])
        let h = try GatewayHarness(routes: ["later.json": route], env: ["U": "http://127.0.0.1:\(up.port)"]) { c in
            c.callbackAllow = ["127.0.0.0/8"]
        }
        let created = try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:9/hook\"}")
        #expect(created.status == 201)
        let ep = try #require(created.object["id"] as? String)
        let accepted = try h.request("GET", "/later")
        #expect(accepted.status == 202)
        let job = try #require(accepted.object["job_id"] as? String)

        #expect(try h.request("GET", "/callbacks").object["callbacks"] is [Any])
        #expect(try h.request("GET", "/callbacks/\(ep)").status == 200)
        #expect(try h.request("GET", "/callbacks/\(ep)/deliveries").status == 200)
        #expect(try h.request("GET", "/jobs/\(job)?wait=5").status == 200)
        for path in ["/callbacks/", "/callbacks//", "/callbacks/\(ep)/", "/callbacks//deliveries", "/callbacks/\(ep)/deliveries/",
                     "/jobs", "/jobs/", "/jobs/\(job)/", "/jobs//\(job)", "/jobs/\(job)/redeliver/"] {
            Self.expectProblem(try h.request("GET", path), 404, path)
        }
        #expect(try h.request("DELETE", "/callbacks/\(ep)/").status == 404)
        #expect(try h.request("GET", "/callbacks/\(ep)").status == 200)  // not deleted by that
    }

    /// Methods the APIs' resources do not take are `405` with `Allow`, whether or not the
    /// job or endpoint exists.
    @Test func wrongMethodOnAPIResource_IsNotAllowed() throws {
        let h = try GatewayHarness(routes: Self.routes)
        for (method, path, allow) in [("PUT", "/jobs/0123456789abcdef0123456789abcdef", "GET, HEAD"),
                                      ("DELETE", "/jobs/abc", "GET, HEAD"),
                                      ("GET", "/jobs/abc/redeliver", "POST"),
                                      ("PATCH", "/callbacks", "GET, HEAD, POST"),
                                      ("PUT", "/callbacks/nope", "GET, HEAD, DELETE"),
                                      ("DELETE", "/callbacks/nope/deliveries", "GET, HEAD")] {
            Self.expectProblem(try h.request(method, path), 405, allow: allow, "\(method) \(path)")
        }
    }

    /// `/metrics`, `/healthz` and `/readyz` answer `GET` and `HEAD` only; any other method
    /// is a `405` problem with `Allow: GET, HEAD`. `/metrics` checks the API key first;
    /// `/healthz` and `/readyz` never need one.
    @Test func operationsEndpoints_RefuseOtherMethods() throws {
        let h = try GatewayHarness(routes: Self.routes) { c in
            c.apiKeys = [APIKey(name: "ops", sha256: Crypto.sha256(Array("k1".utf8)))]
        }
        let key = [("Authorization", "Bearer k1")]
        for method in ["POST", "PUT", "DELETE", "OPTIONS"] {
            Self.expectProblem(try h.request(method, "/metrics", headers: key), 405, allow: "GET, HEAD", "\(method) /metrics")
            Self.expectProblem(try h.request(method, "/healthz"), 405, allow: "GET, HEAD", "\(method) /healthz")
            Self.expectProblem(try h.request(method, "/readyz"), 405, allow: "GET, HEAD", "\(method) /readyz")
        }
        #expect(try h.request("POST", "/metrics").status == 401)
        let metrics = try h.request("GET", "/metrics", headers: key)
        #expect(metrics.status == 200)
        // The refusals are counted like any refused request.
        let e = try Exposition(metrics.text)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "405"]) == 12)
        #expect(try h.request("HEAD", "/metrics", headers: key).status == 200)
        #expect(try h.request("GET", "/healthz").status == 200)
        #expect(try h.request("HEAD", "/healthz").status == 200)
        #expect(try h.request("GET", "/readyz").status == 200)
        #expect(try h.request("HEAD", "/readyz").status == 200)
    }

    /// The admin listener answers the same way: `GET`/`HEAD` only, `405` otherwise,
    /// `404` for any other path — from the head when the request expects `100`.
    @Test func adminListener_RefusesOtherMethods() throws {
        let h = try GatewayHarness(routes: Self.routes) { $0.adminListen = SocketAddress(host: "127.0.0.1", port: 0) }
        let admin = try #require(h.gateway.adminPort)
        for path in ["/metrics", "/healthz", "/readyz"] {
            let r = try #require(RawConnection(port: admin).request("POST", path))
            Self.expectProblem(r, 405, allow: "GET, HEAD", "admin POST \(path)")
            #expect(try RawConnection(port: admin).request("GET", path)?.status == 200)
        }
        Self.expectProblem(try #require(RawConnection(port: admin).request("GET", "/jobs")), 404, "admin GET /jobs")
        // With `Expect: 100-continue`, from the head: the refusal instead of `100`, then close.
        for (head, status, allow) in [("POST /metrics", 405, "GET, HEAD"), ("PUT /healthz", 405, "GET, HEAD"),
                                      ("POST /other", 404, nil)] as [(String, Int, String?)] {
            let c = try RawConnection(port: admin)
            #expect(c.write(head + " HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"))
            let r = try #require(c.readResponse(), "admin \(head)")
            #expect(r.status == status, "admin \(head)")
            #expect(r.header("allow") == allow, "admin \(head)")
            #expect(c.isClosedByPeer(), "admin \(head)")
        }
    }
}
