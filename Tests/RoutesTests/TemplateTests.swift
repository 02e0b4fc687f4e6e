import JSON
import Routes
import Testing

@Suite struct TemplateTests {
    /// A string that is exactly one reference keeps the value's JSON type.
    @Test func render_KeepsJSONType_WhenTemplateIsSingleReference() throws {
        let template = try Template("{{request.body.amount}}")
        #expect(template.isSingleRef)
        let ctx = MapContext(values: [.requestBody(["amount"]): .int(42)])
        #expect(try template.render(ctx) == .int(42))
        let object = MapContext(values: [.requestBody(["amount"]): ["v": 1]])
        #expect(try template.render(object) == ["v": 1])
    }

    /// Text around a reference makes it string interpolation; non-strings are written as JSON text.
    @Test func render_Interpolates_WhenTemplateHasText() throws {
        let template = try Template("id-{{request.body.n}}-{{ request.query.q }}-{{request.body.o}}")
        let ctx = MapContext(values: [.requestBody(["n"]): .int(42), .requestQuery("q"): .string("x y"), .requestBody(["o"]): [1, nil]])
        #expect(try template.render(ctx) == .string("id-42-x y-[1,null]"))
    }

    /// A missing value is an error naming the reference, not an empty string.
    @Test func render_Throws_WhenValueIsMissing() throws {
        let template = try Template("pay-{{steps.payment.body.id}}", stepIDs: ["payment"])
        #expect(throws: TemplateError(reference: "steps.payment.body.id", message: "missing value")) {
            try template.render(MapContext())
        }
    }

    /// Each reference form compiles to its TemplateRef (headers lowercased, steps by index).
    @Test func compile_ParsesEveryReferenceForm() throws {
        let text = "{{request.body}}{{request.body.a.0}}{{request.query.x.y}}{{request.headers.X-Token}}{{request.path.id}}"
            + "{{steps.b.status}}{{steps.b.body}}{{steps.b.body.items.1}}{{steps.a.headers.ETag}}{{job.id}}"
            + "{{step.idempotency_key}}{{step.remaining_ms}}"
        let template = try Template(text, stepIDs: ["a", "b"])
        #expect(template.references == [
            .requestBody([]), .requestBody(["a", "0"]), .requestQuery("x.y"), .requestHeader("x-token"), .requestPath("id"),
            .stepStatus(1), .stepBody(1, []), .stepBody(1, ["items", "1"]), .stepHeader(0, "etag"), .jobID,
            .stepIdempotencyKey, .stepRemainingMs,
        ])
    }

    /// env references are substituted at compile time and mark the template as holding a secret.
    @Test func compile_SubstitutesEnvironment_AndMarksSecret() throws {
        let template = try Template("Bearer {{env.TOKEN}}", environment: ["TOKEN": "s3cret"])
        #expect(template.literal == "Bearer s3cret")
        #expect(template.containsSecret)
        #expect(!template.isSingleRef)
        #expect(try template.render(MapContext()) == .string("Bearer s3cret"))
        #expect(try !Template("plain").containsSecret)
    }

    /// An unset environment variable is a compile error.
    @Test func compile_Throws_WhenEnvironmentVariableIsUnset() {
        #expect(throws: TemplateError(reference: "env.NOPE", message: "environment variable NOPE is not set")) {
            try Template("{{env.NOPE}}")
        }
    }

    /// URL rendering percent-encodes interpolated values so they cannot change host, path or query.
    @Test func renderURL_PercentEncodesValues() throws {
        let template = try Template("https://up.example/orders/{{request.path.id}}?q={{request.query.q}}")
        let ctx = MapContext(values: [.requestPath("id"): "a/../b?c=d#e f@evil.com", .requestQuery("q"): "ü&x=1"])
        #expect(try template.renderURL(ctx) == "https://up.example/orders/a%2F..%2Fb%3Fc%3Dd%23e%20f%40evil.com?q=%C3%BC%26x%3D1")
    }

    /// A path value of "..", "." or "" is refused; in the query it is fine.
    @Test func renderURL_RefusesDotSegmentsAndEmptyValues_InPath() throws {
        let template = try Template("http://up.example/files/{{request.body.name}}")
        for bad: JSON in ["..", ".", ""] {
            #expect(throws: TemplateError(reference: "request.body.name", message: "value cannot be used in a URL path")) {
                try template.renderURL(MapContext(values: [.requestBody(["name"]): bad]))
            }
        }
        let query = try Template("http://up.example/files?name={{request.body.name}}")
        #expect(try query.renderURL(MapContext(values: [.requestBody(["name"]): ".."])) == "http://up.example/files?name=..")
    }

    /// Header rendering refuses values that would inject a header line.
    @Test func renderHeaderValue_Throws_WhenValueHasLineBreak() throws {
        let template = try Template("v={{request.headers.x}}")
        #expect(try template.renderHeaderValue(MapContext(values: [.requestHeader("x"): "ok"])) == "v=ok")
        #expect(throws: TemplateError(reference: "request.headers.x", message: "value contains CR, LF or NUL")) {
            try template.renderHeaderValue(MapContext(values: [.requestHeader("x"): "a\r\nSet-Cookie: x"]))
        }
    }

    /// A JSON body template renders each string by the same rules and keeps literal parts as they are.
    @Test func templateValue_RendersNestedBody_KeepingTypes() throws {
        let body: JSON = ["amount": "{{request.body.amount}}", "order": "o-{{request.path.id}}", "fixed": [1, "two"], "list": ["{{job.id}}"]]
        let value = try TemplateValue(body)
        let ctx = MapContext(values: [.requestBody(["amount"]): .double(12.5), .requestPath("id"): "7", .jobID: "j1"])
        let expected: JSON = ["amount": 12.5, "order": "o-7", "fixed": [1, "two"], "list": ["j1"]]
        #expect(try value.render(ctx) == expected)
        var bytes: [UInt8] = []
        try value.serialize(ctx, into: &bytes)
        #expect(bytes == (try value.render(ctx)).serialized)
        #expect(value.references == [.requestBody(["amount"]), .requestPath("id"), .jobID])
    }

    /// A body without templates compiles to one literal.
    @Test func templateValue_IsLiteral_WhenNoTemplatesInside() throws {
        guard case .literal(let json) = try TemplateValue(["a": [1, "{x}"]]) else { Issue.record("not literal"); return }
        #expect(json == ["a": [1, "{x}"]])
    }
}

@Suite struct DurationTests {
    /// Durations with each unit, and fractions, parse exactly.
    @Test(arguments: [
        ("250ms", Duration.milliseconds(250)), ("2s", .seconds(2)), ("1.5s", .milliseconds(1500)), ("5m", .seconds(300)),
        ("1h", .seconds(3600)), ("0s", .zero), ("0.25ms", .microseconds(250)), ("1.000000001s", .nanoseconds(1_000_000_001)),
    ])
    func parseDuration_ReturnsValue_ForValidText(text: String, expected: Duration) {
        #expect(parseDuration(text) == expected)
    }

    /// Text without a unit, with a sign, spaces or an unknown unit is rejected.
    @Test(arguments: ["", "10", "-1s", "1d", "s", "1.s", ".5s", "1 s", "1S", "+1s", "1e3ms", "99999999999h"])
    func parseDuration_ReturnsNil_ForInvalidText(text: String) {
        #expect(parseDuration(text) == nil)
    }

    /// Durations are formatted in ms under a second, else in seconds with up to three decimals.
    @Test func formatDuration_UsesMillisecondsOrSeconds() {
        #expect(formatDuration(.milliseconds(500)) == "500ms")
        #expect(formatDuration(.microseconds(250)) == "0.25ms")
        #expect(formatDuration(.milliseconds(25_700)) == "25.7s")
        #expect(formatDuration(.seconds(2)) == "2s")
        #expect(formatDuration(.milliseconds(1999_9996) / 10000) == "2s")
    }
}

@Suite struct ConditionAndRetryTests {
    /// A when condition holds when the dependency's value equals the expected one, numbers by value.
    @Test func condition_Holds_WhenValueEqualsExpected() throws {
        let route = try parseRoute(routeFile(steps: """
            {"id": "pay", "request": {"url": "http://up.example/1"}},
            {"id": "ship", "after": ["pay"], "when": {"steps.pay.body.total": 10, "steps.pay.headers.X-State": "ok"},
             "request": {"url": "http://up.example/2"}}
            """))
        let conditions = route.steps[1].when
        #expect(conditions.map(\.path) == [["steps", "pay", "body", "total"], ["steps", "pay", "headers", "x-state"]])
        let ok = MapContext(values: [.stepBody(0, ["total"]): .double(10.0), .stepHeader(0, "x-state"): "ok"])
        #expect(conditions.allSatisfy { $0.holds(in: ok) })
        let missing = MapContext(values: [.stepBody(0, ["total"]): .int(10)])
        #expect(!conditions[1].holds(in: missing))
        let different = MapContext(values: [.stepBody(0, ["total"]): .int(11)])
        #expect(!conditions[0].holds(in: different))
    }

    /// The largest backoff before retry k doubles each time from the base.
    @Test func retryPolicy_MaxBackoff_DoublesPerRetry() {
        let policy = RetryPolicy(attempts: 4, backoff: .milliseconds(200), within: nil, on: .default)
        #expect((1...3).map { policy.maxBackoff(beforeRetry: $0) } == [.milliseconds(200), .milliseconds(400), .milliseconds(800)])
    }

    /// Request-sourced references are flagged; step references carry their step index.
    @Test func templateRef_ReportsSource() {
        #expect(TemplateRef.requestQuery("q").isFromRequest)
        #expect(!TemplateRef.stepStatus(2).isFromRequest)
        #expect(TemplateRef.stepHeader(3, "etag").stepIndex == 3)
        #expect(TemplateRef.jobID.stepIndex == nil)
    }
}
