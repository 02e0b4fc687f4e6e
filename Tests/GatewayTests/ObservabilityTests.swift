import EventLoop
import Foundation
import Testing
import TestSupport

/// A strict reader of the Prometheus text format 0.0.4, written for the tests:
/// every line must be a HELP, a TYPE or a sample with a numeric value; samples
/// must belong to a family declared by TYPE before them.
struct Exposition {
    struct Sample { var name: String; var labels: [String: String]; var value: Double }
    var samples: [Sample] = []
    var types: [String: String] = [:]

    init(_ text: String) throws {
        struct Bad: Error { let line: String }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { continue }
            if line.hasPrefix("# HELP ") { continue }
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(String(parts[3])) else { throw Bad(line: String(line)) }
                types[String(parts[2])] = String(parts[3])
                continue
            }
            guard !line.hasPrefix("#") else { throw Bad(line: String(line)) }
            var name = ""
            var labels: [String: String] = [:]
            var rest = Substring(line)
            if let brace = line.firstIndex(of: "{") {
                name = String(line[..<brace])
                guard let close = line.lastIndex(of: "}") else { throw Bad(line: String(line)) }
                var body = line[line.index(after: brace)..<close]
                while !body.isEmpty {
                    guard let eq = body.firstIndex(of: "=") else { throw Bad(line: String(line)) }
                    let key = String(body[..<eq])
                    var i = body.index(after: eq)
                    guard i < body.endIndex, body[i] == "\"" else { throw Bad(line: String(line)) }
                    i = body.index(after: i)
                    var value = ""
                    while i < body.endIndex, body[i] != "\"" {
                        if body[i] == "\\" { i = body.index(after: i); value.append(body[i] == "n" ? "\n" : body[i]) } else { value.append(body[i]) }
                        i = body.index(after: i)
                    }
                    guard i < body.endIndex else { throw Bad(line: String(line)) }
                    labels[key] = value
                    body = body[body.index(after: i)...]
                    if body.hasPrefix(",") { body = body.dropFirst() }
                }
                rest = line[line.index(after: close)...]
            } else {
                guard let sp = line.firstIndex(of: " ") else { throw Bad(line: String(line)) }
                name = String(line[..<sp])
                rest = line[sp...]
            }
            guard let v = Double(rest.trimmingCharacters(in: .whitespaces)) else { throw Bad(line: String(line)) }
            let family = ["_bucket", "_sum", "_count"].first { name.hasSuffix($0) && types[String(name.dropLast($0.count))] == "histogram" }
                .map { String(name.dropLast($0.count)) } ?? name
            guard types[family] != nil else { throw Bad(line: "no TYPE for \(name)") }
            samples.append(Sample(name: name, labels: labels, value: v))
        }
    }

    func value(_ name: String, _ labels: [String: String]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }
}

@Suite struct ObservabilityTests {
    static func routes(_ up: UInt16) -> [String: String] {
        ["m.json": routeJSON(["name": "m", "method": "GET", "path": "/m",
                              "steps": [["id": "a", "request": ["method": "GET", "url": "http://127.0.0.1:\(up)/a"], "timeout": "1s"],
                                        ["id": "b", "request": ["method": "GET", "url": "http://127.0.0.1:\(up)/b"], "timeout": "1s"]]]),
         "f.json": routeJSON(["name": "f", "method": "GET", "path": "/f",
                              "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(up)/fail"], "timeout": "1s"]]])]
    }

    /// After known traffic, `/metrics` holds exact counter values, a complete histogram with
    /// monotonic buckets, and parses as a strict exposition.
    @Test func metrics_CountKnownTrafficExactly() throws {
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                let status = req.target == "/fail" ? 503 : 200
                conn.write("HTTP/1.1 \(status) X\r\nContent-Length: 2\r\n\r\n{}")
            }
        }
        let h = try GatewayHarness(routes: Self.routes(up.port))
        for _ in 0..<3 { #expect(try h.request("GET", "/m").status == 200) }
        for _ in 0..<2 { #expect(try h.request("GET", "/nope").status == 404) }
        #expect(try h.request("GET", "/f").status == 502)
        let r = try h.request("GET", "/metrics")
        #expect(r.status == 200)
        #expect(r.header("content-type")?.hasPrefix("text/plain; version=0.0.4") == true)
        let e = try Exposition(r.text)
        #expect(e.value("switchboard_requests_total", ["route": "m", "outcome": "sync", "status": "200"]) == 3)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "404"]) == 2)
        #expect(e.value("switchboard_requests_total", ["route": "f", "outcome": "sync", "status": "502"]) == 1)
        #expect(e.value("switchboard_upstream_errors_total", ["route": "f", "step": "s", "kind": "status"]) == 1)
        #expect(e.value("switchboard_request_duration_seconds_count", ["route": "m"]) == 3)
        #expect(e.value("switchboard_step_duration_seconds_count", ["route": "m", "step": "a"]) == 3)
        #expect(e.types["switchboard_connections_open"] == "gauge")
        #expect(e.value("switchboard_connections_open", [:]).map { $0 >= 1 } == true)
        #expect(e.value("switchboard_jobs_running", [:]) == 0)
        #expect(e.types["switchboard_callbacks_dead_lettered_total"] == "counter")
        let buckets = e.samples.filter { $0.name == "switchboard_request_duration_seconds_bucket" && $0.labels["route"] == "m" }
        #expect(buckets.count == 17)
        #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.value <= $1.value })
        #expect(buckets.last?.labels["le"] == "+Inf")
        #expect(buckets.last?.value == 3)
    }

    /// The management API's answers count under `route=""` (SPEC §8 labels by route;
    /// they belong to none): `sync` with their status when answered (`GET /jobs/{id}` of
    /// a real async job, `POST /callbacks`), `error` when refused; the job's own `202`
    /// counts under its route, `async`. No duration histogram is kept for `route=""`.
    @Test func metrics_CountManagementAPIUnderEmptyRoute() throws {
        let up = try ScriptedServer.answering()
        let route = routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "0s",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(up.port)/"], "timeout": "2s"]]])
        let h = try GatewayHarness(routes: ["s.json": route]) { $0.callbackAllow = ["127.0.0.0/8"] }
        let accepted = try h.request("GET", "/slow")
        #expect(accepted.status == 202)
        let id = try #require(accepted.object["job_id"] as? String)
        #expect(try h.request("GET", "/jobs/\(id)?wait=5").status == 200)
        #expect(try h.request("POST", "/callbacks", body: "{\"url\": \"http://127.0.0.1:\(up.port)/hook\"}").status == 201)
        #expect(try h.request("GET", "/jobs/no-such-job").status == 404)
        #expect(try h.request("POST", "/callbacks", body: "{}").status == 400)
        let e = try Exposition(try h.request("GET", "/metrics").text)
        #expect(e.value("switchboard_requests_total", ["route": "slow", "outcome": "async", "status": "202"]) == 1)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "sync", "status": "200"]) == 1)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "sync", "status": "201"]) == 1)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "404"]) == 1)
        #expect(e.value("switchboard_requests_total", ["route": "", "outcome": "error", "status": "400"]) == 1)
        #expect(e.value("switchboard_request_duration_seconds_count", ["route": ""]) == nil)  // durations are per route
    }

    /// With `admin_listen` set, `/metrics` is served there and not on the main listener.
    @Test func metrics_ServedOnAdminListener_WhenConfigured() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(up.port)) { $0.adminListen = SocketAddress(host: "127.0.0.1", port: 0) }
        #expect(try h.request("GET", "/metrics").status == 404)
        let admin = try #require(h.gateway.adminPort)
        let r = try #require(RawConnection(port: admin).request("GET", "/metrics"))
        #expect(r.status == 200)
        #expect(r.text.contains("# TYPE switchboard_requests_total counter"))
    }

    /// A valid incoming `traceparent` is continued: each upstream call carries the same trace id
    /// with its own parent id, and `tracestate` is passed through.
    @Test func trace_ContinuesIncomingTraceparent() throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(up.port))
        let traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
        let r = try h.request("GET", "/m", headers: [("traceparent", "00-\(traceID)-00f067aa0ba902b7-01"), ("tracestate", "vendor=abc")])
        #expect(r.status == 200)
        let sent = up.requests.compactMap { $0.header("traceparent") }
        #expect(sent.count == 2)
        for tp in sent {
            let parts = tp.split(separator: "-")
            #expect(parts.count == 4)
            #expect(parts[1] == traceID[...])
            #expect(parts[2] != "00f067aa0ba902b7")
            #expect(parts[3] == "01")
        }
        #expect(Set(sent).count == 2)
        #expect(up.requests.allSatisfy { $0.header("tracestate") == "vendor=abc" })
    }

    /// A malformed `traceparent` never fails the request and is replaced by a fresh, valid one.
    @Test(arguments: ["garbage", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"])
    func trace_MalformedTraceparent_IsReplaced(header: String) throws {
        let up = try ScriptedServer.answering()
        let h = try GatewayHarness(routes: Self.routes(up.port))
        let r = try h.request("GET", "/m", headers: [("traceparent", header), ("tracestate", "x=y")])
        #expect(r.status == 200)
        let tp = try #require(up.requests.first?.header("traceparent"))
        let parts = tp.split(separator: "-")
        #expect(parts.count == 4)
        #expect(parts[0] == "00")
        #expect(parts[1].count == 32)
        #expect(!header.contains(parts[1]))
        #expect(up.requests.first?.header("tracestate") == nil)
    }

    /// The trace id of an async job appears in its status.
    @Test func trace_IDAppearsInJobStatus() throws {
        let up = try ScriptedServer.answering(delay: .milliseconds(300))
        let route = routeJSON(["name": "slow", "method": "GET", "path": "/slow", "wait": "0s",
                               "steps": [["id": "s", "request": ["method": "GET", "url": "http://127.0.0.1:\(up.port)/"], "timeout": "2s"]]])
        let h = try GatewayHarness(routes: ["s.json": route])
        let traceID = "0af7651916cd43dd8448eb211c80319c"
        let r = try h.request("GET", "/slow", headers: [("traceparent", "00-\(traceID)-b7ad6b7169203331-01")])
        #expect(r.status == 202)
        let id = try #require(r.object["job_id"] as? String)
        let job = try h.request("GET", "/jobs/\(id)?wait=5")
        #expect(job.object["trace_id"] as? String == traceID)
    }
}
