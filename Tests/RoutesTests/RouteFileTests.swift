import JSON
import Routes
import Testing

@Suite struct RouteFileTests {
    /// The SPEC §2 example loads, with env values substituted and every field compiled.
    @Test func specExample_Loads_WithEnvironmentInjected() throws {
        let route = try parseRoute(specExample)
        #expect(route.name == "checkout")
        #expect(route.method == "POST")
        #expect(route.path.source == "/checkout/{order_id}")
        #expect(route.path.parameterNames == ["order_id"])
        #expect(route.wait == .seconds(2))
        #expect(route.maxWait == .seconds(30))
        #expect(route.file == "routes/t.json")
        #expect(route.readsRequestBody)
        #expect(route.steps.map(\.id) == ["inventory", "payment", "fulfillment"])
        #expect(route.steps.map(\.index) == [0, 1, 2])

        let inventory = route.steps[0]
        #expect(inventory.request.method == "GET")
        #expect(inventory.timeout == .milliseconds(500))
        #expect(inventory.retry == nil)
        #expect(inventory.request.url.parts == [
            .literal("http://127.0.0.1:9090/stock/"), .reference(.requestPath("order_id"), name: "request.path.order_id"),
        ])
        #expect(inventory.request.url.containsSecret)
        #expect(inventory.dependents == [2])

        let payment = route.steps[1]
        #expect(payment.retry == RetryPolicy(attempts: 3, backoff: .milliseconds(200), within: nil,
                                                     on: RetryOn(statuses: [502, 503, 504], timeout: true, connect: true, protocol: false)))
        #expect(payment.request.headers.map(\.name) == ["Idempotency-Key"])
        #expect(payment.request.headers[0].value.references == [.stepIdempotencyKey])
        #expect(payment.request.body?.references == [.requestBody(["amount"]), .requestPath("order_id")])
        #expect(payment.success == nil)
        #expect(!payment.optional)

        let fulfillment = route.steps[2]
        #expect(fulfillment.after == [0, 1])
        #expect(fulfillment.when.count == 1)
        #expect(fulfillment.when[0].path == ["steps", "payment", "body", "status"])
        #expect(fulfillment.when[0].ref == .stepBody(1, ["status"]))
        #expect(fulfillment.when[0].equals == .string("succeeded"))
        #expect(fulfillment.request.body?.references == [.stepBody(1, ["id"])])

        #expect(route.response?.status == 200)
        #expect(route.response?.body?.references == [.stepBody(1, []), .stepBody(2, ["id"])])
        #expect(Set(route.secrets) == ["http://127.0.0.1:9090", "https://payments.example.com", "http://127.0.0.1:9092/v1"])
    }

    /// Absent optional fields take the documented defaults.
    @Test func route_AppliesDefaults_WhenFieldsAreAbsent() throws {
        let route = try parseRoute(routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/x"}, "retry": {"attempts": 2}}"#))
        #expect(route.wait == .seconds(10))
        #expect(route.maxWait == .seconds(30))
        #expect(route.response == nil)
        #expect(!route.readsRequestBody)
        let step = route.steps[0]
        #expect(step.request.method == "GET")
        #expect(step.timeout == .seconds(10))
        #expect(step.retry == RetryPolicy(attempts: 2, backoff: .milliseconds(100), within: nil, on: .default))
        #expect(step.isSuccess(status: 204))
        #expect(!step.isSuccess(status: 302))
    }

    /// max_wait defaults to wait when wait is longer than 30 s.
    @Test func route_DefaultsMaxWaitToWait_WhenWaitExceeds30s() throws {
        let route = try parseRoute(routeFile(extra: #""wait": "45s""#))
        #expect(route.maxWait == .seconds(45))
    }

    /// Steps are put in dependency order, with after, indexes and references remapped.
    @Test func steps_AreOrderedTopologically_WhenFileListsDependentFirst() throws {
        let route = try parseRoute(routeFile(steps: """
            {"id": "ship", "after": ["pay"], "request": {"url": "http://up.example/s/{{steps.pay.body.id}}"}},
            {"id": "pay", "request": {"url": "http://up.example/p"}},
            {"id": "audit", "request": {"url": "http://up.example/a"}}
            """))
        #expect(route.steps.map(\.id) == ["pay", "ship", "audit"])
        #expect(route.steps.map(\.index) == [0, 1, 2])
        #expect(route.steps[1].after == [0])
        #expect(route.steps[0].dependents == [1])
        #expect(route.steps[1].request.url.references == [.stepBody(0, ["id"])])
    }

    /// success, optional, within and retry kinds are read as written.
    @Test func step_ReadsSuccessOptionalAndRetryKinds() throws {
        let route = try parseRoute(routeFile(steps: """
            {"id": "a", "request": {"url": "http://up.example/x"}, "success": [200, 404], "optional": true,
             "retry": {"attempts": 4, "backoff": "1s", "within": "10s", "on": ["protocol", 429]}}
            """))
        let step = route.steps[0]
        #expect(step.success == [200, 404])
        #expect(step.isSuccess(status: 404))
        #expect(!step.isSuccess(status: 201))
        #expect(step.optional)
        #expect(step.retry?.within == .seconds(10))
        #expect(step.retry?.on == RetryOn(statuses: [429], timeout: false, connect: false, protocol: true))
    }

    /// A route with no steps is accepted when it has a response.
    @Test func route_AllowsNoSteps_WhenResponseIsGiven() throws {
        let route = try parseRoute(#"{"name": "static", "method": "GET", "path": "/ping", "response": {"status": 204}}"#)
        #expect(route.steps.isEmpty)
        #expect(route.response?.status == 204)
        #expect(route.criticalPath == .zero)
    }

    /// A template in a header reading request.body marks the route as reading the body.
    @Test func readsRequestBody_IsTrue_WhenOnlyAHeaderReadsTheBody() throws {
        let route = try parseRoute(routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/x", "headers": {"X-User": "{{request.body.user}}"}}}"#))
        #expect(route.readsRequestBody)
    }

    /// Routes in different files with the same path but different methods both load.
    @Test func table_AllowsSamePath_WithDifferentMethods() throws {
        let table = try loadTable([("routes/a.json", simpleRoute("a", "GET", "/x/{id}")), ("routes/b.json", simpleRoute("b", "DELETE", "/x/{key}"))])
        #expect(table.routes.map(\.name) == ["a", "b"])
    }

    /// secrets lists every env value used, once, longest first.
    @Test func table_CollectsSecrets_FromAllRoutes() throws {
        let other = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/x", "headers": {"Authorization": "Bearer {{env.API_TOKEN}}"}}}"#)
            .replacingOccurrences(#""name": "t""#, #""name": "u""#).replacingOccurrences("/t/{id}", "/u")
        let table = try loadTable([("routes/a.json", specExample), ("routes/b.json", other)])
        #expect(table.secrets == ["https://payments.example.com", "http://127.0.0.1:9092/v1", "http://127.0.0.1:9090", "tok_secret_123"])
        let header = table.routes[1].steps[0].request.headers[0].value
        #expect(header.containsSecret)
        #expect(header.source == "Bearer {{env.API_TOKEN}}")
    }

    /// env values under 8 bytes (a flag, a year, a port, a region) are substituted but not
    /// collected as secrets: redacting them would mangle ordinary data.
    @Test func secrets_SkipValuesShorterThan8Bytes() throws {
        let steps = #"{"id": "a", "request": {"url": "http://up.example:{{env.PORT}}/x", "#
            + #""headers": {"X-Flag": "{{env.FLAG}}", "X-Year": "{{env.YEAR}}", "X-Region": "{{env.REGION}}", "#
            + #""Authorization": "Bearer {{env.API_TOKEN}}"}}}"#
        var environment = testEnvironment
        for (name, value) in [("PORT", "50051"), ("FLAG", "true"), ("YEAR", "2024"), ("REGION", "eu-west")] { environment[name] = value }
        let route = try parseRoute(routeFile(steps: steps), environment: environment)
        #expect(route.secrets == ["tok_secret_123"])
        #expect(route.steps[0].request.headers[0].value.literal == "true")
        #expect(route.steps[0].request.headers[0].value.containsSecret)
        let table = try RouteLoader.load(files: [(name: "routes/t.json", data: Array(routeFile(steps: steps).utf8))], environment: environment)
        #expect(table.secrets == ["tok_secret_123"])
    }
}

extension String {
    /// Replaces every occurrence of `target` (test helper, no Foundation).
    func replacingOccurrences(_ target: String, _ replacement: String) -> String {
        var result = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound] + replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}
