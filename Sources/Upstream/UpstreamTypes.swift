import EventLoop
import Locking

/// One outbound HTTP request to a third-party API.
public struct UpstreamRequest: Sendable {
    /// The request method, e.g. `"POST"`.
    public var method: String
    /// The absolute `http` or `https` URL.
    public var url: String
    /// Request header fields, in order. `Content-Length` and `Host` are set by libcurl.
    public var headers: [(String, String)]
    /// The request body; empty means none.
    public var body: [UInt8]
    /// The absolute instant the attempt must finish by (response fully read).
    public var deadline: Instant
    /// Longest time to establish the connection (TCP and TLS). Default: 5 s.
    public var connectTimeout: Duration
    /// Largest response body accepted, in bytes, with or without a Content-Length.
    /// Larger → `.protocol` failure. Default: 10 MiB (SPEC §7 `limits.upstream_body_bytes`).
    public var maxBodyBytes: Int
    /// `CURLOPT_RESOLVE` entries (`host:port:address`) pinning the address to connect
    /// to, so the address that was checked is the one used (SSRF guard). Default: none.
    public var resolve: [String]

    public init(method: String, url: String, headers: [(String, String)] = [], body: [UInt8] = [],
                deadline: Instant, connectTimeout: Duration = .seconds(5),
                maxBodyBytes: Int = 10 * 1024 * 1024, resolve: [String] = []) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.deadline = deadline
        self.connectTimeout = connectTimeout
        self.maxBodyBytes = maxBodyBytes
        self.resolve = resolve
    }

    /// Whole milliseconds from `now` (monotonic nanoseconds, `Instant.nanoseconds`) until
    /// `deadline`, rounded down; 0 when it has passed.
    func millisecondsLeft(at now: UInt64) -> Int64 {
        let d = deadline.nanoseconds
        return d > now ? Int64((d - now) / 1_000_000) : 0
    }
}

/// A complete upstream response (any status; deciding success is the caller's job).
public struct UpstreamResponse: Sendable {
    /// The final status code (after any `1xx` interim responses).
    public var status: Int
    /// Header fields of the final response, in order, names as sent.
    /// A response from `UpstreamClient` keeps its header block as received and
    /// parses it into pairs on first use.
    public var headers: [(String, String)] {
        get { headerBlock?.pairs ?? storedHeaders }
        set { storedHeaders = newValue; headerBlock = nil }
    }
    /// The header block as received, when the response came from `UpstreamClient`
    /// (parsed lazily); nil when the headers were given as pairs.
    public private(set) var headerBlock: UpstreamHeaderBlock?
    private var storedHeaders: [(String, String)]
    /// The response body, fully read.
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.storedHeaders = headers
        self.headerBlock = nil
        self.body = body
    }

    /// A response whose header fields are parsed from `headerBlock` on first use.
    public init(status: Int, headerBlock: UpstreamHeaderBlock, body: [UInt8]) {
        self.status = status
        self.storedHeaders = []
        self.headerBlock = headerBlock
        self.body = body
    }

    /// The first header named `name` (case-insensitive), or nil.
    public func header(_ name: String) -> String? {
        for (n, v) in headers where n.count == name.count && n.lowercased() == name.lowercased() { return v }
        return nil
    }
}

/// Response header lines exactly as libcurl delivered them (each ending in LF),
/// parsed into `(name, value)` pairs on first use, at most once. Lines without a
/// colon are ignored; a value has its leading and trailing blanks and the line's
/// CR/LF removed. An obs-fold line (starting with SP or HTAB; libcurl passes it on
/// as its own line) is joined to the previous field's value with one space, as
/// RFC 9112 §5.2 asks of a recipient, or ignored before any field (§2.2). A CR or NUL
/// inside a line (libcurl passes a bare CR through) is replaced by a space, as
/// RFC 9110 §5.5 allows a recipient to do, so no name or value holds CR, LF or NUL.
/// Any thread: the parsed pairs are kept in a `ComputedOnce`.
public final class UpstreamHeaderBlock: Sendable {
    /// The header lines, each terminated by LF.
    public let raw: [UInt8]
    private let parsed = ComputedOnce<[(String, String)]>()

    /// Keeps `raw` (header lines, each ending in LF) as is; nothing is parsed yet.
    public init(raw: [UInt8]) { self.raw = raw }

    /// The fields, in order, names as sent.
    public var pairs: [(String, String)] { parsed.value { UpstreamHeaderBlock.parse(raw) } }

    /// Calls `field` with the UTF-8 bytes of each field's name and value, in order —
    /// exactly the bytes of the strings in `pairs` — and returns true, when the block is
    /// plain: ASCII without NUL, CR only before LF, and no obs-fold line. Otherwise
    /// returns false without calling `field` (use `pairs`). Does not parse or cache
    /// `pairs`; the buffers are valid only during the call. Any thread.
    public func forEachPlainField(_ field: (UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<UInt8>) -> Void) -> Bool {
        raw.withUnsafeBufferPointer { b in
            // Plain bytes are their own text (no CR or NUL to replace, and ASCII decodes
            // as itself), and with no obs-fold no value is joined from several lines.
            var lineStart = true
            for i in 0..<b.count {
                let c = b[i]
                if c >= 0x80 || c == 0 || (c == 0x0D && (i + 1 == b.count || b[i + 1] != 0x0A))
                    || (lineStart && (c == 0x20 || c == 0x09)) { return false }
                lineStart = c == 0x0A
            }
            UpstreamHeaderBlock.scan(b) { name, value in
                field(UnsafeBufferPointer(rebasing: b[name]), UnsafeBufferPointer(rebasing: b[value]))
            } fold: { _ in
                preconditionFailure("a plain header block has no obs-fold line")
            }
            return true
        }
    }

    static func parse(_ raw: [UInt8]) -> [(String, String)] {
        var out: [(String, String)] = []
        raw.withUnsafeBufferPointer { b in
            scan(b) { name, value in
                out.append((text(b, name), text(b, value)))
            } fold: { more in
                // obs-fold: the previous field's value goes on.
                if !out.isEmpty {
                    out[out.count - 1].1 += out[out.count - 1].1.isEmpty ? text(b, more) : " " + text(b, more)
                }
            }
        }
        return out
    }

    /// Splits `b` into lines and reports, in order, each field line's name and
    /// (trimmed) value and each obs-fold line's (trimmed, non-empty) text.
    private static func scan(_ b: UnsafeBufferPointer<UInt8>, field: (Range<Int>, Range<Int>) -> Void,
                             fold: (Range<Int>) -> Void) {
        var start = 0
        while start < b.count {
            var lf = start
            while lf < b.count && b[lf] != 0x0A { lf += 1 }
            var end = lf
            while end > start && (b[end - 1] == 0x0A || b[end - 1] == 0x0D) { end -= 1 }
            defer { start = lf + 1 }
            guard end > start else { continue }
            func isBlank(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0D || c == 0 }
            while end > start && isBlank(b[end - 1]) { end -= 1 }
            if b[start] == 0x20 || b[start] == 0x09 {
                var cs = start
                while cs < end && isBlank(b[cs]) { cs += 1 }
                if cs < end { fold(cs..<end) }
                continue
            }
            var colon = start
            while colon < end && b[colon] != UInt8(ascii: ":") { colon += 1 }
            guard colon < end else { continue }
            var vs = colon + 1
            while vs < end && isBlank(b[vs]) { vs += 1 }
            field(start..<colon, vs..<end)
        }
    }

    /// `b[range]` as text, each CR and NUL replaced by a space.
    private static func text(_ b: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> String {
        let bytes = UnsafeBufferPointer(rebasing: b[range])
        guard bytes.contains(where: { $0 == 0x0D || $0 == 0 }) else { return String(decoding: bytes, as: UTF8.self) }
        return String(decoding: bytes.map { $0 == 0x0D || $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
    }
}

/// Why an upstream attempt produced no usable response. The kinds are the
/// `kind` label of `switchboard_upstream_errors_total` and the failure kinds a
/// route's `retry.on` may list.
public enum UpstreamFailureKind: String, Sendable {
    /// The attempt's deadline passed first (connecting or reading).
    case timeout
    /// The connection could not be established (refused, unreachable, DNS, TLS handshake).
    case connect
    /// The upstream answered with something that is not a valid HTTP response (including
    /// invalid framing, RFC 9112 §6.3: differing or non-numeric `Content-Length`, or
    /// `Content-Length` with `Transfer-Encoding`), closed mid-response, or sent more
    /// than `maxBodyBytes`.
    case `protocol`
}

/// A failed upstream attempt: its kind and a human-readable reason (no URL, so no secret).
public struct UpstreamFailure: Error, Sendable, CustomStringConvertible {
    public let kind: UpstreamFailureKind
    public let message: String
    public init(kind: UpstreamFailureKind, message: String) {
        self.kind = kind
        self.message = message
    }
    public var description: String { "\(kind.rawValue): \(message)" }

    /// An attempt whose deadline passed before its request could go out (`.timeout`;
    /// nothing was sent).
    public static let deadlinePassedBeforeStart = UpstreamFailure(kind: .timeout, message: "deadline passed before the attempt started")
}

/// The outcome of one upstream attempt.
public typealias UpstreamResult = Result<UpstreamResponse, UpstreamFailure>
