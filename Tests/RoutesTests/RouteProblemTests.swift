import Routes
import Testing

/// One test per kind of bad route file, each checking the exact `file: field: message` line.
@Suite struct RouteProblemTests {
    /// A file that is not JSON is reported with the byte offset of the syntax error.
    @Test func problem_ReportsByteOffset_WhenFileIsNotJSON() {
        #expect(problems(#"{"name": }"#) == ["routes/t.json: (file): not valid JSON: unexpected '}', expected a value at byte 9"])
    }

    /// A JSON file whose top level is not an object is rejected.
    @Test func problem_IsReported_WhenTopLevelIsNotAnObject() {
        #expect(problems("[1]") == ["routes/t.json: (file): expected a JSON object (a route with name, method, path and steps)"])
    }

    /// A misspelt top-level field fails, with a suggestion.
    @Test func problem_NamesUnknownField_AtTopLevel() {
        #expect(problems(routeFile(extra: #""wiat": "2s""#)) == ["routes/t.json: wiat: unknown field (did you mean 'wait'?)"])
    }

    /// A misspelt field inside a step fails with its indexed path.
    @Test func problem_NamesUnknownField_InsideStep() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/x", "header": {}}, "timout": "1s"}"#)
        #expect(problems(text) == [
            "routes/t.json: steps[0].timout: unknown field (did you mean 'timeout'?)",
            "routes/t.json: steps[0].request.header: unknown field (did you mean 'headers'?)",
        ])
    }

    /// An unknown field far from any known one gets no suggestion.
    @Test func problem_OmitsSuggestion_WhenNoFieldIsClose() {
        #expect(problems(routeFile(extra: #""description": "x""#)) == ["routes/t.json: description: unknown field"])
    }

    /// Missing required fields are each reported.
    @Test func problem_ListsEveryMissingRequiredField() {
        #expect(problems(#"{"steps": [{"request": {}}]}"#) == [
            "routes/t.json: name: missing required field",
            "routes/t.json: method: missing required field",
            "routes/t.json: path: missing required field",
            "routes/t.json: steps[0].id: missing required field",
            "routes/t.json: steps[0].request.url: missing required field",
        ])
    }

    /// A field of the wrong JSON type is reported.
    @Test func problem_IsReported_WhenFieldHasWrongType() {
        #expect(problems(routeFile(extra: #""wait": 2"#)) == [
            #"routes/t.json: wait: expected a duration string such as "500ms", "2s" or "5m""#,
        ])
    }

    /// A method that is not an uppercase token is rejected.
    @Test func problem_IsReported_WhenMethodIsInvalid() {
        let text = routeFile().replacingOccurrences(#""POST""#, #""post""#)
        #expect(problems(text) == [#"routes/t.json: method: invalid method "post" (expected an uppercase token such as GET or POST)"#])
    }

    /// A path that does not start with '/' is rejected.
    @Test func problem_IsReported_WhenPathLacksLeadingSlash() {
        let text = routeFile().replacingOccurrences("/t/{id}", "t/{id}")
        #expect(problems(text) == ["routes/t.json: path: must start with '/'"])
    }

    /// A path naming the same parameter twice is rejected.
    @Test func problem_IsReported_WhenPathParameterRepeats() {
        let text = routeFile().replacingOccurrences("/t/{id}", "/t/{id}/x/{id}")
        #expect(problems(text) == ["routes/t.json: path: duplicate parameter 'id'"])
    }

    /// A parameter must be a whole segment.
    @Test func problem_IsReported_WhenSegmentMixesTextAndParameter() {
        let text = routeFile().replacingOccurrences("/t/{id}", "/t/order-{id}")
        #expect(problems(text) == ["routes/t.json: path: segment 'order-{id}' mixes text and a parameter (a parameter must be a whole segment)"])
    }

    /// Paths the gateway serves itself cannot be routes.
    @Test func problem_IsReported_WhenPathIsReserved() {
        let text = routeFile().replacingOccurrences("/t/{id}", "/jobs/{id}")
        #expect(problems(text) == ["routes/t.json: path: /jobs is served by the gateway itself"])
    }

    /// Two files with the same route name are both named.
    @Test func problem_NamesBothFiles_WhenRouteNameRepeats() {
        #expect(throws: RouteLoadError(problems: ["routes/b.json: name: duplicate route name 'x' (also in routes/a.json)"])) {
            try loadTable([("routes/a.json", simpleRoute("x", "GET", "/a")), ("routes/b.json", simpleRoute("x", "GET", "/b"))])
        }
    }

    /// Two files answering the same method and path shape are both named.
    @Test func problem_NamesBothFiles_WhenMethodAndPathRepeat() {
        #expect(throws: RouteLoadError(problems: ["routes/b.json: path: GET /o/{key} is also defined in routes/a.json (as GET /o/{id})"])) {
            try loadTable([("routes/a.json", simpleRoute("a", "GET", "/o/{id}")), ("routes/b.json", simpleRoute("b", "GET", "/o/{key}"))])
        }
    }

    /// Problems from several files are all collected, in file order.
    @Test func problem_CollectsAllFiles_NotJustTheFirst() {
        #expect(throws: RouteLoadError(problems: ["routes/a.json: (file): not valid JSON: unexpected end of input, expected a value at byte 0",
                                                  "routes/b.json: name: missing required field"])) {
            try loadTable([("routes/a.json", ""), ("routes/b.json", #"{"method": "GET", "path": "/b", "response": {}}"#)])
        }
    }

    /// Two steps with the same id are rejected.
    @Test func problem_IsReported_WhenStepIDRepeats() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}}, {"id": "a", "request": {"url": "http://up.example/2"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[1].id: duplicate step id 'a' (also steps[0])"])
    }

    /// Step ids are limited to letters, digits, '_' and '-'.
    @Test func problem_IsReported_WhenStepIDHasInvalidCharacters() {
        let text = routeFile(steps: #"{"id": "pay.ment", "request": {"url": "http://up.example/1"}}"#)
        #expect(problems(text) == [#"routes/t.json: steps[0].id: invalid step id "pay.ment" (use letters, digits, '_' and '-')"#])
    }

    /// after naming a step that does not exist is rejected.
    @Test func problem_IsReported_WhenAfterNamesUnknownStep() {
        let text = routeFile(steps: #"{"id": "a", "after": ["paymnt"], "request": {"url": "http://up.example/1"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].after[0]: unknown step 'paymnt'"])
    }

    /// A dependency cycle is rejected and named in run order.
    @Test func problem_NamesCycle_WhenStepsDependOnEachOther() {
        let text = routeFile(steps: """
            {"id": "a", "after": ["c"], "request": {"url": "http://up.example/1"}},
            {"id": "b", "after": ["a"], "request": {"url": "http://up.example/2"}},
            {"id": "c", "after": ["b"], "request": {"url": "http://up.example/3"}}
            """)
        #expect(problems(text) == ["routes/t.json: steps[0].after: dependency cycle a → b → c → a"])
    }

    /// A step listing itself in after is a cycle.
    @Test func problem_NamesCycle_WhenStepWaitsForItself() {
        let text = routeFile(steps: #"{"id": "a", "after": ["a"], "request": {"url": "http://up.example/1"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].after: dependency cycle a → a"])
    }

    /// A template naming an unknown step is rejected.
    @Test func problem_IsReported_WhenTemplateNamesUnknownStep() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1", "body": {"x": "{{steps.nope.body.id}}"}}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.body.x: unknown step 'nope' in {{steps.nope.body.id}}"])
    }

    /// A step reading a step that is not among its dependencies is rejected (it could run first).
    @Test func problem_IsReported_WhenTemplateReadsStepNotInAfter() {
        let text = routeFile(steps: """
            {"id": "pay", "request": {"url": "http://up.example/1"}},
            {"id": "ship", "request": {"url": "http://up.example/2/{{steps.pay.body.id}}"}}
            """)
        #expect(problems(text) == ["routes/t.json: steps[1].request.url: step 'pay' is not a dependency of this step (add it to after) in {{steps.pay.body.id}}"])
    }

    /// A transitive dependency may be read without being listed directly.
    @Test func template_MayReadTransitiveDependency() {
        let text = routeFile(steps: """
            {"id": "a", "request": {"url": "http://up.example/1"}},
            {"id": "b", "after": ["a"], "request": {"url": "http://up.example/2"}},
            {"id": "c", "after": ["b"], "request": {"url": "http://up.example/3/{{steps.a.body.id}}"}}
            """)
        #expect(problems(text) == [])
    }

    /// A step reading its own result is rejected.
    @Test func problem_IsReported_WhenStepReadsItself() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1", "headers": {"X": "{{steps.a.status}}"}}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.headers.X: a step cannot read its own result in {{steps.a.status}}"])
    }

    /// request.path.X must name a parameter of the route's path.
    @Test func problem_IsReported_WhenPathReferenceIsNotAParameter() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/{{request.path.order}}"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: 'order' is not a parameter of path /t/{id} in {{request.path.order}}"])
    }

    /// An unknown kind of reference is rejected.
    @Test func problem_IsReported_WhenReferenceIsUnknown() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1", "body": ["{{reqest.body.x}}"]}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.body[0]: unknown reference (expected request.…, steps.ID.…, env.NAME, job.id, step.idempotency_key or step.remaining_ms) in {{reqest.body.x}}"])
    }

    /// An unterminated '{{' is rejected.
    @Test func problem_IsReported_WhenTemplateIsUnterminated() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/{{request.path.id"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: unterminated '{{' (no matching '}}')"])
    }

    /// step.* references are refused in the response, where there is no current step.
    @Test func problem_IsReported_WhenResponseUsesStepScopedReference() {
        let text = routeFile(extra: #""response": {"headers": {"X-Key": "{{step.idempotency_key}}"}}"#)
        #expect(problems(text) == ["routes/t.json: response.headers.X-Key: only available in a step's request, not in the response, in {{step.idempotency_key}}"])
    }

    /// An unset environment variable fails the load.
    @Test func problem_IsReported_WhenEnvironmentVariableIsUnset() {
        #expect(problems(specExample, environment: ["INVENTORY_URL": "http://a", "FULFILLMENT_URL": "http://c"]) == [
            "routes/t.json: steps[1].request.url: environment variable PAYMENTS_URL is not set in {{env.PAYMENTS_URL}}",
        ])
    }

    /// A duration without a unit is rejected.
    @Test func problem_IsReported_WhenDurationIsInvalid() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "timeout": "500"}"#)
        #expect(problems(text) == [#"routes/t.json: steps[0].timeout: invalid duration "500" (use a number and a unit: ms, s, m or h, e.g. "500ms")"#])
    }

    /// wait longer than max_wait is rejected.
    @Test func problem_IsReported_WhenWaitExceedsMaxWait() {
        #expect(problems(routeFile(extra: #""wait": "40s", "max_wait": "30s""#)) == ["routes/t.json: wait: 40s is longer than max_wait (30s)"])
    }

    /// A zero timeout is rejected.
    @Test func problem_IsReported_WhenTimeoutIsZero() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "timeout": "0ms"}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].timeout: must be greater than 0"])
    }

    /// retry.attempts must be 1…10.
    @Test func problem_IsReported_WhenRetryAttemptsOutOfRange() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "retry": {"attempts": 11}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].retry.attempts: must be between 1 and 10"])
    }

    /// retry.on entries must be statuses 100-599 or a known failure kind.
    @Test func problem_IsReported_WhenRetryOnEntryIsInvalid() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "retry": {"attempts": 2, "on": [503, "timeout", "dns", 700]}}"#)
        #expect(problems(text) == [
            #"routes/t.json: steps[0].retry.on[2]: expected a status (100-599), "timeout", "connect" or "protocol""#,
            #"routes/t.json: steps[0].retry.on[3]: expected a status (100-599), "timeout", "connect" or "protocol""#,
        ])
    }

    /// success statuses must be 100-599.
    @Test func problem_IsReported_WhenSuccessStatusOutOfRange() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1"}, "success": [200, 700]}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].success[1]: status must be between 100 and 599"])
    }

    /// The response status must be 100-599.
    @Test func problem_IsReported_WhenResponseStatusOutOfRange() {
        #expect(problems(routeFile(extra: #""response": {"status": 99}"#)) == ["routes/t.json: response.status: status must be between 100 and 599"])
    }

    /// when keys must read a step's result.
    @Test func problem_IsReported_WhenConditionDoesNotReadAStep() {
        let text = routeFile(steps: #"{"id": "a", "when": {"request.body.x": 1}, "request": {"url": "http://up.example/1"}}"#)
        #expect(problems(text) == [#"routes/t.json: steps[0].when["request.body.x"]: a condition must read a dependency's result: "steps.ID.status", "steps.ID.body…" or "steps.ID.headers.NAME""#])
    }

    /// when may only read a dependency of the step.
    @Test func problem_IsReported_WhenConditionReadsNonDependency() {
        let text = routeFile(steps: """
            {"id": "pay", "request": {"url": "http://up.example/1"}},
            {"id": "ship", "when": {"steps.pay.status": 200}, "request": {"url": "http://up.example/2"}}
            """)
        #expect(problems(text) == [#"routes/t.json: steps[1].when["steps.pay.status"]: step 'pay' is not a dependency of this step (add it to after) in steps.pay.status"#])
    }

    /// Step URLs must be http or https.
    @Test func problem_IsReported_WhenURLSchemeIsNotHTTP() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "ftp://up.example/1"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: URL must start with http:// or https://"])
    }

    /// A request value in the URL's host is refused: the caller could pick the upstream.
    @Test func problem_IsReported_WhenURLHostComesFromRequest() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://{{request.query.host}}/x"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: URL host must be fixed: a template value may only come after the host (start the path with '/')"])
    }

    /// A URL that is entirely a template is refused: its scheme and host would not be fixed.
    @Test func problem_IsReported_WhenWholeURLIsATemplate() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "{{request.body.callback}}"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: URL must begin with a fixed http:// or https:// scheme and host (only {{env.*}} may come before the path)"])
    }

    /// A malformed port is rejected.
    @Test func problem_IsReported_WhenURLPortIsInvalid() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example:99999/x"}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.url: URL has an invalid port"])
    }

    /// A host libcurl would refuse at every call is refused at load time: non-ASCII (as
    /// written, percent-encoded, or from an environment value, whose value the message does
    /// not quote), or holding a character curl's URL parser rejects. A non-ASCII path is
    /// not the host's business.
    @Test func problem_IsReported_WhenURLHostIsNotSendable() {
        let field = "routes/t.json: steps[0].request.url: "
        let nonASCII = field + "URL host has non-ASCII characters, which libcurl refuses (internationalized names are not converted: write the host's ASCII form, xn--…)"
        let cases: [(url: String, environment: [String: String], problem: String)] = [
            ("http://exämple.com/x", [:], nonASCII),
            ("https://user@exämple.com:8443/x", [:], nonASCII),
            ("{{env.SHOP_URL}}/x", ["SHOP_URL": "http://shöp.example"], nonASCII),
            ("http://ex%C3%A4mple.com/x", [:], field + "URL host must not be percent-encoded"),
            ("http://ex^ample.com/x", [:], field + "URL host may contain only ASCII letters, digits, '-', '.', '_' and '~'"),
            ("http://ex*ample.com:80/x", [:], field + "URL host may contain only ASCII letters, digits, '-', '.', '_' and '~'"),
        ]
        for c in cases {
            let text = routeFile(steps: #"{"id": "a", "request": {"url": ""# + c.url + #""}}"#)
            #expect(problems(text, environment: c.environment) == [c.problem], "\(c.url)")
        }
        for ok in ["http://up.example/ärger?q=ü", "http://up_1.example/x", "http://[::1]:8080/x", "http://127.0.0.1:9090"] {
            let text = routeFile(steps: #"{"id": "a", "request": {"url": ""# + ok + #""}}"#)
            #expect(problems(text) == [], "\(ok)")
        }
    }

    /// Framing headers are managed by the gateway and cannot be set by a route.
    @Test func problem_IsReported_WhenRouteSetsManagedHeader() {
        let text = routeFile(steps: #"{"id": "a", "request": {"url": "http://up.example/1", "headers": {"Content-Length": "5"}}}"#)
        #expect(problems(text) == ["routes/t.json: steps[0].request.headers.Content-Length: Content-Length is set by the gateway, not by routes"])
    }

    /// A route with an empty steps array and no response is rejected.
    @Test func problem_IsReported_WhenStepsIsEmptyWithoutResponse() {
        #expect(problems(#"{"name": "t", "method": "GET", "path": "/t", "steps": []}"#) == ["routes/t.json: steps: a route needs at least one step (or a response)"])
    }

    /// A directory without route files is an error.
    @Test func problem_IsReported_WhenDirectoryHasNoRouteFiles() {
        let directory = String(#filePath.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropLast()
            .map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/"))
        #expect(throws: RouteLoadError(problems: ["\(directory): (directory): no route files (*.json)"])) {
            try RouteLoader.load(directory: directory, environment: [:])
        }
    }

    /// A missing directory is an error naming the system reason.
    @Test func problem_IsReported_WhenDirectoryDoesNotExist() {
        #expect(throws: RouteLoadError(problems: ["/nonexistent/routes: (directory): cannot read directory: No such file or directory"])) {
            try RouteLoader.load(directory: "/nonexistent/routes", environment: [:])
        }
    }
}
