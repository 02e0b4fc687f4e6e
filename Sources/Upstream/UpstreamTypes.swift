import EventLoop

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
}

/// A complete upstream response (any status; deciding success is the caller's job).
public struct UpstreamResponse: Sendable {
    /// The final status code (after any `1xx` interim responses).
    public var status: Int
    /// Header fields of the final response, in order, names as sent.
    public var headers: [(String, String)]
    /// The response body, fully read.
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The first header named `name` (case-insensitive), or nil.
    public func header(_ name: String) -> String? {
        for (n, v) in headers where n.count == name.count && n.lowercased() == name.lowercased() { return v }
        return nil
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
    /// The upstream answered with something that is not a valid HTTP response,
    /// closed mid-response, or sent more than `maxBodyBytes`.
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
}

/// The outcome of one upstream attempt.
public typealias UpstreamResult = Result<UpstreamResponse, UpstreamFailure>
