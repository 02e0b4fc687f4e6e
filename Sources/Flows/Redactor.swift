import Glibc
import JSON
import Routes

/// Replaces every occurrence of configured secrets (values of `{{env.*}}`) with
/// `[redacted]`, for anything Switchboard writes to a caller, a job or a log.
///
/// Text gets a plain byte replacement (``redact(_:)-(String)``). A JSON body gets one
/// that keeps it JSON (``redactJSON(_:)``): a secret inside a string is replaced
/// within that string, and any other token a secret touches (a number, `true`, a
/// string it runs out of) becomes the string `"[redacted]"`.
///
/// Immutable and `Sendable`. The common case — no secret occurs — costs one
/// `memchr`/`memcmp` scan per secret (per searched form, for JSON) over the bytes,
/// and neither parses nor copies them.
public struct Redactor: Sendable {
    /// The secrets, longest first. Values shorter than ``Template/minimumSecretBytes``
    /// (8) are not secrets and are ignored: flags, versions, ports and region names
    /// collide with ordinary data, and credentials are longer.
    public let secrets: [[UInt8]]
    /// What ``redactJSON(_:)`` searches for: each secret as is and, where they differ,
    /// as it appears inside a JSON string — escaped the way ``JSON/serialize(into:)``
    /// escapes it, and that with `/` written `\/` (as some other serializers do).
    private let jsonForms: [[UInt8]]

    /// A redactor for `secrets` (e.g. ``RouteTable/secrets``); values under
    /// ``Template/minimumSecretBytes`` bytes are dropped.
    public init(secrets: [String]) {
        self.secrets = secrets.map { Array($0.utf8) }.filter { $0.count >= Template.minimumSecretBytes }
            .sorted { $0.count > $1.count }
        var forms: [[UInt8]] = []
        for secret in self.secrets {
            var quoted: [UInt8] = []
            JSON.appendQuoted(String(decoding: secret, as: UTF8.self), to: &quoted)
            let escaped = Array(quoted.dropFirst().dropLast())
            var slashEscaped: [UInt8] = []
            for b in escaped {
                if b == 0x2F { slashEscaped.append(0x5C) }
                slashEscaped.append(b)
            }
            for form in [secret, escaped, slashEscaped] where !forms.contains(form) { forms.append(form) }
        }
        self.jsonForms = forms
    }

    /// `text` with every secret replaced byte for byte (see ``redact(_:)-([UInt8])``).
    public func redact(_ text: String) -> String {
        guard !secrets.isEmpty else { return text }
        let bytes = Array(text.utf8)
        let r = redact(bytes)
        return r == bytes ? text : String(decoding: r, as: UTF8.self)
    }

    /// `headers` with every secret in their values replaced (see ``redact(_:)-(String)``),
    /// names and order kept; returns the input when no secret is configured or none occurs.
    public func redact(headers: [(String, String)]) -> [(String, String)] {
        guard !secrets.isEmpty else { return headers }
        var out = headers
        for (i, (_, value)) in headers.enumerated() {
            let r = redact(value)
            if r != value { out[i].1 = r }
        }
        return out
    }

    /// `bytes` (UTF-8 text) with every secret replaced byte for byte; returns the input
    /// when none occurs. For a JSON body use ``redactJSON(_:)``.
    public func redact(_ bytes: [UInt8]) -> [UInt8] {
        var current = bytes
        for secret in secrets where Redactor.find(secret, in: current, from: 0) != nil {
            var out: [UInt8] = []
            out.reserveCapacity(current.count)
            var i = 0
            while let hit = Redactor.find(secret, in: current, from: i) {
                out.append(contentsOf: current[i..<hit])
                out.append(contentsOf: Redactor.marker)
                i = hit + secret.count
            }
            out.append(contentsOf: current[i...])
            current = out
        }
        return current
    }

    /// `bytes`, one JSON text, with every secret replaced so that it stays one JSON text;
    /// returns the input when no secret occurs (before anything is parsed or copied).
    ///
    /// Each occurrence of a secret — as is, or as it appears inside a JSON string: escaped
    /// the way ``JSON/serialize(into:)`` escapes it, and that with `/` written `\/` — is
    /// dealt with by the token it lies in:
    /// - wholly inside one string (a value or a key): that string is decoded, the secret
    ///   replaced by `[redacted]` in the decoded text, and the string written back
    ///   escaped by ``JSON/serialize(into:)`` (its other escapes may change form);
    /// - anything else — a number, `true`/`false`/`null`, or running over a quote,
    ///   a separator or whitespace into other tokens: every string, number and literal
    ///   it touches becomes the string `"[redacted]"`.
    ///
    /// If a secret would still occur after that (a string whose escapes only look like
    /// it, or one made of separators and whitespace only), the token, or else the whole
    /// body, becomes `"[redacted]"`. Bytes that are not one JSON text get ``redact(_:)-([UInt8])``.
    /// Escapes other serializers may write (`\u0041` for `A`) are not searched for;
    /// Switchboard's own serializer writes none of them.
    public func redactJSON(_ bytes: [UInt8]) -> [UInt8] {
        guard let first = jsonForms.firstIndex(where: { Redactor.find($0, in: bytes, from: 0) != nil }) else {
            return bytes
        }
        guard (try? JSON.parse(bytes)) != nil else { return redact(bytes) }
        // Mark every byte some occurrence covers.
        var covered = [Bool](repeating: false, count: bytes.count)
        for form in jsonForms[first...] {
            var i = 0
            while let hit = Redactor.find(form, in: bytes, from: i) {
                for k in hit..<hit + form.count { covered[k] = true }
                i = hit + 1
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            let start = i
            let b = bytes[i]
            if b == 0x22 {
                i += 1
                while bytes[i] != 0x22 { i += bytes[i] == 0x5C ? 2 : 1 }
                i += 1  // past the closing quote
            } else if Redactor.isSeparator(b) {
                out.append(b)
                i += 1
                continue
            } else {
                while i < bytes.count, bytes[i] != 0x22, !Redactor.isSeparator(bytes[i]) { i += 1 }
            }
            let token = bytes[start..<i]
            if !covered[start..<i].contains(true) {
                out.append(contentsOf: token)
            } else if b == 0x22, !covered[start], !covered[i - 1], let inside = redactInside(string: token) {
                out.append(contentsOf: inside)
            } else {
                out.append(contentsOf: Redactor.quotedMarker)
            }
        }
        return containsSecret(out) ? Redactor.quotedMarker : out
    }

    /// What replaces a secret.
    private static let markerText = "[redacted]"
    private static let marker = Array(markerText.utf8)
    /// `"[redacted]"`: what a JSON token, or body, that a secret cannot be cut out of becomes.
    private static let quotedMarker: [UInt8] = {
        var out: [UInt8] = []
        JSON.appendQuoted(markerText, to: &out)
        return out
    }()

    /// The JSON string token `string` (quotes included) with the secrets in its decoded
    /// text replaced, written back quoted; nil when a secret would still occur in it.
    private func redactInside(string: ArraySlice<UInt8>) -> [UInt8]? {
        guard case .string(let text)? = try? JSON.parse(string) else { return nil }
        var out: [UInt8] = []
        JSON.appendQuoted(redact(text), to: &out)
        return containsSecret(out) ? nil : out
    }

    /// Whether any secret occurs in `bytes`, as is or escaped.
    private func containsSecret(_ bytes: [UInt8]) -> Bool {
        jsonForms.contains { Redactor.find($0, in: bytes, from: 0) != nil }
    }

    /// JSON's structural characters and whitespace: what ends a number or a literal.
    private static func isSeparator(_ b: UInt8) -> Bool {
        switch b {
        case 0x7B, 0x7D, 0x5B, 0x5D, 0x2C, 0x3A, 0x20, 0x09, 0x0A, 0x0D: return true
        default: return false
        }
    }

    /// Offset of the first occurrence of `needle` in `haystack` at or after `from`
    /// (`memchr` for the first byte, then `memcmp`).
    private static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
        guard haystack.count - from >= needle.count else { return nil }
        return haystack.withUnsafeBytes { h in
            needle.withUnsafeBytes { n in
                let base = h.baseAddress!
                let last = h.count - n.count  // last offset where a match can start
                var i = from
                while i <= last {
                    guard let p = memchr(base + i, Int32(n[0]), last - i + 1) else { return nil }
                    let at = base.distance(to: UnsafeRawPointer(p))
                    if memcmp(base + at, n.baseAddress!, n.count) == 0 { return at }
                    i = at + 1
                }
                return nil
            }
        }
    }
}
