import Routes
import Testing

@Suite struct MatchingTests {
    /// Parameters are extracted and percent-decoded.
    @Test func pattern_DecodesParameters_WhenPathMatches() throws {
        let pattern = try PathPattern("/orders/{order_id}/items/{item}")
        let params = pattern.match("/orders/A%2017/items/%C3%A9?x=1")
        #expect(params?.map(\.0) == ["order_id", "item"])
        #expect(params?.map(\.1) == ["A 17", "é"])
    }

    /// Segment count, literals, empty parameters, trailing slashes and bad escapes all prevent a match.
    @Test func pattern_DoesNotMatch_WhenPathDiffers() throws {
        let pattern = try PathPattern("/orders/{id}")
        #expect(pattern.match("/orders") == nil)
        #expect(pattern.match("/orders/") == nil)
        #expect(pattern.match("/orders/1/") == nil)
        #expect(pattern.match("/Orders/1") == nil)
        #expect(pattern.match("/orders/%zz") == nil)
        #expect(pattern.match("orders/1") == nil)
        #expect(try PathPattern("/").match("/")?.isEmpty == true)
    }

    /// A request matching method and path gets the route and its parameters.
    @Test func table_ReturnsRoute_WhenMethodAndPathMatch() throws {
        let table = try loadTable([("routes/t.json", specExample)])
        guard case .matched(let route, let params) = table.match(method: "POST", path: "/checkout/o-1?debug=1") else {
            Issue.record("no match"); return
        }
        #expect(route.name == "checkout")
        #expect(params.map(\.0) == ["order_id"])
        #expect(params.map(\.1) == ["o-1"])
    }

    /// A known path with another method is 405 with the allowed methods.
    @Test func table_ReturnsMethodNotAllowed_WhenOnlyOtherMethodsMatch() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("a", "GET", "/x/{id}")), ("routes/b.json", simpleRoute("b", "PUT", "/x/{id}"))])
        guard case .methodNotAllowed(let allow) = table.match(method: "POST", path: "/x/1") else { Issue.record("not 405"); return }
        #expect(allow == ["GET", "HEAD", "PUT"])
    }

    /// A parameter segment with a malformed escape, or one that is not UTF-8 once decoded,
    /// is an invalid parameter (400), not an unknown path; another method's route for the
    /// same path still makes it 405, and a route that decodes wins.
    @Test func table_ReturnsInvalidParameter_WhenOnlyTheEncodingIsWrong() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("a", "GET", "/x/{id}")),
                                   ("routes/b.json", simpleRoute("b", "GET", "/x/{id}/y/{item}"))])
        for (path, name, raw) in [("/x/%ff", "id", "%ff"), ("/x/%zz", "id", "%zz"), ("/x/a%C3", "id", "a%C3"),
                                  ("/x/1/y/%fe%ff?q=1", "item", "%fe%ff")] {
            guard case .invalidParameter(let n, let r) = table.match(method: "GET", path: path) else {
                Issue.record("\(path): not an invalid parameter"); continue
            }
            #expect(n == name && r == raw, "\(path)")
        }
        guard case .methodNotAllowed = table.match(method: "POST", path: "/x/%ff") else { Issue.record("not 405"); return }
        guard case .matched(_, let params) = table.match(method: "HEAD", path: "/x/%C3%A9") else { Issue.record("no match"); return }
        #expect(params.map(\.1) == ["é"])
    }

    /// An unknown path is 404.
    @Test func table_ReturnsNotFound_WhenNoPathMatches() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("a", "GET", "/x/{id}"))])
        for path in ["/y/1", "/x", "/x/1/2", "", "x/1", "/"] {
            guard case .notFound = table.match(method: "GET", path: path) else { Issue.record("matched \(path)"); continue }
        }
    }

    /// HEAD is answered by a GET route.
    @Test func table_MatchesGetRoute_ForHead() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("a", "GET", "/x"))])
        guard case .matched(let route, _) = table.match(method: "HEAD", path: "/x") else { Issue.record("no match"); return }
        #expect(route.name == "a")
    }

    /// A literal segment wins over a parameter in the same position.
    @Test func table_PrefersLiteralSegment_OverParameter() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("byid", "GET", "/users/{id}")), ("routes/b.json", simpleRoute("me", "GET", "/users/me"))])
        guard case .matched(let me, _) = table.match(method: "GET", path: "/users/me"),
              case .matched(let byID, let params) = table.match(method: "GET", path: "/users/42")
        else { Issue.record("no match"); return }
        #expect(me.name == "me")
        #expect(byID.name == "byid")
        #expect(params.map(\.1) == ["42"])
    }

    /// When the most specific path lacks the method, a less specific one that has it answers.
    @Test func table_FallsBackToLessSpecificPattern_WhenMethodOnlyThere() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("me", "GET", "/users/me")), ("routes/b.json", simpleRoute("update", "POST", "/users/{id}"))])
        guard case .matched(let route, let params) = table.match(method: "POST", path: "/users/me") else { Issue.record("no match"); return }
        #expect(route.name == "update")
        #expect(params.map(\.1) == ["me"])
    }
}

@Suite struct CriticalPathTests {
    /// Retries count every attempt at full timeout plus the largest backoff before each retry; after-chains add up.
    @Test func criticalPath_AddsRetriesAndChains_ForSpecExample() throws {
        let route = try parseRoute(specExample)
        // payment: 3 × 20s + 200ms + 400ms = 60.6s; then fulfillment 5s.
        #expect(route.steps[1].worstCaseDuration == .milliseconds(60_600))
        #expect(route.criticalPath == .milliseconds(65_600))
        #expect(route.criticalPathSteps.map { route.steps[$0].id } == ["payment", "fulfillment"])
    }

    /// retry.within caps a step's worst case.
    @Test func criticalPath_CapsRetries_AtWithin() throws {
        let route = try parseRoute(routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "timeout": "2s", "retry": {"attempts": 5, "backoff": "1s", "within": "7s"}}"#))
        #expect(route.criticalPath == .seconds(7))
    }

    /// The longest chain through the graph wins over a shorter parallel branch.
    @Test func criticalPath_FollowsLongestChain_ThroughAfter() throws {
        let route = try parseRoute(routeFile(steps: """
            {"id": "a", "request": {"url": "http://up.example/1"}, "timeout": "1s"},
            {"id": "b", "after": ["a"], "request": {"url": "http://up.example/2"}, "timeout": "2s",
             "retry": {"attempts": 2, "backoff": "500ms"}},
            {"id": "c", "request": {"url": "http://up.example/3"}, "timeout": "4s"},
            {"id": "d", "after": ["b", "c"], "request": {"url": "http://up.example/4"}, "timeout": "300ms"}
            """))
        // a 1s → b (2 × 2s + 0.5s = 4.5s) → d 0.3s = 5.8s; c (4s) → d is shorter.
        #expect(route.criticalPath == .milliseconds(5800))
        #expect(route.criticalPathSteps.map { route.steps[$0].id } == ["a", "b", "d"])
    }

    /// The check report has one aligned line per route with the critical path.
    @Test func checkReport_PrintsOneLinePerRoute() throws {
        let table = try loadTable([("routes/a.json", specExample), ("routes/b.json", simpleRoute("ping", "GET", "/ping"))])
        #expect(RouteLoader.checkReport(table) == """
            checkout  POST /checkout/{order_id}  steps=3  critical path 65.6s (payment → fulfillment)
            ping      GET /ping                  steps=1  critical path 10s (a)
            """)
    }
}
