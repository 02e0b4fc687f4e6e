// Route paths such as "/checkout/{order_id}".

/// A route's path: literal segments and `{name}` parameters, each a whole segment.
///
/// `/checkout/{order_id}` matches `/checkout/A-17` with `order_id = "A-17"`. Literal
/// segments match byte for byte (case-sensitive, not percent-decoded); a parameter matches
/// one non-empty segment and its value is percent-decoded. A trailing slash is significant
/// (`/a/` does not match `/a`). A query string (`?…`) in the request path is ignored.
public struct PathPattern: Sendable, Equatable, CustomStringConvertible {
    /// One segment of the pattern.
    public enum Segment: Sendable, Equatable {
        /// Fixed text, matched exactly.
        case literal(String)
        /// `{name}`: any one non-empty segment.
        case parameter(String)
    }

    /// The pattern as written, e.g. `/checkout/{order_id}`.
    public let source: String
    /// The segments between slashes (`/` alone is one empty literal segment).
    public let segments: [Segment]
    /// Literal segments as bytes (nil for parameters), for matching without allocation.
    let literalBytes: [[UInt8]?]

    /// Parses a pattern.
    ///
    /// - Throws: ``PathPatternError`` when the path does not start with `/`, a segment
    ///   mixes text and a parameter (`a{b}`), a parameter name is not `[A-Za-z_][A-Za-z0-9_]*`
    ///   or repeats, or a literal holds characters other than RFC 3986 path characters
    ///   (letters, digits, `-._~!$&'()*+,;=:@`).
    public init(_ source: String) throws(PathPatternError) {
        guard source.hasPrefix("/") else { throw PathPatternError(message: "must start with '/'") }
        var segments: [Segment] = []
        var names: Set<String> = []
        for raw in source.utf8.dropFirst().split(separator: 0x2F, omittingEmptySubsequences: false) {
            let text = String(decoding: raw, as: UTF8.self)
            if raw.first == 0x7B || raw.last == 0x7D || raw.contains(0x7B) || raw.contains(0x7D) {
                guard raw.count >= 2, raw.first == 0x7B, raw.last == 0x7D,
                      !raw.dropFirst().dropLast().contains(0x7B), !raw.dropFirst().dropLast().contains(0x7D)
                else { throw PathPatternError(message: "segment '\(text)' mixes text and a parameter (a parameter must be a whole segment)") }
                let name = String(text.dropFirst().dropLast())
                guard isIdentifier(name) else {
                    throw PathPatternError(message: "invalid parameter name '\(name)' (use letters, digits and '_')")
                }
                guard names.insert(name).inserted else { throw PathPatternError(message: "duplicate parameter '\(name)'") }
                segments.append(.parameter(name))
            } else {
                guard raw.allSatisfy(isPathByte) else {
                    throw PathPatternError(message: "segment '\(text)' has characters not allowed in a URL path")
                }
                segments.append(.literal(text))
            }
        }
        self.source = source
        self.segments = segments
        self.literalBytes = segments.map { if case .literal(let s) = $0 { Array(s.utf8) } else { nil } }
    }

    /// The parameter names in order.
    public var parameterNames: [String] {
        segments.compactMap { if case .parameter(let name) = $0 { name } else { nil } }
    }

    /// The pattern with parameter names erased (`/checkout/{}`): two patterns with the same
    /// shape match exactly the same paths.
    public var shape: String {
        "/" + segments.map { if case .literal(let s) = $0 { s } else { "{}" } }.joined(separator: "/")
    }

    /// The source text.
    public var description: String { source }

    /// Two patterns are equal when written the same.
    public static func == (lhs: PathPattern, rhs: PathPattern) -> Bool { lhs.source == rhs.source }

    /// Matches a request path (a query string after `?` is ignored).
    ///
    /// - Returns: the parameters as `(name, percent-decoded value)` in pattern order, or
    ///   `nil` when the path does not match or a parameter is not valid percent-encoded UTF-8.
    public func match(_ path: String) -> [(String, String)]? {
        var path = path
        return path.withUTF8 { buffer in
            withSegments(of: buffer, maxSegments: segments.count) { count, starts, ends in
                guard count == segments.count else { return nil }
                return matchSegments(buffer, starts, ends)
            } ?? nil
        }
    }

    /// Matches a request path; see ``match(_:)-(String)``.
    public func match(_ path: Substring) -> [(String, String)]? { match(String(path)) }

    /// Whether the pre-split `path` matches; decodes parameters on success.
    func matchSegments(_ path: UnsafeBufferPointer<UInt8>, _ starts: UnsafeMutableBufferPointer<Int>,
                       _ ends: UnsafeMutableBufferPointer<Int>) -> [(String, String)]? {
        guard literalsMatch(path, starts, ends) else { return nil }
        guard case .decoded(let params) = decodeParameters(path, starts, ends) else { return nil }
        return params
    }

    /// Whether every literal segment equals the path's segment and every parameter segment
    /// is non-empty (the segment counts must already be equal).
    func literalsMatch(_ path: UnsafeBufferPointer<UInt8>, _ starts: UnsafeMutableBufferPointer<Int>,
                       _ ends: UnsafeMutableBufferPointer<Int>) -> Bool {
        for i in literalBytes.indices {
            let start = starts[i], end = ends[i]
            if let literal = literalBytes[i] {
                guard end - start == literal.count else { return false }
                var k = 0
                while k < literal.count {
                    if path[start + k] != literal[k] { return false }
                    k += 1
                }
            } else if end == start {
                return false
            }
        }
        return true
    }

    /// The parameters of a path whose literal segments match.
    enum DecodedParameters {
        /// `(name, percent-decoded value)` in pattern order.
        case decoded([(String, String)])
        /// The parameter `name`'s segment (`raw`, as sent) has a malformed `%` escape or
        /// is not UTF-8 once percent-decoded.
        case invalid(name: String, raw: String)
    }

    /// The parameters, percent-decoded, or the first one that is not valid
    /// percent-encoded UTF-8.
    func decodeParameters(_ path: UnsafeBufferPointer<UInt8>, _ starts: UnsafeMutableBufferPointer<Int>,
                          _ ends: UnsafeMutableBufferPointer<Int>) -> DecodedParameters {
        var params: [(String, String)] = []
        for i in segments.indices {
            guard case .parameter(let name) = segments[i] else { continue }
            let raw = UnsafeBufferPointer(rebasing: path[starts[i]..<ends[i]])
            guard let value = percentDecode(raw) else {
                return .invalid(name: name, raw: String(decoding: raw, as: UTF8.self))
            }
            params.append((name, value))
        }
        return .decoded(params)
    }
}

/// Why a path pattern is invalid.
public struct PathPatternError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, e.g. `must start with '/'`.
    public let message: String
    /// The message.
    public var description: String { message }
}

/// RFC 3986 `pchar` minus percent-encoding: unreserved, sub-delims, `:` and `@`.
func isPathByte(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
    case UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "!"),
         UInt8(ascii: "$"), UInt8(ascii: "&"), UInt8(ascii: "'"), UInt8(ascii: "("), UInt8(ascii: ")"),
         UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: "="),
         UInt8(ascii: ":"), UInt8(ascii: "@"):
        return true
    default: return false
    }
}

/// Splits the path part of `buffer` (up to `?`) into segments after the leading `/` and
/// calls `body(count, starts, ends)` with stack-allocated boundaries. Returns nil without
/// calling `body` when the path does not start with `/` or has more than `maxSegments` segments.
@inline(__always)
func withSegments<R>(of buffer: UnsafeBufferPointer<UInt8>, maxSegments: Int,
                     _ body: (Int, UnsafeMutableBufferPointer<Int>, UnsafeMutableBufferPointer<Int>) -> R) -> R? {
    var end = 0
    while end < buffer.count, buffer[end] != 0x3F { end += 1 }
    guard end > 0, buffer[0] == 0x2F else { return nil }
    var count = 1
    for i in 1..<end where buffer[i] == 0x2F { count += 1 }
    guard count <= maxSegments else { return nil }
    return withUnsafeTemporaryAllocation(of: Int.self, capacity: count * 2) { storage in
        let starts = UnsafeMutableBufferPointer(rebasing: storage[0..<count])
        let ends = UnsafeMutableBufferPointer(rebasing: storage[count..<(count * 2)])
        var segment = 0
        starts[0] = 1
        for i in 1..<end where buffer[i] == 0x2F {
            ends[segment] = i
            segment += 1
            starts[segment] = i + 1
        }
        ends[segment] = end
        return body(count, starts, ends)
    }
}

/// Percent-decodes `bytes`; nil for a malformed `%` escape or invalid UTF-8.
func percentDecode(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
    guard bytes.contains(0x25) else { return String(validating: bytes, as: UTF8.self) }
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = 0
    while i < bytes.count {
        let b = bytes[i]
        if b == 0x25 {
            guard i + 2 < bytes.count, let hi = hexValue(bytes[i + 1]), let lo = hexValue(bytes[i + 2]) else { return nil }
            out.append(hi << 4 | lo)
            i += 3
        } else {
            out.append(b)
            i += 1
        }
    }
    return String(validating: out, as: UTF8.self)
}

private func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case 0x30...0x39: return b - 0x30
    case 0x41...0x46: return b - 0x41 + 10
    case 0x61...0x66: return b - 0x61 + 10
    default: return nil
    }
}
