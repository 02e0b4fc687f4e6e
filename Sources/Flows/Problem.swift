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
        self.title = title ?? Problem.reasonPhrase(status)
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

    /// The RFC 9110 reason phrase for common statuses ("Error" otherwise).
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 201: return "Created"
        case 202: return "Accepted"
        case 204: return "No Content"
        case 400: return "Bad Request"
        case 401: return "Unauthorized"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 409: return "Conflict"
        case 410: return "Gone"
        case 413: return "Content Too Large"
        case 414: return "URI Too Long"
        case 415: return "Unsupported Media Type"
        case 422: return "Unprocessable Content"
        case 429: return "Too Many Requests"
        case 431: return "Request Header Fields Too Large"
        case 500: return "Internal Server Error"
        case 501: return "Not Implemented"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        case 505: return "HTTP Version Not Supported"
        default: return "Error"
        }
    }
}
