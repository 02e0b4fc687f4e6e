import Testing
import TestSupport
import Upstream

/// Easy handles are reused with libcurl 7.88 because head lines are screened before
/// curl stores them (`UpstreamClient.screensHeadLines`, curl issue #11101): these drive
/// one client through a real upstream answering scripted bytes, transfer after
/// transfer, and check what reaches the step — heads refused, bodies intact, one
/// handle serving them all.
@Suite struct HeadScreeningTests {
    static let ok = "HTTP/1.1 200 OK\r\nA: b\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    static func expectRefused(_ r: UpstreamResult?, sourceLocation: SourceLocation = #_sourceLocation) {
        guard case .failure(let f)? = r else {
            Issue.record("expected a refused head, got \(String(describing: r))", sourceLocation: sourceLocation)
            return
        }
        #expect(f.kind == .protocol, sourceLocation: sourceLocation)
        if UpstreamClient.screensHeadLines {
            #expect(f.message.contains("whitespace before the first header field"), "\(f.message)", sourceLocation: sourceLocation)
        }
    }

    /// The case curl #11101 needs: a first field line starting with a tab (or a
    /// space) on a handle whose previous transfer stored fields. It is refused with
    /// its reason; the same handle serves the transfers after it.
    @Test(arguments: ["\t", " "])
    func whitespaceBeforeFirstField_OnAReusedHandle_IsRefused(_ ws: String) throws {
        let folded = "HTTP/1.1 200 OK\r\n\(ws)X: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let (results, stats) = try runScriptedTransfers([Self.ok, folded, Self.ok, folded, Self.ok])
        for i in [0, 2, 4] { #expect(try results[i]?.get().body == Array("ok".utf8)) }
        Self.expectRefused(results[1])
        Self.expectRefused(results[3])
        #expect(stats.created == 1 && stats.cleanedUp == 0 && stats.inFlight == 0 && stats.unaccounted == 0, "\(stats)")
    }

    /// After an interim head with no fields (`100 Continue`), the final head's first
    /// field line is the first one of the transfer: refused when it starts with
    /// whitespace — and so it is after an interim head with fields.
    @Test func whitespaceBeforeFirstField_AfterAnInterimHead_IsRefused() throws {
        let afterBare = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n X: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let afterFields = "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\tX: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let interimFolded = "HTTP/1.1 103 Early Hints\r\n Link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let (results, stats) = try runScriptedTransfers([Self.ok, afterBare, afterFields, interimFolded, Self.ok])
        Self.expectRefused(results[1])
        Self.expectRefused(results[2])
        Self.expectRefused(results[3])
        #expect(try results[4]?.get().body == Array("ok".utf8))
        #expect(stats.created == 1 && stats.unaccounted == 0, "\(stats)")
    }

    /// curl hands a head line longer than `CURL_MAX_WRITE_SIZE` (16 KiB) to the write
    /// callback in pieces, one call each (sendf.c chop_write), but stores it once, after
    /// the last piece. A status line of 16.5 KB counted as two lines, so the first field
    /// line after it went unscreened — and a long "blank" line (CR, then bytes, then LF:
    /// curl ends a head at a line whose first byte is CR) of an interim head counted its
    /// tail as the next head's status line. Either way a folded first field line reached
    /// curl's store on a reused handle (curl #11101: heap use-after-free, the process
    /// aborts). Both are refused.
    @Test func whitespaceBeforeFirstField_AfterAHeadLineOfSeveralWrites_IsRefused() throws {
        let pad = String(repeating: "a", count: 16_500)
        let longStatus = "HTTP/1.1 200 \(pad)\r\n X: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let longInterimEnd = "HTTP/1.1 100 Continue\r\n\r\(pad)\nHTTP/1.1 200 OK\r\n\tX: y\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let (results, stats) = try runScriptedTransfers([Self.ok, longStatus, Self.ok, longInterimEnd, Self.ok])
        Self.expectRefused(results[1])
        Self.expectRefused(results[3])
        for i in [0, 2, 4] { #expect(try results[i]?.get().body == Array("ok".utf8)) }
        #expect(stats.inFlight == 0 && stats.unaccounted == 0, "\(stats)")
    }

    /// A status line whose reason phrase has a space right where curl cuts the line
    /// into write-callback pieces (byte 16,384) is one line, not a status line then a
    /// field line starting with whitespace: the response is taken as sent.
    @Test func statusLineCutAtASpace_IsAcceptedWhole() throws {
        let reason = String(repeating: "a", count: 16_384 - "HTTP/1.1 200 ".utf8.count) + " b"
        let answer = "HTTP/1.1 200 \(reason)\r\nA: 1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"
        let (results, _) = try runScriptedTransfers([Self.ok, answer, Self.ok])
        let r = try #require(try results[1]?.get())
        #expect(r.status == 200 && r.body == Array("ok".utf8) && r.header("a") == "1")
        #expect(try results[2]?.get().body == Array("ok".utf8))
    }

    /// What is not a first field line passes as before: an interim head then the
    /// final one (its fields, not the interim's), a folded line after the first field
    /// (obs-fold, RFC 9112 §5.2: joined to the field before it), and bodies whose
    /// bytes look like head lines — starting with whitespace, or holding a status
    /// line and a folded field — reach the step exactly, chunked or not, with
    /// trailers left out of the fields.
    @Test func otherHeadsAndBodies_PassUnchanged() throws {
        let lookalike = "HTTP/1.1 200 OK\r\n\tX: y\r\n\r\n"
        let answers = [
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nA: 1\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
            "HTTP/1.1 200 OK\r\nA: b\r\n c\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: \(lookalike.utf8.count + 2)\r\n\r\n \t\(lookalike)",
            "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n \t\r\n\(String(lookalike.utf8.count, radix: 16))\r\n\(lookalike)\r\n0\r\nT: v\r\n\r\n",
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            Self.ok,
        ]
        let (results, stats) = try runScriptedTransfers(answers)
        let first = try #require(try results[0]?.get())
        #expect(first.status == 201 && first.body == Array("hi".utf8) && first.header("a") == "1")
        let folded = try #require(try results[1]?.get())
        #expect(folded.status == 200 && folded.body == Array("ok".utf8))
        #expect(folded.header("a").map { $0.hasPrefix("b") && $0.hasSuffix("c") } == true, "\(String(describing: folded.header("a")))")
        #expect(try results[2]?.get().body == Array((" \t" + lookalike).utf8))
        let chunked = try #require(try results[3]?.get())
        #expect(chunked.body == Array((" \t" + lookalike).utf8))
        #expect(chunked.header("t") == nil)
        let empty = try #require(try results[4]?.get())
        #expect(empty.status == 204 && empty.body.isEmpty)
        #expect(try results[5]?.get().body == Array("ok".utf8))
        #expect(stats.created == 1 && stats.unaccounted == 0, "\(stats)")
    }
}
