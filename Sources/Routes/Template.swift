import JSON

// Templates: `{{ … }}` references inside route-file strings, compiled once at load time.

/// A value a template can read at run time. `env.NAME` never appears here: environment
/// variables are substituted when the route file is loaded.
///
/// Step references carry the step's index in ``Route/steps`` (which is in topological order).
public enum TemplateRef: Sendable, Hashable {
    /// `request.body` (empty path: the whole body) or `request.body.a.b`; array elements by
    /// decimal index (`request.body.items.0.sku`), as ``JSON/lookup(_:)-([String])`` reads them.
    case requestBody([String])
    /// `request.query.NAME`: the (percent-decoded) query parameter `NAME`, a string.
    case requestQuery(String)
    /// `request.headers.NAME`: the request header `NAME` (stored lowercased), a string.
    case requestHeader(String)
    /// `request.path.NAME`: the (percent-decoded) path parameter `NAME`, a string.
    case requestPath(String)
    /// `steps.ID.status`: the step's last upstream status, an integer.
    case stepStatus(Int)
    /// `steps.ID.body` or `steps.ID.body.a.b`: (part of) the step's last response body.
    case stepBody(Int, [String])
    /// `steps.ID.headers.NAME`: a response header of the step (name stored lowercased), a string.
    case stepHeader(Int, String)
    /// `job.id`: the run's job id, a string.
    case jobID
    /// `step.idempotency_key`: stable per job and step (only inside a step's request).
    case stepIdempotencyKey
    /// `step.remaining_ms`: milliseconds left to the attempt's deadline, an integer (only inside a step's request).
    case stepRemainingMs

    /// Whether the value comes from the caller's request (body, query, header or path).
    public var isFromRequest: Bool {
        switch self {
        case .requestBody, .requestQuery, .requestHeader, .requestPath: return true
        default: return false
        }
    }

    /// The index of the step this reference reads, if it reads one.
    public var stepIndex: Int? {
        switch self {
        case .stepStatus(let i), .stepBody(let i, _), .stepHeader(let i, _): return i
        default: return nil
        }
    }
}

/// Supplies the values templates refer to while a route runs.
public protocol TemplateContext {
    /// The value of `ref`, or `nil` when it is missing (which makes rendering fail with a
    /// ``TemplateError``). Return `.null` for a value that exists but is null, e.g. a
    /// skipped step's body.
    func resolve(_ ref: TemplateRef) -> JSON?

    /// The value of `ref` as compact JSON bytes, exactly as `resolve(ref)?.serialize(into:)`
    /// would write them, when the context has them at hand (e.g. an upstream body received
    /// in canonical form); nil otherwise, and `resolve` is used. Default: nil.
    func resolveSerialized(_ ref: TemplateRef) -> [UInt8]?
}

extension TemplateContext {
    public func resolveSerialized(_ ref: TemplateRef) -> [UInt8]? { nil }
}

/// A template that could not be compiled or rendered.
public struct TemplateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The reference as written between the braces, e.g. `steps.payment.body.id`
    /// (empty for a syntax error such as an unterminated `{{`).
    public let reference: String
    /// What went wrong, e.g. `missing value` or `unknown step 'paymnt'`.
    public let message: String

    /// Creates an error about `reference`.
    public init(reference: String, message: String) {
        self.reference = reference
        self.message = message
    }

    /// `"{{reference}}: message"`, or just the message when there is no reference.
    public var description: String { reference.isEmpty ? message : "{{\(reference)}}: \(message)" }
}

/// A compiled template string: literal text and ``TemplateRef`` references.
///
/// `{{env.NAME}}` is substituted at compile time, so it is part of the literal text and
/// ``containsSecret`` is true: a rendered value may then hold a secret and must not be
/// logged or returned as is.
public struct Template: Sendable, Equatable {
    /// One piece of a template.
    public enum Part: Sendable, Hashable {
        /// Fixed text (including substituted environment values).
        case literal(String)
        /// A reference, with the text written between the braces (e.g. `request.path.id`).
        case reference(TemplateRef, name: String)
    }

    /// The pieces in order; adjacent literals are merged, empty literals dropped.
    public let parts: [Part]
    /// The template as written in the route file (environment values not substituted, so safe to log).
    public let source: String
    /// Whether an `{{env.*}}` value was substituted into the text.
    public let containsSecret: Bool
    /// The environment values substituted into the text that count as secrets (at least
    /// ``minimumSecretBytes`` long).
    let secretValues: [String]

    /// The shortest `{{env.*}}` value treated as a secret (redacted from responses and
    /// logs), in bytes: 8. Shorter values — flags (`true`), versions, ports, region names —
    /// collide with ordinary data (a redacted `true` would break every JSON body holding
    /// the literal), and credentials are longer.
    public static let minimumSecretBytes = 8

    init(parts: [Part], source: String, secretValues: [String], containsSecret: Bool) {
        self.parts = parts
        self.source = source
        self.secretValues = secretValues
        self.containsSecret = containsSecret
    }

    /// Compiles `text`.
    ///
    /// - Parameters:
    ///   - text: the template, e.g. `"id-{{request.path.id}}"`. Spaces inside the braces are ignored.
    ///   - environment: values for `{{env.NAME}}`. Default: empty.
    ///   - stepIDs: the step ids `steps.ID…` may name, in route order (a reference stores
    ///     the position of its step here). Default: none.
    /// - Throws: ``TemplateError`` for an unterminated `{{`, an unknown reference or step,
    ///   or an unset environment variable.
    public init(_ text: String, environment: [String: String] = [:], stepIDs: [String] = []) throws(TemplateError) {
        var indexes: [String: Int] = [:]
        for (i, id) in stepIDs.enumerated() where indexes[id] == nil { indexes[id] = i }
        self = try TemplateCompiler(environment: environment, stepIndexes: indexes).compile(text).get()
    }

    /// Whether the template is exactly one `{{…}}` reference (rendering keeps the value's JSON type).
    public var isSingleRef: Bool {
        if parts.count == 1, case .reference = parts[0] { return true }
        return false
    }

    /// The text when the template has no run-time references; else `nil`.
    public var literal: String? {
        switch parts.count {
        case 0: return ""
        case 1: if case .literal(let text) = parts[0] { return text }
        default: break
        }
        return nil
    }

    /// The run-time references, in order.
    public var references: [TemplateRef] {
        parts.compactMap { if case .reference(let ref, _) = $0 { return ref } else { return nil } }
    }

    /// Renders the template.
    ///
    /// Exactly one `{{…}}` and nothing else: the referenced value with its JSON type
    /// (`"{{request.body.amount}}"` with amount 42 gives `.int(42)`). Otherwise a `.string`
    /// where strings are inserted raw and other values as compact JSON text
    /// (`"id-{{request.body.n}}"` gives `"id-42"`).
    ///
    /// - Throws: ``TemplateError`` (`missing value`) when the context has no value for a reference.
    public func render(_ ctx: some TemplateContext) throws(TemplateError) -> JSON {
        if parts.count == 1, case .reference(let ref, let name) = parts[0] {
            guard let value = ctx.resolve(ref) else { throw TemplateError(reference: name, message: "missing value") }
            return value
        }
        return .string(try renderText(ctx))
    }

    /// Renders the template as text: strings raw, other values as compact JSON text, even
    /// for a single reference (`.int(42)` gives `"42"`).
    ///
    /// - Throws: ``TemplateError`` (`missing value`) when the context has no value for a reference.
    public func renderText(_ ctx: some TemplateContext) throws(TemplateError) -> String {
        if parts.count == 1, case .literal(let text) = parts[0] { return text }
        var out: [UInt8] = []
        for part in parts {
            switch part {
            case .literal(let text):
                out.append(contentsOf: text.utf8)
            case .reference(let ref, let name):
                guard let value = ctx.resolve(ref) else { throw TemplateError(reference: name, message: "missing value") }
                appendText(value, to: &out)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Renders the template as an HTTP header value: like ``renderText(_:)``, but a value
    /// holding CR, LF or NUL is refused (it could inject headers).
    ///
    /// - Throws: ``TemplateError``: `missing value`, or `value contains CR, LF or NUL`.
    public func renderHeaderValue(_ ctx: some TemplateContext) throws(TemplateError) -> String {
        if parts.count == 1, case .literal(let text) = parts[0] { return text }
        var out: [UInt8] = []
        for part in parts {
            switch part {
            case .literal(let text):
                out.append(contentsOf: text.utf8)
            case .reference(let ref, let name):
                guard let value = ctx.resolve(ref) else { throw TemplateError(reference: name, message: "missing value") }
                let start = out.count
                appendText(value, to: &out)
                if out[start...].contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }) {
                    throw TemplateError(reference: name, message: "value contains CR, LF or NUL")
                }
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Renders a URL template. Literal text (the scheme and host, fixed when the route was
    /// loaded) is kept as is; every interpolated value, whatever its source, is
    /// percent-encoded so only RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) remain.
    /// A value therefore cannot add a `/`, `?`, `#`, `@` or change the host.
    ///
    /// In the path (before any `?` or `#` in the literal text), a value that is empty, `.`
    /// or `..` is refused: it would address a different resource (`/orders/` or a parent path).
    ///
    /// - Throws: ``TemplateError``: `missing value`, or `value cannot be used in a URL path`.
    public func renderURL(_ ctx: some TemplateContext) throws(TemplateError) -> String {
        if parts.count == 1, case .literal(let text) = parts[0] { return text }
        var out: [UInt8] = []
        var inPath = true
        var scratch: [UInt8] = []
        for part in parts {
            switch part {
            case .literal(let text):
                out.append(contentsOf: text.utf8)
                if inPath && text.utf8.contains(where: { $0 == 0x3F || $0 == 0x23 }) { inPath = false }
            case .reference(let ref, let name):
                guard let value = ctx.resolve(ref) else { throw TemplateError(reference: name, message: "missing value") }
                scratch.removeAll(keepingCapacity: true)
                appendText(value, to: &scratch)
                if inPath && (scratch.isEmpty || scratch.allSatisfy({ $0 == 0x2E }) && scratch.count <= 2) {
                    throw TemplateError(reference: name, message: "value cannot be used in a URL path")
                }
                percentEncode(scratch, to: &out)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// Appends `value` as text: a string raw, anything else as compact JSON.
@inline(__always)
func appendText(_ value: JSON, to out: inout [UInt8]) {
    if case .string(let s) = value {
        out.append(contentsOf: s.utf8)
    } else {
        value.serialize(into: &out)
    }
}

/// Appends `bytes` with everything but RFC 3986 unreserved characters percent-encoded.
func percentEncode(_ bytes: [UInt8], to out: inout [UInt8]) {
    let hex: [UInt8] = Array("0123456789ABCDEF".utf8)
    for b in bytes {
        switch b {
        case 0x41...0x5A, 0x61...0x7A, 0x30...0x39, 0x2D, 0x2E, 0x5F, 0x7E:
            out.append(b)
        default:
            out.append(0x25)
            out.append(hex[Int(b >> 4)])
            out.append(hex[Int(b & 0x0F)])
        }
    }
}

// MARK: - Template values (JSON with templates inside)

/// A JSON value whose strings may be templates: a step's request body or the route's
/// response body.
///
/// Subtrees without any template are kept as ``literal(_:)`` and returned as is.
public indirect enum TemplateValue: Sendable {
    /// A subtree with no templates inside.
    case literal(JSON)
    /// A string containing `{{…}}` (or an `{{env.*}}` value, so ``Template/containsSecret``).
    case string(Template)
    /// An array with at least one template inside.
    case array([TemplateValue])
    /// An object with at least one template inside; member order kept. Keys are never templates.
    case object([(String, TemplateValue)])

    /// Compiles the strings inside `json`; see ``Template/init(_:environment:stepIDs:)``.
    ///
    /// - Throws: the first ``TemplateError`` found.
    public init(_ json: JSON, environment: [String: String] = [:], stepIDs: [String] = []) throws(TemplateError) {
        var indexes: [String: Int] = [:]
        for (i, id) in stepIDs.enumerated() where indexes[id] == nil { indexes[id] = i }
        var first: TemplateError?
        let value = TemplateValue.compile(json, field: "", compiler: TemplateCompiler(environment: environment, stepIndexes: indexes)) { _, error in
            if first == nil { first = error }
        }
        if let first { throw first }
        self = value
    }

    /// Renders to JSON; each string template renders as ``Template/render(_:)`` does, so
    /// `{"amount": "{{request.body.amount}}"}` keeps the amount's type.
    ///
    /// - Throws: ``TemplateError`` for the first missing value.
    public func render(_ ctx: some TemplateContext) throws(TemplateError) -> JSON {
        switch self {
        case .literal(let json):
            return json
        case .string(let template):
            return try template.render(ctx)
        case .array(let elements):
            var out: [JSON] = []
            out.reserveCapacity(elements.count)
            for element in elements { out.append(try element.render(ctx)) }
            return .array(out)
        case .object(let members):
            var object = JSONObject()
            for (key, value) in members { object[key] = try value.render(ctx) }
            return .object(object)
        }
    }

    /// Renders straight to compact JSON bytes appended to `out` (same result as
    /// `render(ctx).serialize(into:)`, without building the intermediate value).
    ///
    /// - Throws: ``TemplateError`` for the first missing value; `out` may then hold a partial result.
    public func serialize(_ ctx: some TemplateContext, into out: inout [UInt8]) throws(TemplateError) {
        switch self {
        case .literal(let json):
            json.serialize(into: &out)
        case .string(let template):
            if template.parts.count == 1, case .reference(let ref, _) = template.parts[0],
               let bytes = ctx.resolveSerialized(ref) {
                out.append(contentsOf: bytes)
                return
            }
            try template.render(ctx).serialize(into: &out)
        case .array(let elements):
            out.append(0x5B)
            for (i, element) in elements.enumerated() {
                if i != 0 { out.append(0x2C) }
                try element.serialize(ctx, into: &out)
            }
            out.append(0x5D)
        case .object(let members):
            out.append(0x7B)
            for (i, (key, value)) in members.enumerated() {
                if i != 0 { out.append(0x2C) }
                JSON.appendQuoted(key, to: &out)
                out.append(0x3A)
                try value.serialize(ctx, into: &out)
            }
            out.append(0x7D)
        }
    }

    /// Every template inside, depth first.
    public var templates: [Template] {
        var result: [Template] = []
        collectTemplates(into: &result)
        return result
    }

    /// Every run-time reference inside, depth first.
    public var references: [TemplateRef] { templates.flatMap(\.references) }

    /// Whether any template inside had an `{{env.*}}` value substituted.
    public var containsSecret: Bool { templates.contains(where: \.containsSecret) }

    private func collectTemplates(into result: inout [Template]) {
        switch self {
        case .literal: break
        case .string(let template): result.append(template)
        case .array(let elements): for e in elements { e.collectTemplates(into: &result) }
        case .object(let members): for (_, v) in members { v.collectTemplates(into: &result) }
        }
    }

    /// Compiles `json`, calling `report(fieldPath, error)` for each bad string (which then
    /// stays a literal). `field` is the path of `json` in the route file.
    static func compile(_ json: JSON, field: String, compiler: TemplateCompiler,
                        report: (String, TemplateError) -> Void) -> TemplateValue {
        switch json {
        case .string(let text):
            guard TemplateCompiler.mayContainTemplate(text) else { return .literal(json) }
            switch compiler.compile(text) {
            case .success(let template): return .string(template)
            case .failure(let error):
                report(field, error)
                return .literal(json)
            }
        case .array(let elements):
            var compiled: [TemplateValue] = []
            var anyTemplate = false
            for (i, element) in elements.enumerated() {
                let value = compile(element, field: field + "[\(i)]", compiler: compiler, report: report)
                if case .literal = value {} else { anyTemplate = true }
                compiled.append(value)
            }
            return anyTemplate ? .array(compiled) : .literal(json)
        case .object(let object):
            var compiled: [(String, TemplateValue)] = []
            var anyTemplate = false
            for (key, value) in object {
                let c = compile(value, field: fieldPath(field, key), compiler: compiler, report: report)
                if case .literal = c {} else { anyTemplate = true }
                compiled.append((key, c))
            }
            return anyTemplate ? .object(compiled) : .literal(json)
        default:
            return .literal(json)
        }
    }
}

// MARK: - Compiler

/// Compiles template strings against an environment and the route's step ids.
struct TemplateCompiler {
    let environment: [String: String]
    /// Step id → index in the route's (topologically ordered) steps.
    let stepIndexes: [String: Int]

    static func mayContainTemplate(_ text: String) -> Bool {
        var previousBrace = false
        for b in text.utf8 {
            if b == 0x7B {
                if previousBrace { return true }
                previousBrace = true
            } else {
                previousBrace = false
            }
        }
        return false
    }

    func compile(_ text: String) -> Result<Template, TemplateError> {
        let bytes = Array(text.utf8)
        var parts: [Template.Part] = []
        var literal: [UInt8] = []
        var secrets: [String] = []
        var containsSecret = false
        var i = 0
        let n = bytes.count
        while i < n {
            if bytes[i] == 0x7B, i + 1 < n, bytes[i + 1] == 0x7B {
                var j = i + 2
                while j + 1 < n, !(bytes[j] == 0x7D && bytes[j + 1] == 0x7D) { j += 1 }
                guard j + 1 < n else {
                    return .failure(TemplateError(reference: "", message: "unterminated '{{' (no matching '}}')"))
                }
                var lo = i + 2, hi = j
                while lo < hi, bytes[lo] == 0x20 { lo += 1 }
                while hi > lo, bytes[hi - 1] == 0x20 { hi -= 1 }
                let name = String(decoding: bytes[lo..<hi], as: UTF8.self)
                i = j + 2
                switch parseReference(name) {
                case .failure(let error):
                    return .failure(error)
                case .success(.env(let variable)):
                    guard let value = environment[variable] else {
                        return .failure(TemplateError(reference: name, message: "environment variable \(variable) is not set"))
                    }
                    literal.append(contentsOf: value.utf8)
                    containsSecret = true
                    if value.utf8.count >= Template.minimumSecretBytes { secrets.append(value) }
                case .success(.ref(let ref)):
                    if !literal.isEmpty {
                        parts.append(.literal(String(decoding: literal, as: UTF8.self)))
                        literal.removeAll()
                    }
                    parts.append(.reference(ref, name: name))
                }
            } else {
                literal.append(bytes[i])
                i += 1
            }
        }
        if !literal.isEmpty { parts.append(.literal(String(decoding: literal, as: UTF8.self))) }
        return .success(Template(parts: parts, source: text, secretValues: secrets, containsSecret: containsSecret))
    }

    enum Parsed {
        case ref(TemplateRef)
        case env(String)
    }

    func parseReference(_ name: String) -> Result<Parsed, TemplateError> {
        func fail(_ message: String) -> Result<Parsed, TemplateError> {
            .failure(TemplateError(reference: name, message: message))
        }
        func path(_ rest: Substring) -> [String]? {
            let components = rest.split(separator: ".", omittingEmptySubsequences: false)
            guard !components.contains(where: \.isEmpty) else { return nil }
            return components.map(String.init)
        }
        switch name {
        case "job.id": return .success(.ref(.jobID))
        case "step.idempotency_key": return .success(.ref(.stepIdempotencyKey))
        case "step.remaining_ms": return .success(.ref(.stepRemainingMs))
        case "request.body": return .success(.ref(.requestBody([])))
        default: break
        }
        if let rest = name.dropPrefix("env.") {
            guard isIdentifier(rest) else { return fail("invalid environment variable name") }
            return .success(.env(String(rest)))
        }
        if let rest = name.dropPrefix("request.body.") {
            guard let p = path(rest) else { return fail("empty path component") }
            return .success(.ref(.requestBody(p)))
        }
        if let rest = name.dropPrefix("request.query.") {
            guard !rest.isEmpty else { return fail("missing query parameter name") }
            return .success(.ref(.requestQuery(String(rest))))
        }
        if let rest = name.dropPrefix("request.headers.") {
            guard isToken(rest) else { return fail("invalid header name") }
            return .success(.ref(.requestHeader(rest.lowercased())))
        }
        if let rest = name.dropPrefix("request.path.") {
            guard !rest.isEmpty else { return fail("missing path parameter name") }
            return .success(.ref(.requestPath(String(rest))))
        }
        if let rest = name.dropPrefix("steps.") {
            let id = rest.prefix(while: { $0 != "." })
            let tail = rest.dropFirst(id.count)
            guard !id.isEmpty else { return fail("missing step id") }
            guard let index = stepIndexes[String(id)] else { return fail("unknown step '\(id)'") }
            if tail == ".status" { return .success(.ref(.stepStatus(index))) }
            if tail == ".body" { return .success(.ref(.stepBody(index, []))) }
            if let bodyPath = tail.dropPrefix(".body.") {
                guard let p = path(bodyPath) else { return fail("empty path component") }
                return .success(.ref(.stepBody(index, p)))
            }
            if let header = tail.dropPrefix(".headers.") {
                guard isToken(header) else { return fail("invalid header name") }
                return .success(.ref(.stepHeader(index, header.lowercased())))
            }
            return fail("expected steps.ID.status, steps.ID.body… or steps.ID.headers.NAME")
        }
        return fail("unknown reference (expected request.…, steps.ID.…, env.NAME, job.id, step.idempotency_key or step.remaining_ms)")
    }
}

extension StringProtocol {
    /// The rest after `prefix`, or nil when it does not start with it.
    func dropPrefix(_ prefix: String) -> SubSequence? {
        hasPrefix(prefix) ? dropFirst(prefix.count) : nil
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`
func isIdentifier(_ text: some StringProtocol) -> Bool {
    guard let first = text.utf8.first, first == 0x5F || (first | 0x20) >= 0x61 && (first | 0x20) <= 0x7A else { return false }
    return text.utf8.allSatisfy { $0 == 0x5F || ($0 >= 0x30 && $0 <= 0x39) || (($0 | 0x20) >= 0x61 && ($0 | 0x20) <= 0x7A) }
}

/// An RFC 9110 token: `1*tchar`.
func isToken(_ text: some StringProtocol) -> Bool {
    !text.isEmpty && text.utf8.allSatisfy(isTokenByte)
}

func isTokenByte(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
    case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
         UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
         UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
        return true
    default: return false
    }
}

/// Appends a member name to a field path: `.key`, or `["key"]` when the key is not a plain name.
func fieldPath(_ base: String, _ key: String) -> String {
    let plain = !key.isEmpty && key.utf8.allSatisfy {
        ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F || $0 == 0x2D
    }
    if plain { return base.isEmpty ? key : base + "." + key }
    return base + "[" + JSON.string(key).text + "]"
}
