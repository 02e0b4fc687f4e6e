import JSON

/// What the sandbox's endpoints see of a request, independent of the HTTP server's types.
struct SandboxRequest {
    /// The method, as sent (`GET`, `POST`, …).
    var method: String
    /// The path without the query, still percent-encoded.
    var path: String
    /// Query parameters, percent-decoded; for a repeated name the first value wins.
    var query: [String: String]
    /// Looks a header up by name (case-insensitive).
    var header: (String) -> String?
    /// The raw body.
    var body: [UInt8]

    /// The path's segments, percent-decoded (`/stock/a%20b` → `["stock", "a b"]`).
    var segments: [String] {
        path.split(separator: "/", omittingEmptySubsequences: true).map { percentDecode($0) }
    }
}

/// What an endpoint answers: status, extra headers, a JSON body (`nil` for none) and
/// how long to hold the answer back.
struct SandboxReply {
    var status: Int
    var headers: [(String, String)] = []
    var body: JSON?
    /// Milliseconds to wait (on a loop timer) before answering.
    var delayMilliseconds: Int = 0

    /// A JSON error body: `{"error": message, "status": status}`.
    static func error(_ status: Int, _ message: String) -> SandboxReply {
        SandboxReply(status: status, body: ["error": .string(message), "status": .int(Int64(status))])
    }
}

/// Splits a raw query string (`a=1&b=x%20y`) into percent-decoded pairs; `+` is a space.
/// A name without `=` has the empty value; the first occurrence of a name wins.
func parseQuery(_ query: String?) -> [String: String] {
    guard let query, !query.isEmpty else { return [:] }
    var out: [String: String] = [:]
    for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
        let name: Substring
        let value: Substring
        if let eq = pair.firstIndex(of: "=") {
            name = pair[..<eq]
            value = pair[pair.index(after: eq)...]
        } else {
            name = pair
            value = ""
        }
        let key = percentDecode(name, plusIsSpace: true)
        if out[key] == nil { out[key] = percentDecode(value, plusIsSpace: true) }
    }
    return out
}

/// Decodes `%XX` escapes (and `+` when `plusIsSpace`); a malformed escape is kept as written.
func percentDecode(_ text: Substring, plusIsSpace: Bool = false) -> String {
    let bytes = Array(text.utf8)
    guard bytes.contains(where: { $0 == 0x25 || (plusIsSpace && $0 == 0x2B) }) else { return String(text) }
    func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x37
        case 0x61...0x66: return c - 0x57
        default: return nil
        }
    }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    while i < bytes.count {
        let b = bytes[i]
        if b == 0x25, i + 2 < bytes.count, let h = hexValue(bytes[i + 1]), let l = hexValue(bytes[i + 2]) {
            out.append(h << 4 | l)
            i += 3
        } else {
            out.append(plusIsSpace && b == 0x2B ? 0x20 : b)
            i += 1
        }
    }
    return String(decoding: out, as: UTF8.self)
}

/// 64-bit FNV-1a of `text`'s UTF-8: a stable hash (unlike `Hasher`, the same in every
/// process), so "deterministic" sandbox values survive restarts.
func stableHash(_ bytes: some Sequence<UInt8>) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01b3
    }
    return h
}
