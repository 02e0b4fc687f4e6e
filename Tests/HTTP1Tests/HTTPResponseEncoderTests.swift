import Testing
@testable import HTTP1

private func encoded(_ r: HTTPResponse, head: Bool = false, keepAlive: Bool = true, minor: Int = 1) -> String {
    var out: [UInt8] = []
    ResponseEncoder.encode(r, into: &out, isHEAD: head, keepAlive: keepAlive, versionMinor: minor,
                           dateLine: Array("Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n".utf8))
    return String(decoding: out, as: UTF8.self)
}

@Suite struct HTTPResponseEncoderTests {
    /// A response is encoded as status line, given headers, Date, Content-Length, blank line, body.
    @Test func encoder_WritesStatusHeadersAndBody_WhenKeepAlive() {
        let text = encoded(HTTPResponse(status: 201, headers: [("X-A", "1")], body: Array("hi".utf8)))
        #expect(text == "HTTP/1.1 201 Created\r\nX-A: 1\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nhi")
    }

    /// A HEAD response carries the body's Content-Length but no body.
    @Test func encoder_OmitsBodyKeepsLength_WhenHEAD() {
        let text = encoded(HTTPResponse(status: 200, body: Array("hello".utf8)), head: true)
        #expect(text.hasSuffix("Content-Length: 5\r\n\r\n"))
    }

    /// A HEAD response with an empty body keeps the responder's own Content-Length.
    @Test func encoder_KeepsGivenLength_WhenHEADWithEmptyBody() {
        let text = encoded(HTTPResponse(status: 200, headers: [("Content-Length", "42")]), head: true)
        #expect(text.hasSuffix("Content-Length: 42\r\n\r\n"))
    }

    /// 204 and 304 responses carry neither Content-Length nor a body.
    @Test func encoder_OmitsLengthAndBody_When204Or304() {
        for status in [204, 304] {
            let text = encoded(HTTPResponse(status: status, body: Array("x".utf8)))
            #expect(!text.contains("Content-Length"))
            #expect(text.hasSuffix("\r\n\r\n"))
        }
    }

    /// Closing adds `Connection: close`; an HTTP/1.0 keep-alive gets `Connection: keep-alive`.
    @Test func encoder_WritesConnectionHeader_PerPersistence() {
        #expect(encoded(HTTPResponse(status: 200), keepAlive: false).contains("Connection: close\r\n"))
        #expect(encoded(HTTPResponse(status: 200), keepAlive: true, minor: 0).contains("Connection: keep-alive\r\n"))
        #expect(!encoded(HTTPResponse(status: 200), keepAlive: true, minor: 1).contains("Connection"))
    }

    /// Responder-given framing headers are replaced and fields with CR/LF or bad names are dropped.
    @Test func encoder_DropsFramingAndInvalidHeaders_WhenResponderSetsThem() {
        let r = HTTPResponse(status: 200, headers: [
            ("Content-Length", "99"), ("Transfer-Encoding", "chunked"), ("Connection", "upgrade"),
            ("X-Bad", "a\r\nSet-Cookie: x"), ("Bad Name", "v"), ("X-Good", "ok"),
        ], body: Array("abc".utf8))
        let text = encoded(r)
        #expect(text == "HTTP/1.1 200 OK\r\nX-Good: ok\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 3\r\n\r\nabc")
    }

    /// A problem response is RFC 9457 JSON with type, title, status and detail.
    @Test func problem_HasJSONBody_WithStatusAndDetail() {
        let p = HTTPResponse.problem(status: 413, detail: "too \"big\"")
        #expect(p.headers.first?.1 == "application/problem+json")
        #expect(String(decoding: p.body, as: UTF8.self)
            == #"{"type":"about:blank","title":"Content Too Large","status":413,"detail":"too \"big\""}"#)
    }

    /// The Date line is an IMF-fixdate.
    @Test func dateCache_FormatsIMFFixdate_ForEpochSeconds() {
        #expect(String(decoding: DateCache.format(784111777), as: UTF8.self) == "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n")
    }
}

@Suite struct HTTPHeadersTests {
    /// Look-ups ignore case, keep order and return the first or all values.
    @Test func headers_LookUpCaseInsensitively_InOrder() {
        var h = HTTPHeaders([("Accept", "a"), ("X-Y", "1")])
        h.add(name: "x-y", value: "2")
        #expect(h.count == 3)
        #expect(h["X-y"] == "1")
        #expect(h.values("X-Y") == ["1", "2"])
        #expect(h["missing"] == nil)
        #expect(h.map { $0.name } == ["Accept", "X-Y", "x-y"])
        h.replaceOrAdd(name: "X-Y", value: "3")
        #expect(h.values("x-y") == ["3"])
        h.remove(name: "accept")
        #expect(h.count == 1)
    }
}
