import Testing
@testable import HTTP1

private let modes = [false, true]

@Suite struct HTTPRequestParserTests {
    /// Every framing rule produces its error (and status), whether the bytes arrive whole or one at a time.
    @Test(arguments: FramingCase.all, modes)
    func parser_RejectsWithStatus_WhenFramingIsInvalid(_ c: FramingCase, byteByByte: Bool) {
        let items = parseAll(c.raw, limits: c.limits, byteByByte: byteByByte)
        #expect(items.last?.error == c.error)
        #expect(items.allSatisfy { $0.request == nil })
    }

    /// A simple GET yields method, target, path, query, trimmed headers and HTTP/1.1 keep-alive.
    @Test(arguments: modes)
    func parser_ParsesRequestLineAndHeaders_WhenRequestIsSimple(byteByByte: Bool) throws {
        let raw = "GET /checkout/42?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\nX-Pad: \t padded value \t\r\n\r\n"
        let items = parseAll(raw, byteByByte: byteByByte)
        #expect(items.count == 1)
        let r = try #require(items.first?.request)
        #expect(r.method == "GET")
        #expect(r.target == "/checkout/42?x=1&y=%20")
        #expect(r.path == "/checkout/42")
        #expect(r.query == "x=1&y=%20")
        #expect(r.versionMinor == 1)
        #expect(r.keepAlive)
        #expect(r.body.isEmpty)
        #expect(r.headers.count == 3)
        #expect(r.headers["host"] == "example.com")
        #expect(r.headers["X-EMPTY"] == "")
        #expect(r.headers["x-pad"] == "padded value")
    }

    /// A target without `?` has a nil query; an empty query after `?` is "".
    @Test func parser_SplitsQuery_WhenQuestionMarkPresentOrAbsent() throws {
        let a = try #require(parseAll("GET /a HTTP/1.1\r\nHost: h\r\n\r\n", byteByByte: false).first?.request)
        #expect(a.path == "/a" && a.query == nil)
        let b = try #require(parseAll("GET /a? HTTP/1.1\r\nHost: h\r\n\r\n", byteByByte: false).first?.request)
        #expect(b.path == "/a" && b.query == "")
    }

    /// Three pipelined requests in one buffer come back one at a time, in order, each with its consumed count.
    @Test func parser_ReturnsPipelinedRequestsOneAtATime_WhenBufferHoldsSeveral() throws {
        let one = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
        let two = "POST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        let three = "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
        let bytes = Array((one + two + three).utf8)
        var p = HTTPRequestParser()
        var off = 0
        var paths: [String] = []
        for expected in [one, two, three] {
            guard case .request(let r, let consumed) = p.parse(bytes[off...]) else {
                Issue.record("expected a request at offset \(off)")
                return
            }
            #expect(consumed == expected.utf8.count)
            paths.append(r.path)
            off += consumed
        }
        #expect(paths == ["/1", "/2", "/3"])
        #expect(off == bytes.count)
        #expect(p.phase == .idle)
    }

    /// A body announced by `Content-Length` reserves room for at most 64 KiB before its
    /// bytes arrive (a megabyte announced reserves no megabyte), and is still received
    /// whole; a small one gets its exact size at once.
    @Test func parser_ReservesAtMost64KiB_BeforeTheBodyArrives() throws {
        let size = 1 << 20
        var p = HTTPRequestParser(limits: HTTPLimits(bodyBytes: 2 << 20))
        guard case .needMore = p.parse(Array("POST /big HTTP/1.1\r\nHost: h\r\nContent-Length: \(size)\r\n\r\n".utf8)) else {
            Issue.record("the head alone is not a request"); return
        }
        #expect(p.bodyCapacity >= 64 * 1024 && p.bodyCapacity < 128 * 1024, "\(p.bodyCapacity)")
        let piece = [UInt8](repeating: 0x61, count: 64 * 1024)
        var result = HTTPRequestParser.Result.needMore
        for _ in 0..<(size / piece.count) { result = p.parse(piece) }
        guard case .request(let r, _) = result else { Issue.record("no request"); return }
        #expect(r.body.count == size && r.body.allSatisfy { $0 == 0x61 })

        var small = HTTPRequestParser()
        _ = small.parse(Array("POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n".utf8))
        #expect(small.bodyCapacity >= 100 && small.bodyCapacity < 64 * 1024, "\(small.bodyCapacity)")
    }

    /// Pipelined requests are also all found when fed one byte at a time.
    @Test func parser_ReturnsPipelinedRequests_WhenFedByteByByte() {
        let raw = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\nHost: h\r\n\r\n"
        let items = parseAll(raw, byteByByte: true)
        #expect(items.compactMap { $0.request?.path } == ["/1", "/2", "/3"])
        #expect(items.compactMap { $0.request?.body.count } == [0, 3, 0])
    }

    /// A Content-Length body is buffered whole.
    @Test(arguments: modes)
    func parser_BuffersBody_WhenContentLengthGiven(byteByByte: Bool) throws {
        let items = parseAll("POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world", byteByByte: byteByByte)
        let r = try #require(items.first?.request)
        #expect(String(decoding: r.body, as: UTF8.self) == "hello world")
    }

    /// A chunked body is de-chunked; extensions (with BWS) are ignored and trailers dropped.
    @Test(arguments: modes)
    func parser_DechunksBody_WhenChunkedWithExtensionsAndTrailers(byteByByte: Bool) throws {
        let raw = "POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
            + "5;name=value\r\nhello\r\n1 ; a=\"b\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
            + "GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
        let items = parseAll(raw, byteByByte: byteByByte)
        #expect(items.count == 2)
        let r = try #require(items.first?.request)
        #expect(String(decoding: r.body, as: UTF8.self) == "hello 0123456789")
        #expect(r.headers["X-Trailer"] == nil)
        #expect(items.last?.request?.path == "/next")
    }

    /// An empty chunked body (last chunk only) gives an empty body.
    @Test(arguments: modes)
    func parser_AcceptsEmptyBody_WhenOnlyLastChunkSent(byteByByte: Bool) throws {
        let items = parseAll("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", byteByByte: byteByByte)
        let r = try #require(items.first?.request)
        #expect(r.body.isEmpty)
    }

    /// Identical duplicate Content-Length values (repeated fields or a list) are folded into one.
    @Test(arguments: modes)
    func parser_FoldsContentLength_WhenDuplicatesAreIdentical(byteByByte: Bool) throws {
        let a = parseAll("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", byteByByte: byteByByte)
        #expect(a.first?.request?.body.count == 3)
        let b = parseAll("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc", byteByByte: byteByByte)
        #expect(b.first?.request?.body.count == 3)
    }

    /// Empty lines before the request line are ignored (RFC 9112 §2.2).
    @Test(arguments: modes)
    func parser_IgnoresLeadingEmptyLines_WhenBeforeRequestLine(byteByByte: Bool) {
        let items = parseAll("\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", byteByByte: byteByByte)
        #expect(items.first?.request?.method == "GET")
    }

    /// Keep-alive follows RFC 9112 §9.3 for both versions and the Connection options.
    @Test(arguments: [
        ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", true, 1),
        ("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", false, 1),
        ("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n", false, 1),
        ("GET / HTTP/1.0\r\n\r\n", false, 0),
        ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true, 0),
        ("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false, 0),
    ])
    func parser_SetsKeepAlive_PerVersionAndConnectionHeader(raw: String, keepAlive: Bool, minor: Int) throws {
        let r = try #require(parseAll(raw, byteByByte: false).first?.request)
        #expect(r.keepAlive == keepAlive)
        #expect(r.versionMinor == minor)
    }

    /// `Expect: 100-continue` with a body yields `.expectContinue` before the body, then the request.
    @Test(arguments: modes)
    func parser_SignalsContinue_WhenExpect100WithBody(byteByByte: Bool) throws {
        let items = parseAll("PUT /u HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 4\r\n\r\ndata", byteByByte: byteByByte)
        #expect(items.count == 2)
        guard case .continueExpected = items.first else { Issue.record("no continue first"); return }
        #expect(items.last?.request?.body.count == 4)
    }

    /// `Expect: 100-continue` with a body over the limit gives 413 and never a continue.
    @Test func parser_RejectsWithoutContinue_WhenExpectedBodyIsTooLarge() {
        let items = parseAll("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
                             limits: HTTPLimits(bodyBytes: 10), byteByByte: false)
        #expect(items.count == 1)
        #expect(items.first?.error == .bodyTooLarge)
    }

    /// `Expect: 100-continue` is ignored without a body and for HTTP/1.0.
    @Test func parser_IgnoresExpect_WhenNoBodyOrHTTP10() {
        let a = parseAll("GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n", byteByByte: false)
        #expect(a.count == 1 && a.first?.request != nil)
        let b = parseAll("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nab", byteByByte: false)
        #expect(b.count == 1 && b.first?.request?.body.count == 2)
    }

    /// An HTTP/1.0 request needs no Host.
    @Test func parser_AcceptsMissingHost_WhenHTTP10() {
        #expect(parseAll("GET / HTTP/1.0\r\n\r\n", byteByByte: false).first?.request != nil)
    }

    /// An absolute-form target keeps its text in `target` and its path part in `path`.
    @Test func parser_ExtractsPath_WhenTargetIsAbsoluteForm() throws {
        let r = try #require(parseAll("GET http://example.com:8080/a/b?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", byteByByte: false).first?.request)
        #expect(r.target == "http://example.com:8080/a/b?q=1")
        #expect(r.path == "/a/b")
        #expect(r.query == "q=1")
        let root = try #require(parseAll("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n", byteByByte: false).first?.request)
        #expect(root.path == "/")
    }

    /// `OPTIONS *` (asterisk-form) is taken, `*` for any other method is not (RFC 9112 §3.2.4).
    @Test func parser_TakesAsteriskForm_OnlyForOPTIONS() throws {
        let r = try #require(parseAll("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", byteByByte: true).first?.request)
        #expect(r.target == "*")
        #expect(parseAll("OPTIONSX * HTTP/1.1\r\nHost: a\r\n\r\n", byteByByte: false).first?.error == .invalidTarget)
        #expect(parseAll("OPTIONS */x HTTP/1.1\r\nHost: a\r\n\r\n", byteByByte: false).first?.error == .invalidTarget)
    }

    /// Limits are inclusive: a request line, header section and body exactly at their limits pass; one byte less fails.
    @Test(arguments: modes)
    func parser_EnforcesLimitsInclusively_WhenAtOrOverLimit(byteByByte: Bool) {
        let line = "POST /0123456789 HTTP/1.0"
        let fields = "Content-Length: 3\r\n\r\n"
        let raw = line + "\r\n" + fields + "abc"
        let exact = HTTPLimits(headerBytes: fields.utf8.count, headers: 1, bodyBytes: 3, requestLineBytes: line.utf8.count)
        #expect(parseAll(raw, limits: exact, byteByByte: byteByByte).first?.request?.body.count == 3)
        var l = exact
        l.requestLineBytes -= 1
        #expect(parseAll(raw, limits: l, byteByByte: byteByByte).first?.error == .requestLineTooLong)
        l = exact
        l.headerBytes -= 1
        #expect(parseAll(raw, limits: l, byteByByte: byteByByte).first?.error == .headerSectionTooLarge)
        l = exact
        l.bodyBytes -= 1
        #expect(parseAll(raw, limits: l, byteByByte: byteByByte).first?.error == .bodyTooLarge)
        l = exact
        l.headers = 0
        #expect(parseAll(raw, limits: l, byteByByte: byteByByte).first?.error == .tooManyHeaders)
    }

    /// A chunked body exactly at the body limit passes; one more byte is 413.
    @Test(arguments: modes)
    func parser_AccumulatesChunkedLimit_WhenChunksAddUp(byteByByte: Bool) {
        let limits = HTTPLimits(bodyBytes: 6)
        let ok = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
        #expect(parseAll(ok, limits: limits, byteByByte: byteByByte).first?.request?.body.count == 6)
        let over = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\n"
        #expect(parseAll(over, limits: limits, byteByByte: byteByByte).first?.error == .bodyTooLarge)
    }

    /// The phase moves idle → head → body → idle as a request arrives.
    @Test func parser_ReportsPhase_AsRequestArrives() {
        var p = HTTPRequestParser()
        #expect(p.phase == .idle)
        _ = p.parse(Array("POST / HTTP/1.1\r\nHo".utf8))
        #expect(p.phase == .head)
        _ = p.parse(Array("st: h\r\nContent-Length: 2\r\n\r\na".utf8))
        #expect(p.phase == .body)
        guard case .request(_, let consumed) = p.parse(Array("b".utf8)) else { Issue.record("no request"); return }
        #expect(consumed == 1)
        #expect(p.phase == .idle)
    }

    /// After an error the parser keeps returning it until reset, then parses again.
    @Test func parser_StaysFailed_UntilReset() {
        var p = HTTPRequestParser()
        guard case .error(let e) = p.parse(Array("GET / HTTP/3.0\r\n".utf8)) else { Issue.record("no error"); return }
        #expect(e == .unsupportedVersion)
        guard case .error(let again) = p.parse(Array("GET / HTTP/1.1\r\nHost: h\r\n\r\n".utf8)) else { Issue.record("not failed"); return }
        #expect(again == .unsupportedVersion)
        p.reset()
        guard case .request = p.parse(Array("GET / HTTP/1.1\r\nHost: h\r\n\r\n".utf8)) else { Issue.record("no request after reset"); return }
    }

    /// `HTTPRequest.init` derives path and query from the target like the parser.
    @Test func request_DerivesPathAndQuery_WhenCreatedFromTarget() {
        let r = HTTPRequest(method: "GET", target: "/jobs/abc?wait=5")
        #expect(r.path == "/jobs/abc")
        #expect(r.query == "wait=5")
        #expect(HTTPRequest(method: "GET", target: "/x").query == nil)
    }

    /// Each parse error maps to the status the brief requires.
    @Test func parseError_HasStatus_PerKind() {
        #expect(HTTPParseError.bareCR.status == 400)
        #expect(HTTPParseError.bodyTooLarge.status == 413)
        #expect(HTTPParseError.requestLineTooLong.status == 414)
        #expect(HTTPParseError.headerSectionTooLarge.status == 431)
        #expect(HTTPParseError.tooManyHeaders.status == 431)
        #expect(HTTPParseError.unsupportedTransferEncoding.status == 501)
        #expect(HTTPParseError.unsupportedVersion.status == 505)
        #expect(HTTPParseError.requestTimeout.status == 408)
        #expect(!HTTPParseError.missingHost.reason.isEmpty)
    }

    /// Header values may carry obs-text (bytes ≥ 0x80), which are kept.
    @Test func parser_KeepsObsText_WhenInFieldValue() throws {
        let bytes = Array("GET / HTTP/1.1\r\nHost: h\r\nX-U: caf".utf8) + [0xC3, 0xA9] + Array("\r\n\r\n".utf8)
        let r = try #require(parseAll(bytes, byteByByte: false).first?.request)
        #expect(r.headers["x-u"] == "café")
    }
}
