import EventLoop

/// A complete HTTP/1.x request as parsed by `HTTPRequestParser`: the request line,
/// the header fields as received and the fully buffered body. A value type; safe
/// to send between threads.
public struct HTTPRequest: Sendable {
    /// The method token, case-sensitive as sent (e.g. `"GET"`).
    public var method: String
    /// The request-target exactly as sent (e.g. `"/checkout/42?x=1"`).
    public var target: String
    /// The path: the target before `?`, not percent-decoded. For an absolute-form
    /// target (`http://host/a?b`) it is the path part (`/a`, or `/` when empty).
    public var path: String
    /// The query: the target after the first `?`, or nil when there is no `?`.
    public var query: String?
    /// The header fields, in order, names as written.
    public var headers: HTTPHeaders
    /// The body (in bytes): the Content-Length bytes, or the de-chunked data; empty when none.
    public var body: [UInt8]
    /// Whether the connection may carry another request after this one (RFC 9112 §9.3):
    /// HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with `Connection: keep-alive`.
    public var keepAlive: Bool
    /// The minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var versionMinor: Int
    /// When the server had the whole request, as dated at the read that completed it
    /// (for a pipelined request buffered while an earlier one was answered, that read
    /// too, not a later one): the loop's `EventLoop.eventsReadySince`, or — after an
    /// iteration longer than 5 ms — the kernel's time of the socket's last received data
    /// (`TCP_INFO`). Under load, earlier than when the loop got to it. Nil for a request
    /// not read by `HTTPServer`. Monotonic clock.
    public var receivedAt: Instant?

    /// Creates a request; `path` and `query` are derived from `target` as the parser does.
    public init(method: String, target: String, headers: HTTPHeaders = HTTPHeaders(),
                body: [UInt8] = [], keepAlive: Bool = true, versionMinor: Int = 1) {
        self.method = method
        self.target = target
        let (p, q) = HTTPRequest.splitTarget(target)
        self.path = p
        self.query = q
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
        self.versionMinor = versionMinor
    }

    init(method: String, target: String, path: String, query: String?, headers: HTTPHeaders,
         body: [UInt8], keepAlive: Bool, versionMinor: Int) {
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.keepAlive = keepAlive
        self.versionMinor = versionMinor
    }

    /// Splits a request-target into path and query (see `path`).
    static func splitTarget(_ target: String) -> (String, String?) {
        let u = Array(target.utf8)
        return u.withUnsafeBufferPointer { splitTarget($0) }
    }

    /// Splits the bytes of a request-target into path and query (see `path`).
    static func splitTarget(_ t: UnsafeBufferPointer<UInt8>) -> (String, String?) {
        var q = t.count
        for i in 0..<t.count where t[i] == UInt8(ascii: "?") { q = i; break }
        var pathStart = 0
        var pathEnd = q
        var emptyPathIsRoot = false
        // Absolute-form (RFC 9112 §3.2.2): "scheme://authority/path?query".
        if q > 0, t[0] != UInt8(ascii: "/"), t[0] != UInt8(ascii: "*") {
            var k = 0
            while k + 2 < q {
                if t[k] == UInt8(ascii: ":") && t[k + 1] == UInt8(ascii: "/") && t[k + 2] == UInt8(ascii: "/") {
                    var s = k + 3
                    while s < q && t[s] != UInt8(ascii: "/") { s += 1 }
                    pathStart = s
                    emptyPathIsRoot = true
                    break
                }
                if t[k] == UInt8(ascii: "/") { break }
                k += 1
            }
        }
        if pathStart > pathEnd { pathEnd = pathStart }
        let path = (emptyPathIsRoot && pathStart == pathEnd) ? "/"
            : String(decoding: UnsafeBufferPointer(rebasing: t[pathStart..<pathEnd]), as: UTF8.self)
        let query: String? = q < t.count
            ? String(decoding: UnsafeBufferPointer(rebasing: t[(q + 1)...]), as: UTF8.self) : nil
        return (path, query)
    }
}

/// A response for `HTTPResponseWriter.respond(_:)`. A value type; safe to send between threads.
///
/// The encoder writes the status line, these headers in order, then `Content-Length`
/// (except for 1xx, 204 and 304), `Date`, and `Connection` when needed. Any
/// `Content-Length`, `Transfer-Encoding` or `Connection` given here is replaced by
/// the encoder's own (one exception: a HEAD response with an empty body keeps a
/// given `Content-Length`). Fields whose name is not a token or whose value holds
/// CR, LF or NUL are dropped (no header injection).
public struct HTTPResponse: Sendable {
    /// The status code, 200–999 for a final response (1xx are not final and 101
    /// upgrades are not supported); a value outside 100–999 is sent as 500.
    public var status: Int
    /// Header fields in order, as `(name, value)`.
    public var headers: [(String, String)]
    /// The body (in bytes); not sent for HEAD requests, 1xx, 204 and 304.
    public var body: [UInt8]

    /// Creates a response. Defaults: no headers, empty body.
    public init(status: Int, headers: [(String, String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// An RFC 9457 problem response: `application/problem+json` with
    /// `{"type":"about:blank","title":…,"status":…,"detail":…}`.
    /// - Parameters:
    ///   - status: the HTTP status.
    ///   - title: defaults to the status's reason phrase.
    ///   - detail: a human-readable explanation of this occurrence.
    public static func problem(status: Int, title: String? = nil, detail: String) -> HTTPResponse {
        var b: [UInt8] = []
        b.reserveCapacity(96 + detail.utf8.count)
        b.append(contentsOf: #"{"type":"about:blank","title":"#.utf8)
        appendJSONString(title ?? reasonPhrase(status), to: &b)
        b.append(contentsOf: #","status":"#.utf8)
        b.append(contentsOf: String(status).utf8)
        b.append(contentsOf: #","detail":"#.utf8)
        appendJSONString(detail, to: &b)
        b.append(UInt8(ascii: "}"))
        return HTTPResponse(status: status, headers: [("Content-Type", "application/problem+json")], body: b)
    }

    /// The standard reason phrase for `status` (RFC 9110 §15), or `"Unknown"`.
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 100: return "Continue"
        case 101: return "Switching Protocols"
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 203: return "Non-Authoritative Information"
        case 204: return "No Content"
        case 205: return "Reset Content"
        case 206: return "Partial Content"
        case 300: return "Multiple Choices"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 304: return "Not Modified"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 402: return "Payment Required"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 406: return "Not Acceptable"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 411: return "Length Required"
        case 412: return "Precondition Failed"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 415: return "Unsupported Media Type"
        case 416: return "Range Not Satisfiable"
        case 417: return "Expectation Failed"
        case 421: return "Misdirected Request"
        case 422: return "Unprocessable Content"
        case 425: return "Too Early"
        case 426: return "Upgrade Required"
        case 428: return "Precondition Required"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Unknown"
        }
    }
}

/// Appends `s` as a JSON string literal (quotes included) to `out`.
func appendJSONString(_ s: String, to out: inout [UInt8]) {
    out.append(UInt8(ascii: "\""))
    for c in s.utf8 {
        switch c {
        case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
        case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
        case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
        case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
        case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
        case 0..<0x20:
            let hex: [UInt8] = Array("0123456789abcdef".utf8)
            out.append(contentsOf: [0x5C, UInt8(ascii: "u"), 0x30, 0x30, hex[Int(c >> 4)], hex[Int(c & 15)]])
        default: out.append(c)
        }
    }
    out.append(UInt8(ascii: "\""))
}

/// Limits applied by `HTTPRequestParser` and `HTTPServer`. Defaults follow SPEC §1
/// (`limits` in the config file). A value type; safe to send between threads.
public struct HTTPLimits: Sendable {
    /// Largest header section (in bytes): every field line with its CRLF plus the
    /// final empty line; also bounds a chunked body's trailer section. Larger → 431.
    /// Default: 16,384.
    public var headerBytes = 16384
    /// Most header fields in one request (trailer fields are counted separately
    /// against the same limit). More → 431. Default: 100.
    public var headers = 100
    /// Largest request body (in bytes), declared by Content-Length or accumulated
    /// from chunks. Larger → 413. Default: 1,048,576 (1 MiB).
    public var bodyBytes = 1_048_576
    /// Longest request line (in bytes, without its CRLF). Longer → 414. Default: 8,192.
    public var requestLineBytes = 8192
    /// Deadline for a whole request head, counted from its first byte; when it
    /// passes the server answers 408 and closes. A new connection that sends
    /// nothing is closed silently after this time too. Default: 10 s.
    public var headerTimeout: Duration = .seconds(10)
    /// How long a keep-alive connection may wait for the next request before it is
    /// closed silently; also the longest pause allowed while a body is being
    /// received (408) or while a response is being written. Default: 60 s.
    public var idleTimeout: Duration = .seconds(60)
    /// Most open client connections across all loops; beyond it a new connection
    /// gets a short 503 (plain HTTP only; a TLS listener just closes it) and is
    /// closed at once. Default: 10,000.
    public var maxConnections = 10000

    /// Creates limits; every parameter defaults to the documented default.
    public init(headerBytes: Int = 16384, headers: Int = 100, bodyBytes: Int = 1_048_576,
                requestLineBytes: Int = 8192, headerTimeout: Duration = .seconds(10),
                idleTimeout: Duration = .seconds(60), maxConnections: Int = 10000) {
        self.headerBytes = headerBytes
        self.headers = headers
        self.bodyBytes = bodyBytes
        self.requestLineBytes = requestLineBytes
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
    }
}

/// Why a request could not be parsed, with the status the server answers
/// (as an `application/problem+json` body, followed by closing the connection).
/// Also the few reasons the server refuses a request or a connection on its own
/// (`requestTimeout`, `tooManyConnections`, `connectionSetupFailed`).
public enum HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request line is not `method SP request-target SP HTTP-version CRLF` (400).
    case invalidRequestLine
    /// The method holds a byte that is not a token character (400).
    case invalidMethod
    /// The request-target is empty or holds a byte outside visible ASCII (400).
    case invalidTarget
    /// The version is not of the form `HTTP/DIGIT.DIGIT` (400).
    case invalidVersion
    /// A well-formed version other than HTTP/1.0 or HTTP/1.1 (505).
    case unsupportedVersion
    /// The request line is longer than `HTTPLimits.requestLineBytes` (414).
    case requestLineTooLong
    /// The header (or trailer) section is larger than `HTTPLimits.headerBytes` (431).
    case headerSectionTooLarge
    /// More than `HTTPLimits.headers` fields (431).
    case tooManyHeaders
    /// A field name is empty or holds a byte that is not a token character, or a line has no colon (400).
    case invalidHeaderName
    /// Whitespace between a field name and its colon (400, RFC 9112 §5.1).
    case whitespaceBeforeColon
    /// A line folded with obs-fold, or whitespace before the first field (400, RFC 9112 §5.2).
    case obsoleteLineFolding
    /// A CR not followed by LF (400, RFC 9112 §2.2).
    case bareCR
    /// An LF not preceded by CR (400; this server accepts only CRLF line endings).
    case bareLF
    /// A field value holds a control character other than HTAB (400, RFC 9110 §5.5).
    case invalidHeaderValue
    /// An HTTP/1.1 request without a Host field (400, RFC 9112 §3.2).
    case missingHost
    /// More than one Host field (400, RFC 9112 §3.2).
    case multipleHost
    /// A Content-Length that is empty, signed, not decimal or too large to represent (400).
    case invalidContentLength
    /// Content-Length values that differ from each other (400, RFC 9112 §6.3).
    case conflictingContentLength
    /// Both Content-Length and Transfer-Encoding (400, RFC 9112 §6.1 and §6.3).
    case contentLengthWithTransferEncoding
    /// A transfer coding other than a single final `chunked` (501, RFC 9112 §6.1).
    case unsupportedTransferEncoding
    /// `chunked` not final or repeated, an empty Transfer-Encoding, or
    /// Transfer-Encoding in an HTTP/1.0 request (400, RFC 9112 §6.1, §6.3).
    case invalidTransferEncoding
    /// A chunk size that is missing, not hexadecimal, overflowing, or a chunk line
    /// (size and extensions) longer than 4,096 bytes (400, RFC 9112 §7.1).
    case invalidChunkSize
    /// Chunk data not followed by CRLF (400, RFC 9112 §7.1).
    case missingChunkCRLF
    /// The body is larger than `HTTPLimits.bodyBytes` (413).
    case bodyTooLarge
    /// The request was not received in time (408): `headerTimeout` for the head,
    /// `idleTimeout` of silence during the body. Produced by the server, not the parser.
    case requestTimeout
    /// A connection accepted while `HTTPLimits.maxConnections` were already open
    /// (503). Produced by the server at accept time, before any request byte is
    /// read, not by the parser; a plain-HTTP listener answers it with its problem
    /// (best effort), a TLS listener closes without an answer.
    case tooManyConnections
    /// A connection the server accepted but could not set up (503): its TLS session
    /// could not be created or the event loop could not watch it (out of memory or
    /// of epoll watches). Produced by the server at accept time, not by the parser;
    /// closed without an answer.
    case connectionSetupFailed

    /// The HTTP status the server answers with.
    public var status: Int {
        switch self {
        case .unsupportedVersion: return 505
        case .requestLineTooLong: return 414
        case .headerSectionTooLarge, .tooManyHeaders: return 431
        case .unsupportedTransferEncoding: return 501
        case .bodyTooLarge: return 413
        case .requestTimeout: return 408
        case .tooManyConnections, .connectionSetupFailed: return 503
        default: return 400
        }
    }

    /// A short, human-readable reason (used as the problem's `detail`).
    public var reason: String {
        switch self {
        case .invalidRequestLine: return "malformed request line"
        case .invalidMethod: return "invalid character in method"
        case .invalidTarget: return "invalid request target"
        case .invalidVersion: return "malformed HTTP version"
        case .unsupportedVersion: return "only HTTP/1.0 and HTTP/1.1 are supported"
        case .requestLineTooLong: return "request line too long"
        case .headerSectionTooLarge: return "header section too large"
        case .tooManyHeaders: return "too many header fields"
        case .invalidHeaderName: return "invalid header field name"
        case .whitespaceBeforeColon: return "whitespace between header field name and colon"
        case .obsoleteLineFolding: return "obsolete line folding is not accepted"
        case .bareCR: return "CR not followed by LF"
        case .bareLF: return "LF without CR"
        case .invalidHeaderValue: return "invalid character in header field value"
        case .missingHost: return "missing Host header"
        case .multipleHost: return "more than one Host header"
        case .invalidContentLength: return "invalid Content-Length"
        case .conflictingContentLength: return "conflicting Content-Length values"
        case .contentLengthWithTransferEncoding: return "both Content-Length and Transfer-Encoding"
        case .unsupportedTransferEncoding: return "unsupported transfer coding"
        case .invalidTransferEncoding: return "invalid Transfer-Encoding"
        case .invalidChunkSize: return "invalid chunk size line"
        case .missingChunkCRLF: return "chunk data not followed by CRLF"
        case .bodyTooLarge: return "request body too large"
        case .requestTimeout: return "request not received in time"
        case .tooManyConnections: return "too many open connections"
        case .connectionSetupFailed: return "the connection could not be set up"
        }
    }

    /// `"<status> <reason>"`.
    public var description: String { "\(status) \(reason)" }

    /// The problem response the server sends for this error.
    public var response: HTTPResponse { HTTPResponse.problem(status: status, detail: reason) }
}
