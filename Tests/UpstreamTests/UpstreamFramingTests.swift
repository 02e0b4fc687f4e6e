import EventLoop
import Glibc
import Testing
import TestSupport
import Upstream

/// An upstream response and what the client must make of it.
struct FramingCase: Sendable, CustomTestStringConvertible {
    let name: String
    /// The request method (`HEAD` changes how the response is framed).
    var method = "GET"
    /// The raw bytes the upstream answers with.
    let response: String
    /// The failure message expected (nil: the response is accepted).
    var failure: String? = nil
    /// The body expected when the response is accepted.
    var body = ""
    /// The status expected when the response is accepted.
    var status = 200
    var testDescription: String { name }
}

private let differing = "invalid response framing: differing Content-Length values (RFC 9112 §6.3)"
private let notANumber = "invalid response framing: Content-Length is not a decimal number (RFC 9112 §6.3)"
private let withTransferEncoding = "invalid response framing: both Transfer-Encoding and Content-Length (RFC 9112 §6.3)"

/// A chunked response "hello" whose trailer section is `lines` fields of 1000 bytes
/// each, line ends included.
private func chunkedWithTrailers(lines: Int) -> String {
    let field = "X-Trailer-Padding: " + String(repeating: "t", count: 1000 - 21) + "\r\n"
    return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        + String(repeating: field, count: lines) + "\r\n"
}

/// Responses whose framing is invalid (RFC 9112 §6.3 items 3 and 5): each must fail the
/// attempt and close the connection.
let invalidFraming: [FramingCase] = [
    FramingCase(name: "two Content-Length lines, 5 then 7",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello", failure: differing),
    FramingCase(name: "two Content-Length lines, 7 then 5",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 7\r\ncontent-length: 5\r\n\r\nhello", failure: differing),
    FramingCase(name: "Content-Length: 5, 7",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5, 7\r\n\r\nhello", failure: differing),
    FramingCase(name: "Content-Length: abc",
                response: "HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello", failure: notANumber),
    FramingCase(name: "Content-Length: +5",
                response: "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", failure: notANumber),
    FramingCase(name: "Content-Length: 5, x",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5, x\r\n\r\nhello", failure: notANumber),
    FramingCase(name: "empty Content-Length",
                response: "HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\nhello", failure: notANumber),
    FramingCase(name: "Content-Length folded onto a second line",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n 7\r\n\r\nhello", failure: notANumber),
    FramingCase(name: "Transfer-Encoding then Content-Length",
                response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                failure: withTransferEncoding),
    FramingCase(name: "Content-Length then Transfer-Encoding",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTRANSFER-ENCODING: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                failure: withTransferEncoding),
    FramingCase(name: "differing Content-Length after 100 Continue",
                response: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
                failure: differing),
    // libcurl 7.88 would take these as HTTP/2 answers, and the upstream as multiplexing.
    FramingCase(name: "an HTTP/2 status line on an HTTP/1.1 connection",
                response: "HTTP/2 200\r\ncontent-length: 5\r\n\r\nhello",
                failure: "invalid status line: not HTTP/1.x on an HTTP/1.1 connection (RFC 9112 §4)"),
    FramingCase(name: "an HTTP/2.0 status line on an HTTP/1.1 connection",
                response: "HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                failure: "invalid status line: not HTTP/1.x on an HTTP/1.1 connection (RFC 9112 §4)"),
    // libcurl 7.88 bounds a head (300 KiB) but keeps every trailer line in memory.
    FramingCase(name: "a trailer section over 300 KiB",
                response: chunkedWithTrailers(lines: 320),
                failure: "response trailer section larger than \(300 * 1024) bytes"),
]

/// Responses that must be accepted, their connection kept for the next request.
let validFraming: [FramingCase] = [
    FramingCase(name: "identical Content-Length lines",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", body: "hello"),
    FramingCase(name: "Content-Length: 5, 5",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello", body: "hello"),
    FramingCase(name: "equal values with leading zeros and blanks",
                response: "HTTP/1.1 200 OK\r\nContent-Length:\t05 ,5 \r\ncontent-length: 5\r\n\r\nhello", body: "hello"),
    FramingCase(name: "an interim response's Content-Length does not count",
                response: "HTTP/1.1 100 Continue\r\nContent-Length: 7\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", body: "hello"),
    FramingCase(name: "Content-Length trailer after a chunked body",
                response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 9\r\nX-Trailer: t\r\n\r\n",
                body: "hello"),
    // Not a status line: after the final head every line is a trailer (neither a new
    // head that drops the fields received, nor a switch of protocols).
    FramingCase(name: "an HTTP/1.0 answer",
                response: "HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello", body: "hello"),
    FramingCase(name: "a trailer line that starts like a status line",
                response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHTTP/1.1 200: x\r\nX-Trailer: injected\r\n\r\n",
                body: "hello"),
    FramingCase(name: "a trailer line that starts like a 101 status line",
                response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nHTTP/1.1 101: x\r\n\r\n",
                body: "hello"),
    FramingCase(name: "a trailer section of 300 KiB less a few bytes",
                response: chunkedWithTrailers(lines: 307), body: "hello"),
    FramingCase(name: "differing Content-Length in the answer to HEAD", method: "HEAD",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n"),
    FramingCase(name: "the answer to HEAD with a Content-Length over the body limit", method: "HEAD",
                response: "HTTP/1.1 200 OK\r\nContent-Length: 20000000\r\n\r\n"),
    FramingCase(name: "differing Content-Length in a 204",
                response: "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", status: 204),
    FramingCase(name: "Content-Length with Transfer-Encoding in a 304",
                response: "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", status: 304),
]

/// An upstream that answers `/framing` with `response` and anything else with a plain
/// `200`, on kept-alive connections; it counts the connections it accepts.
private func framingUpstream(_ response: String) throws -> ScriptedServer {
    try ScriptedServer { conn, server in
        while let req = conn.readRequest() {
            server.record(req)
            let answer = req.target == "/framing" ? response : "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            if !conn.write(answer) { return }
        }
    }
}

@Suite struct UpstreamFramingTests {
    /// A response with differing or invalid `Content-Length` values, or with both
    /// `Transfer-Encoding` and `Content-Length`, fails the attempt as `protocol` saying
    /// so (RFC 9112 §6.3), and its connection is closed: the next request to the same
    /// upstream comes on a new connection.
    @Test(arguments: invalidFraming)
    func invalidFraming_FailsAsProtocol_AndTheNextRequestUsesANewConnection(_ c: FramingCase) throws {
        let up = try framingUpstream(c.response)
        let h = try ClientHarness()
        let r = h.send { UpstreamRequest(method: c.method, url: "http://127.0.0.1:\(up.port)/framing", deadline: $0 + .seconds(2)) }
        guard case .failure(let f) = r else { Issue.record("\(c.name): accepted: \(r)"); return }
        #expect(f.kind == .protocol, "\(c.name)")
        #expect(f.message == c.failure, "\(c.name): \(f.message)")
        let next = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/next", deadline: $0 + .seconds(5)) }.get()
        #expect(String(decoding: next.body, as: UTF8.self) == "ok")
        #expect(up.requests.map(\.target) == ["/framing", "/next"])
        #expect(up.connections == 2, "\(c.name): the connection of the invalid response was reused")
        #expect(h.activeTransfers == 0)
    }

    /// Identical duplicate `Content-Length` values count as one; the fields of an interim
    /// (1xx) response, trailer fields, and the fields of a response without a body
    /// (HEAD, 204, 304) do not frame it. Each such response is accepted, trailer fields
    /// are not merged into the header fields (RFC 9110 §6.5.1), and the connection serves
    /// the next request.
    @Test(arguments: validFraming)
    func validFraming_IsAccepted_AndTheConnectionIsReused(_ c: FramingCase) throws {
        let up = try framingUpstream(c.response)
        let h = try ClientHarness()
        let resp = try h.send { UpstreamRequest(method: c.method, url: "http://127.0.0.1:\(up.port)/framing", deadline: $0 + .seconds(5)) }.get()
        #expect(resp.status == c.status, "\(c.name)")
        #expect(String(decoding: resp.body, as: UTF8.self) == c.body, "\(c.name)")
        #expect(resp.header("x-trailer") == nil, "\(c.name): a trailer field became a header field")
        #expect(resp.headers.filter { $0.0.lowercased() == "content-length" }.count <= 2, "\(c.name): \(resp.headers)")
        let next = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/next", deadline: $0 + .seconds(5)) }.get()
        #expect(String(decoding: next.body, as: UTF8.self) == "ok")
        #expect(up.connections == 1, "\(c.name): a new connection for the next request")
    }

    /// Bytes an upstream sends on an idle kept-alive connection (here a whole response
    /// after a `204`, unasked) are never taken as the next request's response (RFC 9112
    /// §9.3): that connection is dropped and the next request gets its own answer on a
    /// new one.
    @Test func unsolicitedBytesOnAnIdleConnection_AreNotTheNextResponse() throws {
        let up = try ScriptedServer { conn, server in
            while let req = conn.readRequest() {
                server.record(req)
                if req.target == "/late" {
                    guard conn.write("HTTP/1.1 204 No Content\r\n\r\n") else { return }
                    usleep(200_000)
                    guard conn.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nSTALE") else { return }
                } else if !conn.write("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh") {
                    return
                }
            }
        }
        let h = try ClientHarness()
        let first = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/late", deadline: $0 + .seconds(5)) }.get()
        #expect(first.status == 204)
        // The unasked response arrives while the connection is idle in the pool.
        usleep(600_000)
        let next = try h.send { UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/next", deadline: $0 + .seconds(5)) }.get()
        #expect(String(decoding: next.body, as: UTF8.self) == "fresh")
        #expect(up.requests.map(\.target) == ["/late", "/next"])
        #expect(up.connections == 2, "the connection with unread bytes was reused")
        #expect(h.activeTransfers == 0)
    }

    /// A URL whose host is not ASCII (as written, or percent-encoded) fails as `protocol`
    /// saying why, not just "URL using bad/illegal format", and without a connection;
    /// a host curl refuses outright (`^`) names curl's reason.
    @Test func unsendableHost_FailsSayingWhy() throws {
        let h = try ClientHarness()
        for url in ["http://exämple.invalid/x", "http://ex%C3%A4mple.invalid/x"] {
            let r = h.send { UpstreamRequest(method: "GET", url: url, deadline: $0 + .seconds(5)) }
            guard case .failure(let f) = r else { Issue.record("\(url): accepted"); continue }
            #expect(f.kind == .protocol, "\(url)")
            #expect(f.message.contains("URL host has non-ASCII characters"), "\(url): \(f.message)")
        }
        let r = h.send { UpstreamRequest(method: "GET", url: "http://ex^ample.invalid/x", deadline: $0 + .seconds(5)) }
        guard case .failure(let f) = r else { Issue.record("accepted"); return }
        #expect(f.kind == .protocol)
        #expect(f.message == "malformed URL: Bad hostname", "\(f.message)")
        #expect(h.activeTransfers == 0)
    }
}
