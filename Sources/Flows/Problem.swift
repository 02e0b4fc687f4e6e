import HTTP1
import JSON

/// An RFC 9457 problem details object (`application/problem+json`).
///
/// Used for every error Switchboard answers with: a failed step, an unknown
/// route, a bad request. Extension members (e.g. `step`, `upstream_status`)
/// follow the standard ones.
public struct Problem: Sendable {
    /// The HTTP status code (also the `status` member).
    public var status: Int
    /// A short, human-readable summary of the problem type (`title`).
    public var title: String
    /// An explanation specific to this occurrence (`detail`); never holds a secret.
    public var detail: String?
    /// A URI reference identifying the problem type (`type`). Default: `about:blank`.
    public var type: String
    /// Extension members, in order.
    public var extensions: [(String, JSON)]

    public init(status: Int, title: String? = nil, detail: String? = nil, type: String = "about:blank", extensions: [(String, JSON)] = []) {
        self.status = status
        self.title = title ?? HTTPResponse.reasonPhrase(status)
        self.detail = detail
        self.type = type
        self.extensions = extensions
    }

    /// The problem as a JSON object.
    public var json: JSON {
        var o = JSONObject()
        o["type"] = .string(type)
        o["title"] = .string(title)
        o["status"] = .int(Int64(status))
        if let detail { o["detail"] = .string(detail) }
        for (k, v) in extensions { o[k] = v }
        return .object(o)
    }

    /// The response a caller receives for this problem.
    public var response: FlowResponse {
        FlowResponse(status: status, headers: [("Content-Type", "application/problem+json")], body: json.serialized)
    }
}
