import Dispatch
import EventLoop
import Glibc
import JSON
import Locking
import Routes
import Testing
import TestSupport
import Upstream

/// Regression tests for inputs the fuzzers (fuzz/) turned up.
@Suite struct FuzzRegressionTests {
    /// One GET through a fresh `UpstreamClient` to an upstream that answers `answer`
    /// (raw bytes, then end of stream); nil when no result came within 20 s.
    static func fetch(_ answer: String) throws -> UpstreamResult? {
        let up = try ScriptedServer { conn, _ in
            _ = conn.readRequest()
            conn.write(answer)
            shutdown(conn.fd, Int32(SHUT_WR))
            _ = conn.isClosedByPeer()
        }
        let group = try EventLoopGroup(count: 1)
        defer { group.shutdown() }
        let loop = group.loops[0]
        let done = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var result: UpstreamResult?
        nonisolated(unsafe) var client: UpstreamClient?
        loop.execute {
            client = UpstreamClient(loop: loop)
            client!.send(UpstreamRequest(method: "GET", url: "http://127.0.0.1:\(up.port)/", deadline: loop.now + .seconds(10))) { r in
                result = r
                done.signal()
            }
        }
        _ = done.wait(timeout: .now() + 20)
        loop.execute { client = nil }
        return result
    }

    /// Context answering every reference with a string holding CR LF.
    struct CRLFContext: TemplateContext {
        func resolve(_ ref: TemplateRef) -> JSON? { .string("v\r\nInjected: 1") }
    }

    /// Found by fuzz target `template` (seed fuzz/corpus/template/env_crlf_header): an `{{env.*}}` value with CR LF is literal text that `renderHeaderValue` does not re-check, so the route loader must refuse it in a header.
    @Test func headerTemplate_EnvValueWithCRLF_RefusedAtLoad() {
        let file = #"{"name":"r","method":"GET","path":"/r","steps":[{"id":"a","timeout":"1s","request":{"method":"GET","url":"http://127.0.0.1:9/x","headers":{"Authorization":"Bearer {{env.TOKEN}}","X-Q":"{{request.query.q}}"}}}]}"#
        #expect(throws: RouteLoadError.self) {
            _ = try RouteLoader.parse(file: "r.json", data: Array(file.utf8), environment: ["TOKEN": "s3\r\ncret"])
        }
        #expect(throws: Never.self) {
            _ = try RouteLoader.parse(file: "r.json", data: Array(file.utf8), environment: ["TOKEN": "s3cret"])
        }
    }

    /// An interpolated value holding CR LF is refused when rendered as a header value (no header injection into upstream requests).
    @Test func headerTemplate_InterpolatedCRLF_Refused() throws {
        let t = try Template("Bearer {{request.query.q}}")
        #expect(throws: TemplateError.self) { _ = try t.renderHeaderValue(CRLFContext()) }
    }

    /// Found by fuzz target `upstream_response` (seed fuzz/corpus/upstream_response/header_bare_cr): libcurl passes a header line with a bare CR inside through whole, and the header block kept the CR in the value; it is now a space (RFC 9110 §5.5), so no upstream header name or value holds CR, LF or NUL.
    @Test func upstreamHeader_BareCR_ReplacedBySpace() throws {
        let answer = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /r/1\rgContent-Length: 0\r\nX-Lead:\r value\r\nContent-Length: 2\r\n\r\n{}"
        let response = try #require(try Self.fetch(answer)?.get())
        #expect(response.status == 201)
        for (name, value) in response.headers {
            #expect(!(name + value).utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }, "\(name): \(value)")
        }
        #expect(response.header("location") == "/r/1 gContent-Length: 0")
        #expect(response.header("x-lead") == "value")
        #expect(response.body == Array("{}".utf8))
        // NUL (which libcurl refuses on the wire) is replaced the same way.
        let block = UpstreamHeaderBlock(raw: Array("X-A: a\u{0}b\r\n".utf8))
        #expect(block.pairs.first?.1 == "a b")
    }

    /// Noted by fuzz target `upstream_response`: libcurl passes obs-fold lines on as lines of their own; the header
    /// block joins each to the previous value with one space (RFC 9112 §5.2), ignores one before any field (§2.2), and
    /// trims blanks around values (RFC 9110 §5.5) — a continuation holding a colon is no longer a field of its own.
    @Test func upstreamHeader_ObsFold_JoinsThePreviousValue() throws {
        let block = UpstreamHeaderBlock(raw: Array(" lead: 0\r\nA: 1\r\n  continued \r\n\tmore: x\r\nB: 2  \r\nE:\r\n\tlate\r\n".utf8))
        #expect(block.pairs.map { "\($0.0)=\($0.1)" } == ["A=1 continued more: x", "B=2", "E=late"])

        let response = try #require(try Self.fetch("HTTP/1.1 200 OK\r\nA: 1\r\n continued\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")?.get())
        #expect(response.header("a") == "1 continued")
        #expect(response.header("connection") == "close")
    }

    /// Noted by fuzz target `upstream_response`: a field line starting with `HTTP/` inside a header block (libcurl
    /// passes `HTTP/x: 9` on as a field; it refuses a status line there) was taken for a new status line and dropped
    /// the fields before it. Only a response's first line, or the one after a 1xx's blank line, is a status line now.
    @Test func upstreamHeader_HTTPSlashLineInsideTheBlock_IsNotAStatusLine() throws {
        let answer = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nA: 1\r\nHTTP/x: 9\r\nB: 2\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let response = try #require(try Self.fetch(answer)?.get())
        #expect(response.status == 200)
        #expect(response.header("a") == "1")
        #expect(response.header("b") == "2")
        #expect(response.header("link") == nil)
        #expect(response.body == Array("ok".utf8))
    }

    /// Found by fuzz target `upstream_response` (seed fuzz/corpus/upstream_response/folded_first_header_curl_11101): with libcurl before
    /// 8.1.0 (curl issue #11101) a reused easy handle writes to freed memory when a response's first field line is folded
    /// — the process aborted. Head lines are screened there before curl stores them (`UpstreamClient.screensHeadLines`):
    /// the folded response is an ordinary failure (or answer, with a libcurl that unfolds it safely), and the one
    /// handle goes on serving.
    @Test func upstreamResponse_FoldedFirstFieldAfterAnotherTransfer_DoesNotCrash() throws {
        let (results, stats) = try runScriptedTransfers([
            "HTTP/1.1 200 OK\r\nA: b\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\n\tX: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nC: d\r\nConnection: close\r\nContent-Length: 4\r\n\r\nfine"])
        #expect(try results[0]?.get().status == 200)
        switch results[1] {
        case .success(let r): #expect(r.status == 200)
        case .failure(let f): #expect(f.kind == .protocol, "\(f)")
        case nil: Issue.record("no result")
        }
        let third = try #require(try results[2]?.get())
        #expect(third.body == Array("fine".utf8))
        #expect(stats.created == 1 && stats.cleanedUp == 0 && stats.inFlight == 0 && stats.unaccounted == 0, "\(stats)")
    }
}
