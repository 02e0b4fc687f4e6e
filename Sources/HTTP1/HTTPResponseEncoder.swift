import CLinux
import Glibc

/// Serialises responses into a connection's output buffer (RFC 9112 §4, §6).
/// Pure functions of their inputs; used on loop threads.
enum ResponseEncoder {
    static let continueBytes: [UInt8] = Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)

    /// Appends `r` to `out`.
    /// - Parameters:
    ///   - isHEAD: the request was HEAD: headers (with the body's Content-Length) but no body.
    ///   - keepAlive: false adds `Connection: close`.
    ///   - versionMinor: the request's minor version; an HTTP/1.0 keep-alive gets `Connection: keep-alive`.
    ///   - dateLine: a complete `Date: …\r\n` line.
    static func encode(_ r: HTTPResponse, into out: inout [UInt8], isHEAD: Bool, keepAlive: Bool,
                       versionMinor: Int, dateLine: [UInt8]) {
        let status = (100...999).contains(r.status) ? r.status : 500
        // RFC 9110 §6.4.1: no content in 1xx, 204 and 304; §8.6: no Content-Length in 1xx and 204.
        let bodyAllowed = status >= 200 && status != 204 && status != 304
        out.reserveCapacity(out.count + 160 + r.headers.count * 40 + (bodyAllowed && !isHEAD ? r.body.count : 0))
        out.append(contentsOf: "HTTP/1.1 ".utf8)
        out.append(UInt8(truncatingIfNeeded: 0x30 + status / 100))
        out.append(UInt8(truncatingIfNeeded: 0x30 + (status / 10) % 10))
        out.append(UInt8(truncatingIfNeeded: 0x30 + status % 10))
        out.append(0x20)
        out.append(contentsOf: HTTPResponse.reasonPhrase(status).utf8)
        out.append(contentsOf: crlf)
        var givenLength: String? = nil
        var hasDate = false
        for (name, value) in r.headers {
            switch name.utf8.count {
            case 0:
                continue
            case 4 where HTTPHeaders.nameEquals(name, "date"):
                hasDate = true
            case 10 where HTTPHeaders.nameEquals(name, "connection"):
                continue
            case 14 where HTTPHeaders.nameEquals(name, "content-length"):
                givenLength = value
                continue
            case 17 where HTTPHeaders.nameEquals(name, "transfer-encoding"):
                continue
            default:
                break
            }
            // Append, then check the appended bytes in place; an invalid field is cut off again.
            let mark = out.count
            out.append(contentsOf: name.utf8)
            let nameEnd = out.count
            out.append(0x3A)
            out.append(0x20)
            out.append(contentsOf: value.utf8)
            let valid = out.withUnsafeBufferPointer { b -> Bool in
                for k in mark..<nameEnd where !isTokenChar(b[k]) { return false }
                for k in (nameEnd + 2)..<b.count {
                    let c = b[k]
                    if c == 0x0D || c == 0x0A || c == 0 { return false }
                }
                return true
            }
            if valid {
                out.append(contentsOf: crlf)
            } else {
                out.removeSubrange(mark...)
                if name.utf8.count == 4 && HTTPHeaders.nameEquals(name, "date") { hasDate = false }
            }
        }
        if !hasDate { out.append(contentsOf: dateLine) }
        if bodyAllowed {
            out.append(contentsOf: "Content-Length: ".utf8)
            if isHEAD && r.body.isEmpty, let g = givenLength, !g.isEmpty, g.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                out.append(contentsOf: g.utf8)
            } else {
                appendDecimal(r.body.count, to: &out)
            }
            out.append(contentsOf: crlf)
        }
        if !keepAlive {
            out.append(contentsOf: "Connection: close\r\n".utf8)
        } else if versionMinor == 0 {
            out.append(contentsOf: "Connection: keep-alive\r\n".utf8)
        }
        out.append(contentsOf: crlf)
        if bodyAllowed && !isHEAD { out.append(contentsOf: r.body) }
    }

    private static let crlf: [UInt8] = [0x0D, 0x0A]

    static func appendDecimal(_ v: Int, to out: inout [UInt8]) {
        if v < 0 { out.append(UInt8(ascii: "-")) }
        let x = v.magnitude
        var div: UInt = 1
        while x / div >= 10 { div *= 10 }
        while div > 0 {
            out.append(UInt8(truncatingIfNeeded: 0x30 + (x / div) % 10))
            div /= 10
        }
    }

    /// The response written to a connection refused because of `maxConnections`:
    /// `HTTPParseError.tooManyConnections`'s problem, without a `Date` line.
    static let serviceUnavailable: [UInt8] = {
        let body = HTTPParseError.tooManyConnections.response.body
        var out: [UInt8] = []
        out.append(contentsOf: "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nContent-Length: ".utf8)
        appendDecimal(body.count, to: &out)
        out.append(contentsOf: "\r\nConnection: close\r\n\r\n".utf8)
        out.append(contentsOf: body)
        return out
    }()

    /// The body bytes of `serviceUnavailable` (what a refusal reports as sent).
    static let serviceUnavailableBodyBytes = HTTPParseError.tooManyConnections.response.body.count
}

/// The `Date` header line (RFC 9110 §6.6.1, IMF-fixdate), recomputed at most once
/// per second. One per loop; loop thread only.
struct DateCache {
    private var second: Int64 = -1
    private var cached: [UInt8] = []

    /// `Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n` for the current wall-clock second.
    mutating func line() -> [UInt8] {
        let s = Int64(CLinux_realtime_ms()) / 1000
        if s != second {
            second = s
            cached = DateCache.format(s)
        }
        return cached
    }

    static func format(_ seconds: Int64) -> [UInt8] {
        var t = time_t(seconds)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let text = "Date: \(days[Int(tmv.tm_wday) % 7]), \(two(tmv.tm_mday)) \(months[Int(tmv.tm_mon) % 12]) "
            + "\(tmv.tm_year + 1900) \(two(tmv.tm_hour)):\(two(tmv.tm_min)):\(two(tmv.tm_sec)) GMT\r\n"
        return Array(text.utf8)
    }
}
