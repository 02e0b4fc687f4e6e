import JSON

// The route model: what a route file says, validated and compiled. All values are
// immutable and `Sendable`; a loaded ``RouteTable`` can be shared by every event loop.

/// One integration route: a method and path, the steps to call and the response to compose.
///
/// A reference type: the table holds one instance per route and every request,
/// run and job shares it (a copy per request would retain each field).
public final class Route: Sendable {
    /// The route's `name` (unique across files; the `route` metrics label).
    public let name: String
    /// The HTTP method it answers, e.g. `POST` (a `GET` route also answers `HEAD`).
    public let method: String
    /// The path pattern, e.g. `/checkout/{order_id}`.
    public let path: PathPattern
    /// How long the caller is held before the run switches to async (`202`).
    /// Default: 10 s when the file has no `wait`. Zero means "answer `202` at once".
    public let wait: Duration
    /// The largest wait a caller may ask for with `Prefer: wait=N`.
    /// Default: the larger of `wait` and 30 s. Always ≥ `wait`.
    public let maxWait: Duration
    /// The steps in a topological order: every step comes after the steps in its `after`
    /// (among independent steps, the order of the file is kept). Each step's ``Step/index``
    /// is its position here.
    public let steps: [Step]
    /// The response to compose; `nil` means the default response
    /// (`200 {"steps": {"ID": {"status": N, "body": …}}}`).
    public let response: ResponseSpec?
    /// The route file, as named to the loader (e.g. `routes/checkout.json`).
    public let file: String
    /// Whether any template reads `request.body…`: only then is the request body parsed
    /// (and a body that is not JSON answered with `400`).
    public let readsRequestBody: Bool
    /// Whether any template reads `request.query…`: only then is a query whose
    /// parameters are not UTF-8 once percent-decoded answered with `400`.
    public let readsRequestQuery: Bool
    /// Worst-case wall time of the steps: the longest chain of ``Step/worstCaseDuration``
    /// through the `after` graph. Zero when there are no steps.
    public let criticalPath: Duration
    /// The step indexes along ``criticalPath``, first to last.
    public let criticalPathSteps: [Int]
    /// The `{{env.*}}` values this route's templates use that are secrets to redact: those
    /// of at least ``Template/minimumSecretBytes`` bytes.
    public let secrets: [String]

    init(name: String, method: String, path: PathPattern, wait: Duration, maxWait: Duration, steps: [Step],
         response: ResponseSpec?, file: String, readsRequestBody: Bool, readsRequestQuery: Bool, criticalPath: Duration,
         criticalPathSteps: [Int], secrets: [String]) {
        self.name = name
        self.method = method
        self.path = path
        self.wait = wait
        self.maxWait = maxWait
        self.steps = steps
        self.response = response
        self.file = file
        self.readsRequestBody = readsRequestBody
        self.readsRequestQuery = readsRequestQuery
        self.criticalPath = criticalPath
        self.criticalPathSteps = criticalPathSteps
        self.secrets = secrets
    }

    /// The step with id `id`, or `nil`.
    public func step(id: String) -> Step? { steps.first { $0.id == id } }
}

/// One upstream call of a route. A reference type, shared like ``Route``.
public final class Step: Sendable {
    /// The step's `id`: `[A-Za-z0-9_-]+`, unique in the route.
    public let id: String
    /// Its position in ``Route/steps``.
    public let index: Int
    /// The request to send.
    public let request: RequestSpec
    /// The deadline of one attempt. Default: 10 s. Always > 0.
    public let timeout: Duration
    /// Retry policy; `nil` means a single attempt.
    public let retry: RetryPolicy?
    /// Indexes (in ``Route/steps``) of the steps that must succeed before this one starts;
    /// all are smaller than ``index``.
    public let after: [Int]
    /// Indexes of the steps that list this one in their `after`.
    public let dependents: [Int]
    /// Conditions that must all hold (once the `after` steps succeeded) for the step to
    /// run; otherwise it is skipped.
    public let when: [Condition]
    /// The statuses that count as success; `nil` means any 2xx.
    public let success: Set<Int>?
    /// Whether the run may finish without this step (a partial result). Default: false.
    public let optional: Bool

    init(id: String, index: Int, request: RequestSpec, timeout: Duration, retry: RetryPolicy?, after: [Int],
         dependents: [Int], when: [Condition], success: Set<Int>?, optional: Bool) {
        self.id = id
        self.index = index
        self.request = request
        self.timeout = timeout
        self.retry = retry
        self.after = after
        self.dependents = dependents
        self.when = when
        self.success = success
        self.optional = optional
    }

    /// Whether `status` counts as success for this step (``success``, else 2xx).
    public func isSuccess(status: Int) -> Bool {
        if let success { return success.contains(status) }
        return status >= 200 && status < 300
    }

    /// Worst-case wall time of this step: ``timeout`` without retry; with retry, all
    /// attempts at full timeout plus the largest backoff before each retry
    /// (``RetryPolicy/maxBackoff(beforeRetry:)``), capped by `within` when set.
    /// `Retry-After` answers that ask for longer are not counted.
    public var worstCaseDuration: Duration {
        guard let retry else { return timeout }
        var total = timeout * retry.attempts
        if retry.attempts > 1 {
            for k in 1..<retry.attempts { total += retry.maxBackoff(beforeRetry: k) }
        }
        if let within = retry.within, within < total { return within }
        return total
    }
}

/// The HTTP request a step sends.
public struct RequestSpec: Sendable {
    /// The method, e.g. `POST`. Default: `GET`.
    public let method: String
    /// The URL template; its scheme and host are fixed (only `{{env.*}}` may appear before
    /// the path). Render it with ``Template/renderURL(_:)``.
    public let url: Template
    /// Extra headers, in file order (names as written). Render values with
    /// ``Template/renderHeaderValue(_:)``.
    public let headers: [(name: String, value: Template)]
    /// The JSON body; `nil` means no body.
    public let body: TemplateValue?
}

/// When and how often a step is retried.
public struct RetryPolicy: Sendable, Equatable {
    /// Total attempts including the first, 1…10.
    public let attempts: Int
    /// The base backoff: the delay before retry k (k = 1 for the second attempt) is
    /// jittered up to `backoff × 2^(k-1)`. Default: 100 ms.
    public let backoff: Duration
    /// Bound on all attempts together, counted from the first attempt's start; `nil` = none.
    public let within: Duration?
    /// Which failures are retried.
    public let on: RetryOn

    /// Creates a policy from its parts (no validation: the loader checks route files).
    public init(attempts: Int, backoff: Duration, within: Duration?, on: RetryOn) {
        self.attempts = attempts
        self.backoff = backoff
        self.within = within
        self.on = on
    }

    /// The upper bound of the (jittered) delay before retry `k` (1-based): `backoff × 2^(k-1)`.
    public func maxBackoff(beforeRetry k: Int) -> Duration {
        backoff * (1 << max(0, min(k - 1, 30)))
    }
}

/// The failures a retry policy retries. Default (no `on` in the file): statuses 502, 503,
/// 504, `timeout` and `connect`.
public struct RetryOn: Sendable, Equatable {
    /// Upstream statuses that are retried.
    public let statuses: Set<Int>
    /// Retry when an attempt timed out.
    public let timeout: Bool
    /// Retry when the connection could not be made.
    public let connect: Bool
    /// Retry on a malformed or oversized upstream response.
    public let `protocol`: Bool

    /// The default: 502, 503, 504, timeout and connect.
    public static let `default` = RetryOn(statuses: [502, 503, 504], timeout: true, connect: true, protocol: false)

    /// Creates a policy from its parts.
    public init(statuses: Set<Int>, timeout: Bool, connect: Bool, protocol: Bool) {
        self.statuses = statuses
        self.timeout = timeout
        self.connect = connect
        self.protocol = `protocol`
    }
}

/// One `when` entry: the value at `path` must equal `equals` (numbers compare by value).
public struct Condition: Sendable {
    /// The key split at dots, e.g. `["steps", "payment", "body", "status"]` (a header name
    /// is lowercased).
    public let path: [String]
    /// The value it must equal.
    public let equals: JSON
    /// The same path as a template reference (always `.stepStatus`, `.stepBody` or `.stepHeader`).
    public let ref: TemplateRef

    /// Whether the condition holds: the value exists and equals ``equals``.
    public func holds(in ctx: some TemplateContext) -> Bool {
        guard let value = ctx.resolve(ref) else { return false }
        return value == equals
    }
}

/// The response a route composes when its steps are done.
public struct ResponseSpec: Sendable {
    /// The status code, 100…599. Default: 200.
    public let status: Int
    /// Headers in file order (names as written).
    public let headers: [(name: String, value: Template)]
    /// The JSON body; `nil` means no body.
    public let body: TemplateValue?
}
