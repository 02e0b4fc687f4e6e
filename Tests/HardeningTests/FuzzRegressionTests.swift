import JSON
import Routes
import Testing

/// Regression tests for inputs the fuzzers (fuzz/) turned up.
@Suite struct FuzzRegressionTests {
    /// Context answering every reference with a string holding CR LF.
    struct CRLFContext: TemplateContext {
        func resolve(_ ref: TemplateRef) -> JSON? { .string("v\r\nInjected: 1") }
    }

    /// Found by fuzz target `template` (seed fuzz/corpus/template/env_crlf_header): an `{{env.*}}` value with CR LF is literal text that `renderHeaderValue` does not re-check, so the route loader must refuse it in a header.
    @Test func headerTemplate_EnvValueWithCRLF_RefusedAtLoad() {
        let file = #"{"name":"r","method":"GET","path":"/r","steps":[{"id":"a","timeout":"1s","request":{"method":"GET","url":"http://127.0.0.1:9/x","headers":{"Authorization":"Bearer {{env.TOKEN}}","X-Q":"{{request.query.q}}"}}}]}"#
        #expect(throws: RouteLoadError.self) {
            _ = try RouteLoader.parse(file: "r.json", data: Array(file.utf8), environment: ["TOKEN": "s3\r\ncret"])
        }
        #expect(throws: Never.self) {
            _ = try RouteLoader.parse(file: "r.json", data: Array(file.utf8), environment: ["TOKEN": "s3cret"])
        }
    }

    /// An interpolated value holding CR LF is refused when rendered as a header value (no header injection into upstream requests).
    @Test func headerTemplate_InterpolatedCRLF_Refused() throws {
        let t = try Template("Bearer {{request.query.q}}")
        #expect(throws: TemplateError.self) { _ = try t.renderHeaderValue(CRLFContext()) }
    }
}
