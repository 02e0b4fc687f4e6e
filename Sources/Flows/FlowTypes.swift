import EventLoop
import JSON
import Locking
import Upstream

/// What a run's templates may read from the caller's request.
public struct FlowInput: Sendable {
    /// The request method, e.g. `"POST"`.
    public var method: String
    /// The request path (without the query).
    public var path: String
    /// Path parameters matched by the route's pattern, percent-decoded.
    public var pathParams: [(String, String)]
    /// The raw query string after `?`, or nil.
    public var query: String?
    /// Request header fields as received (names compared case-insensitively).
    /// When given as a `FlowHeaderSource`, the pairs are only built when read.
    public var headers: [(String, String)] {
        get { headerSource?.headerPairs ?? storedHeaders }
        set { storedHeaders = newValue; headerSource = nil }
    }
    private var storedHeaders: [(String, String)]
    private var headerSource: (any FlowHeaderSource)?
    /// The request body parsed as JSON; nil when the route never reads it.
    public var body: JSON?

    public init(method: String, path: String, pathParams: [(String, String)] = [], query: String? = nil,
                headers: [(String, String)] = [], body: JSON? = nil) {
        self.method = method
        self.path = path
        self.pathParams = pathParams
        self.query = query
        self.storedHeaders = headers
        self.headerSource = nil
        self.body = body
    }

    /// An input whose `headers` are read from `headerSource` when needed.
    public init(method: String, path: String, pathParams: [(String, String)] = [], query: String? = nil,
                headerSource: some FlowHeaderSource, body: JSON? = nil) {
        self.method = method
        self.path = path
        self.pathParams = pathParams
        self.query = query
        self.storedHeaders = []
        self.headerSource = headerSource
        self.body = body
    }
}

/// Request header fields kept in another form (e.g. the HTTP server's header list),
/// turned into `(name, value)` pairs only when a template or the journal reads them.
public protocol FlowHeaderSource: Sendable {
    /// The fields as `(name, value)` pairs, in order, names as received.
    var headerPairs: [(String, String)] { get }
}

/// Where a step stands in a run.
public enum StepState: String, Sendable {
    /// Not started: waiting for its dependencies.
    case pending
    /// An attempt (or a retry's backoff) is in progress.
    case running
    /// Finished with a successful status.
    case succeeded
    /// Finished without success after its last attempt.
    case failed
    /// Never called: its `when` did not hold or a dependency failed or was skipped.
    case skipped

    /// Whether a step in this state can no longer change.
    public var isTerminal: Bool { self == .succeeded || self == .failed || self == .skipped }
}

/// Why a step failed: the failure kinds of `switchboard_upstream_errors_total`
/// plus `template` (a value its request needed was missing).
public enum StepErrorKind: String, Sendable {
    case timeout, connect, `protocol`, status, template
}

/// The outcome of one step of a run, as shown in job status and used by templates.
public struct StepOutcome: Sendable {
    /// Where the step stands.
    public var state: StepState = .pending
    /// The last upstream status, when a response came.
    public var status: Int?
    /// The last response's header fields. An upstream response's header block is
    /// kept as received and parsed on first use.
    public var headers: [(String, String)] {
        get { headerBlock?.pairs ?? storedHeaders }
        set { storedHeaders = newValue; headerBlock = nil }
    }
    var storedHeaders: [(String, String)] = []
    /// The upstream response's header block as received, when `headers` come from one
    /// (nil when they were set as pairs). Reading it does not parse the block.
    public private(set) var headerBlock: UpstreamHeaderBlock?

    /// Sets `headers` from an upstream response without parsing its header block.
    mutating func setUpstreamHeaders(_ r: UpstreamResponse) {
        if let b = r.headerBlock {
            storedHeaders = []
            headerBlock = b
        } else {
            headers = r.headers
        }
    }
    /// The last response body: parsed JSON, or a JSON string when it was not JSON; `.null` when none.
    /// An upstream body is kept as received and parsed on first use.
    public var body: JSON {
        get { lazyBody?.json ?? storedBody }
        set { storedBody = newValue; lazyBody = nil }
    }
    var storedBody: JSON = .null
    var lazyBody: LazyBody?
    /// Bytes of the upstream body as received (0 when none, or when `body` was set otherwise).
    var upstreamBodyCount: Int { lazyBody?.raw.count ?? 0 }

    /// Records an upstream response (status, headers, body); with `succeededAt`,
    /// also marks the step succeeded at that instant.
    mutating func setUpstreamResponse(_ r: UpstreamResponse, succeededAt: Instant?) {
        status = r.status
        setUpstreamHeaders(r)
        setUpstreamBody(r.body)
        if let t = succeededAt {
            state = .succeeded
            errorKind = nil
            message = nil
            finishedAt = t
        }
    }

    /// Sets `body` from upstream bytes without parsing them yet.
    mutating func setUpstreamBody(_ bytes: [UInt8]) {
        if bytes.isEmpty { body = .null; return }
        storedBody = .null
        lazyBody = LazyBody(raw: bytes)
    }

    /// The body as compact JSON bytes when the upstream sent it in exactly the form
    /// serializing `body` gives (so it can be passed through, or journaled, as is,
    /// without parsing it); nil otherwise. Does not parse the body.
    public var serializedBodyIfCanonical: [UInt8]? { lazyBody?.canonicalRaw }
    /// Attempts made so far.
    public var attempts = 0
    /// Why it failed (state `.failed`) or was skipped (kind nil, message set).
    public var errorKind: StepErrorKind?
    /// A short human-readable reason; never contains a URL or a secret.
    public var message: String?
    /// When its first attempt started and when it finished (monotonic).
    public var startedAt: Instant?
    public var finishedAt: Instant?

    public init() {}

    /// Whether the step can no longer change.
    public var isTerminal: Bool { state.isTerminal }

    /// Time from first attempt to finish, in seconds; nil when it never ran to an end.
    public var durationSeconds: Double? { StepOutcome.seconds(from: startedAt, to: finishedAt) }

    /// Seconds from `start` to `finish`; nil unless both are set. `durationSeconds`
    /// from the two fields, for readers that must not copy the outcome
    /// (`FlowRun.withOutcome`).
    public static func seconds(from start: Instant?, to finish: Instant?) -> Double? {
        guard let s = start, let f = finish else { return nil }
        return f.seconds(since: s)
    }
}

/// An upstream body as received, parsed to JSON on first use (and kept).
/// Any thread (`ComputedOnce`; in practice a run's outcomes are read on its own loop).
final class LazyBody: Sendable {
    let raw: [UInt8]
    /// `raw` is exactly what serializing its parsed value gives.
    let canonical: Bool
    private let parsed = ComputedOnce<JSON>()

    init(raw: [UInt8]) {
        self.raw = raw
        self.canonical = JSON.isCanonicalCompact(raw)
    }

    var json: JSON { parsed.value { FlowRun.parseBody(raw) } }
    /// `raw` when it is canonical (`StepOutcome.serializedBodyIfCanonical`), else nil.
    var canonicalRaw: [UInt8]? { canonical ? raw : nil }
}

/// The response a run produced: exactly what a synchronous caller receives.
public struct FlowResponse: Sendable {
    public var status: Int
    public var headers: [(String, String)]
    public var body: [UInt8]

    public init(status: Int, headers: [(String, String)], body: [UInt8]) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}
