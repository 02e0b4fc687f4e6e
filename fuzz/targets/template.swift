// libFuzzer target: template compile and render (render, renderText, renderURL,
// renderHeaderValue) with a context that answers every reference. Secrets from
// the environment must never reach a header value with CR/LF.
// Compiled with Sources/Routes/*.swift against a separately built JSON module.
import JSON

struct FuzzContext: TemplateContext {
    let value: JSON
    func resolve(_ ref: TemplateRef) -> JSON? {
        switch ref {
        case .requestQuery, .requestHeader, .requestPath: return .string("a b/\r\n{{x}}%")
        case .stepStatus: return .int(200)
        case .jobID: return .string("job")
        case .stepIdempotencyKey: return .string("key")
        case .stepRemainingMs: return .int(5)
        case .requestBody(let p), .stepBody(_, let p): return p.first == "missing" ? nil : value
        case .stepHeader: return .string("h\u{0}v")
        }
    }
}

private let environment = ["BASE": "http://127.0.0.1:9", "TOKEN": "s3\r\ncret", "EMPTY": ""]

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count > 0 else { return 0 }
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    let text = String(decoding: data.dropFirst(), as: UTF8.self)
    let values: [JSON] = [.null, .int(-1), .double(0.5), .string("x\"y\u{7}"), .array([.bool(true)]), ["k": .string("v\r\n")]]
    let ctx = FuzzContext(value: values[Int(data[0]) % values.count])
    guard let t = try? Template(text, environment: environment, stepIDs: ["a", "b-1", "c_2"]) else { return 0 }
    _ = try? t.render(ctx)
    _ = try? t.renderText(ctx)
    _ = try? t.renderURL(ctx)
    // The loader refuses header templates whose literal text (env values included)
    // holds CR, LF or NUL; for the others, no interpolated value may bring one in.
    let literalIsClean = t.parts.allSatisfy {
        if case .literal(let s) = $0 { return !s.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) }
        return true
    }
    if literalIsClean, let h = try? t.renderHeaderValue(ctx) {
        precondition(!h.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }), "CR/LF/NUL in a rendered header value")
    }
    return 0
}
