import Foundation
import Glibc
import HTTP1
import TestSupport
import Testing

// A corpus of raw requests replayed over a real socket against a real gateway.
// Drawn from RFC 9112 framing rules and from public request-smuggling and parser
// bug reports (CL.TE / TE.CL / TE.TE desync, obfuscated Transfer-Encoding, bare
// CR/LF line endings, obs-fold, NUL and control bytes, oversized heads and chunk
// sizes), rewritten for this gateway.
//
// Every case is sent followed by a pipelined sentinel request (`GET /healthz`
// with `Connection: close`). For a case that must close the connection, the
// sentinel must NOT be answered; for a valid case it must be answered with 200
// (which also proves the case's body was framed exactly).

/// One raw request (or several pipelined), the statuses it must produce in order,
/// and whether the connection must close after them.
struct CorpusCase: Sendable, CustomTestStringConvertible {
    let name: String
    let raw: [UInt8]
    let statuses: [Int]
    let closes: Bool
    var testDescription: String { name }

    init(_ name: String, _ raw: String, _ statuses: [Int], closes: Bool) {
        self.name = name
        self.raw = Array(raw.utf8)
        self.statuses = statuses
        self.closes = closes
    }

    init(_ name: String, bytes: [UInt8], _ statuses: [Int], closes: Bool) {
        self.name = name
        self.raw = bytes
        self.statuses = statuses
        self.closes = closes
    }

    /// An invalid request: one error status, then close.
    static func bad(_ name: String, _ raw: String, _ status: Int = 400) -> CorpusCase {
        CorpusCase(name, raw, [status], closes: true)
    }

    /// A valid request: answered (200) and the connection stays open.
    static func ok(_ name: String, _ raw: String) -> CorpusCase {
        CorpusCase(name, raw, [200], closes: false)
    }
}

/// Limits the corpus gateway runs with (small, so oversized cases stay small).
enum CorpusLimits {
    static let requestLine = 1024
    static let headerBytes = 4096
    static let headers = 20
    static let body = 4096
}

let sentinel = "GET /healthz HTTP/1.1\r\nHost: sentinel\r\nConnection: close\r\n\r\n"

private func post(_ headers: String, _ body: String = "") -> String {
    "POST /echo HTTP/1.1\r\nHost: a\r\n\(headers)\r\n\(body)"
}
private func get(_ headers: String = "") -> String {
    "GET /healthz HTTP/1.1\r\nHost: a\r\n\(headers)\r\n"
}
private func chunked(_ body: String) -> String {
    post("Transfer-Encoding: chunked\r\n", body)
}
/// A request hidden in a body: must stay body bytes.
private let smuggled = "GET /admin HTTP/1.1\r\nX: y\r\n"

/// The corpus. Statuses follow SPEC §7 and the README's "HTTP server behaviour".
let corpus: [CorpusCase] = {
    var c: [CorpusCase] = []
    let L = CorpusLimits.self

    // MARK: valid requests (the sentinel behind them must be answered)
    c += [
        .ok("valid GET", get()),
        .ok("valid POST with Content-Length", post("Content-Length: 5\r\n", "hello")),
        .ok("valid POST with zero Content-Length", post("Content-Length: 0\r\n")),
        .ok("GET with a Content-Length body is framed, not smuggled", "GET /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: \(smuggled.utf8.count)\r\n\r\n" + smuggled),
        .ok("valid chunked body", chunked("5\r\nhello\r\n0\r\n\r\n")),
        .ok("chunked body in several chunks", chunked("1\r\na\r\n2\r\nbc\r\n3\r\ndef\r\n0\r\n\r\n")),
        .ok("chunk extension ignored", chunked("5;name=value\r\nhello\r\n0\r\n\r\n")),
        .ok("chunk extension with quoted value", chunked("5;n=\"a b\"\r\nhello\r\n0\r\n\r\n")),
        .ok("chunk size with BWS before extension", chunked("5 ;x\r\nhello\r\n0\r\n\r\n")),
        .ok("uppercase hex chunk size", chunked("A\r\n0123456789\r\n0\r\n\r\n")),
        .ok("chunk size with leading zeros", chunked("0005\r\nhello\r\n000\r\n\r\n")),
        .ok("chunked body with a trailer", chunked("5\r\nhello\r\n0\r\nX-Trailer: v\r\n\r\n")),
        .ok("chunked smuggling attempt inside chunk data stays data", chunked(String(smuggled.utf8.count + 2, radix: 16) + "\r\n" + smuggled + "\r\n\r\n0\r\n\r\n")),
        .ok("Transfer-Encoding value is case-insensitive", post("Transfer-Encoding: Chunked\r\n", "3\r\nabc\r\n0\r\n\r\n")),
        .ok("Transfer-Encoding with OWS", post("Transfer-Encoding:\t chunked \t\r\n", "3\r\nabc\r\n0\r\n\r\n")),
        .ok("Transfer-Encoding with empty list elements", post("Transfer-Encoding: ,chunked\r\n", "3\r\nabc\r\n0\r\n\r\n")),
        .ok("identical duplicate Content-Length folded", post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello")),
        .ok("identical Content-Length list folded", post("Content-Length: 5, 5\r\n", "hello")),
        .ok("empty lines before the request line are ignored", "\r\n\r\n" + get()),
        .ok("field names are case-insensitive", "GET /healthz HTTP/1.1\r\nhOsT: a\r\n\r\n"),
        .ok("OWS around a field value", get("X-A:   v  \t\r\n")),
        .ok("empty field value", get("X-Empty:\r\n")),
        .ok("HTAB inside a field value", get("X-A: a\tb\r\n")),
        .ok("absolute-form request target", "GET http://a/healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .ok("absolute-form request target, https, scheme in capitals", "GET HTTPS://a/healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .ok("query string on the target", "GET /healthz?a=1&b=%20 HTTP/1.1\r\nHost: a\r\n\r\n"),
        .ok("HTTP/1.0 with keep-alive", "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"),
        .ok("Expect 100-continue with no body needs no interim", get("Expect: 100-continue\r\n")),
        CorpusCase("pipelined valid requests answered in order", get() + get() + post("Content-Length: 2\r\n", "hi"), [200, 200, 200], closes: false),
        .ok("request line exactly at the limit", "GET /healthz?" + String(repeating: "p", count: L.requestLine - 22) + " HTTP/1.1\r\nHost: a\r\n\r\n"),
        .ok("body exactly at the limit", post("Content-Length: \(L.body)\r\n", String(repeating: "b", count: L.body))),
        .ok("header count exactly at the limit", get((1..<L.headers).map { "X-\($0): v\r\n" }.joined())),
        .ok("chunked body exactly at the limit", chunked("\(String(L.body, radix: 16))\r\n\(String(repeating: "b", count: L.body))\r\n0\r\n\r\n")),
    ]
    // Statuses that are not a single 200.
    c += [
        CorpusCase("Expect 100-continue with a body gets 100 then 200", post("Content-Length: 5\r\nExpect: 100-continue\r\n", "hello"), [100, 200], closes: false),
        CorpusCase("Connection close honoured, pipelined request dropped", get("Connection: close\r\n"), [200], closes: true),
        CorpusCase("Connection close in a list honoured", get("Connection: foo, close\r\n"), [200], closes: true),
        CorpusCase("HTTP/1.0 without keep-alive closes", "GET /healthz HTTP/1.0\r\n\r\n", [200], closes: true),
        CorpusCase("unknown route is a 404 on a live connection", "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", [404], closes: false),
        CorpusCase("valid request then garbage: answered, then 400", get() + "GARBAGE\r\n\r\n", [200, 400], closes: true),
        CorpusCase("valid request then CL.TE desync: answered, then 400", get() + post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nX"), [200, 400], closes: true),
    ]

    // MARK: request line
    c += [
        .bad("missing HTTP version", "GET /healthz\r\nHost: a\r\n\r\n"),
        .bad("request target without a leading slash", "GET healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("asterisk-form target on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("two spaces after the method", "GET  /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("two spaces before the version", "GET /healthz  HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("tab as request-line separator", "GET\t/healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("space after the version", "GET /healthz HTTP/1.1 \r\nHost: a\r\n\r\n"),
        .bad("space inside the target", "GET /health z HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("leading space before the method", " GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("lowercase protocol name", "GET /healthz http/1.1\r\nHost: a\r\n\r\n"),
        .bad("version without minor", "GET /healthz HTTP/1\r\nHost: a\r\n\r\n"),
        .bad("two-digit minor version", "GET /healthz HTTP/1.10\r\nHost: a\r\n\r\n"),
        .bad("version with letters", "GET /healthz HTTP/1.x\r\nHost: a\r\n\r\n"),
        .bad("HTTP/1.2 is unsupported", "GET /healthz HTTP/1.2\r\nHost: a\r\n\r\n", 505),
        .bad("HTTP/2.0 in an HTTP/1 request line", "GET /healthz HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        .bad("HTTP/0.9 version", "GET /healthz HTTP/0.9\r\nHost: a\r\n\r\n", 505),
        .bad("HTTP/2 connection preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        .bad("HTTP/0.9 simple request", "GET /\r\n\r\n"),
        .bad("method with a non-token character", "GE(T /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("method with a slash", "G/ET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("empty request line then junk", "\r\n \r\n\r\n"),
        .bad("control byte in the target", "GET /he\u{01}althz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("DEL in the target", "GET /he\u{7F}althz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("NUL in the target", "GET /he\u{00}althz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("NUL in the method", "G\u{00}ET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("bare LF ends the request line", "GET /healthz HTTP/1.1\nHost: a\r\n\r\n"),
        .bad("bare CR ends the request line", "GET /healthz HTTP/1.1\rHost: a\r\n\r\n"),
        .bad("bare LF before the request line", "\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("bare CR before the request line", "\rGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("CR inside the target", "GET /a\rb HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("LF inside the target (response splitting)", "GET /a\nb HTTP/1.1\r\nHost: a\r\n\r\n"),
        .bad("TLS ClientHello on a plain listener", "\u{16}\u{03}\u{01}\u{00}\u{05}\u{01}\u{00}\u{00}\u{01}\u{00}\r\n\r\n"),
    ]
    c.append(CorpusCase("raw UTF-8 in the target", bytes: Array("GET /caf".utf8) + [0xC3, 0xA9] + Array(" HTTP/1.1\r\nHost: a\r\n\r\n".utf8), [400], closes: true))
    c.append(CorpusCase("high byte in the method", bytes: [0x47, 0xC5, 0x54] + Array(" /healthz HTTP/1.1\r\nHost: a\r\n\r\n".utf8), [400], closes: true))

    // MARK: header fields
    c += [
        .bad("obs-fold continuation line", get("X-A: a\r\n b\r\n")),
        .bad("obs-fold with a tab", get("X-A: a\r\n\tb\r\n")),
        .bad("whitespace before the first header", "GET /healthz HTTP/1.1\r\n Host: a\r\n\r\n"),
        .bad("space before the colon", "GET /healthz HTTP/1.1\r\nHost : a\r\n\r\n"),
        .bad("tab before the colon", "GET /healthz HTTP/1.1\r\nHost\t: a\r\n\r\n"),
        .bad("empty field name", get(": v\r\n")),
        .bad("field line without a colon", get("NoColon\r\n")),
        .bad("space inside a field name", get("X A: v\r\n")),
        .bad("non-token character in a field name", get("X@A: v\r\n")),
        .bad("NUL in a field name", get("X\u{00}A: v\r\n")),
        .bad("NUL in a field value", get("X-A: a\u{00}b\r\n")),
        .bad("DEL in a field value", get("X-A: a\u{7F}b\r\n")),
        .bad("vertical tab in a field value", get("X-A: a\u{0B}b\r\n")),
        .bad("form feed in a field value", get("X-A: a\u{0C}b\r\n")),
        .bad("bare CR inside a field value", get("X-A: a\rb\r\n")),
        .bad("bare LF ends a field line", get("X-A: a\n")),
        .bad("bare LF ends the head", "GET /healthz HTTP/1.1\r\nHost: a\r\n\n"),
        .bad("bare CR ends the head", "GET /healthz HTTP/1.1\r\nHost: a\r\n\rX"),
        .bad("header injection via LF in a value", get("X-A: a\nSet-Cookie: b\r\n")),
        .bad("missing Host in HTTP/1.1", "GET /healthz HTTP/1.1\r\nX-A: b\r\n\r\n"),
        .bad("two Host fields", get("Host: b\r\n")),
        .bad("two Host fields differing in case", get("HOST: a\r\n")),
        .bad("Host smuggled behind obs-fold", "GET /healthz HTTP/1.1\r\nX: y\r\n Host: a\r\n\r\n"),
    ]
    c.append(CorpusCase("high byte in a field name", bytes: Array("GET /healthz HTTP/1.1\r\nHost: a\r\nX".utf8) + [0xE9] + Array(": v\r\n\r\n".utf8), [400], closes: true))
    c.append(CorpusCase("obs-text in a field value is accepted", bytes: Array("GET /healthz HTTP/1.1\r\nHost: a\r\nX-A: caf".utf8) + [0xC3, 0xA9] + Array("\r\n\r\n".utf8), [200], closes: false))

    // MARK: Content-Length
    c += [
        .bad("differing duplicate Content-Length", post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!")),
        .bad("differing Content-Length list", post("Content-Length: 5, 6\r\n", "hello!")),
        .bad("Content-Length 0 then 10", post("Content-Length: 0\r\nContent-Length: 10\r\n")),
        .bad("empty Content-Length", post("Content-Length:\r\n")),
        .bad("negative Content-Length", post("Content-Length: -1\r\n")),
        .bad("plus-signed Content-Length", post("Content-Length: +5\r\n", "hello")),
        .bad("hexadecimal Content-Length", post("Content-Length: 0x5\r\n", "hello")),
        .bad("decimal point in Content-Length", post("Content-Length: 5.0\r\n", "hello")),
        .bad("space inside Content-Length", post("Content-Length: 5 5\r\n", "hello")),
        .bad("Content-Length with trailing letters", post("Content-Length: 5abc\r\n", "hello")),
        .bad("overflowing Content-Length", post("Content-Length: 99999999999999999999999999\r\n")),
        .bad("Content-Length list with an empty element", post("Content-Length: 5,\r\n", "hello")),
        .bad("Content-Length list of commas", post("Content-Length: ,\r\n")),
        .bad("Content-Length with NUL", post("Content-Length: 5\u{00}\r\n", "hello")),
        .bad("Content-Length name obfuscated with a space", post("Content-Length : 5\r\n", "hello")),
    ]

    // MARK: Transfer-Encoding and smuggling
    c += [
        .bad("CL.TE: Content-Length then Transfer-Encoding", post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\nG")),
        .bad("TE.CL: Transfer-Encoding then Content-Length", post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", "5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n")),
        .bad("TE.TE: chunked then a bogus second coding field", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", "0\r\n\r\n")),
        .bad("TE with Content-Length 0", post("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n", "0\r\n\r\n")),
        .bad("unknown transfer coding", post("Transfer-Encoding: gzip\r\n"), 501),
        .bad("obfuscated coding xchunked", post("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"), 501),
        .bad("coding with parameters", post("Transfer-Encoding: chunked;q=1\r\n", "0\r\n\r\n"), 501),
        .bad("gzip before chunked is not implemented", post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"), 501),
        .bad("chunked not final", post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n")),
        .bad("chunked twice in a list", post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n")),
        .bad("chunked twice across fields", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")),
        .bad("empty Transfer-Encoding", post("Transfer-Encoding:\r\n")),
        .bad("Transfer-Encoding of only commas", post("Transfer-Encoding: , ,\r\n")),
        .bad("Transfer-Encoding in HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        .bad("Transfer-Encoding name with a space before the colon", post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n")),
        .bad("Transfer-Encoding behind obs-fold", post("X: y\r\n Transfer-Encoding: chunked\r\n", "0\r\n\r\n")),
        .bad("Transfer-Encoding value folded onto the next line", post("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n")),
        .bad("vertical tab before chunked", post("Transfer-Encoding: \u{0B}chunked\r\n", "0\r\n\r\n")),
        .bad("Content-Length hidden after bare LF", post("X: y\nContent-Length: 5\r\n", "hello")),
    ]

    // MARK: chunked bodies
    c += [
        .bad("non-hex chunk size", chunked("G\r\nhello\r\n0\r\n\r\n")),
        .bad("negative chunk size", chunked("-1\r\nhello\r\n0\r\n\r\n")),
        .bad("empty chunk size", chunked("\r\nhello\r\n0\r\n\r\n")),
        .bad("0x prefix on chunk size", chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        .bad("space inside chunk size", chunked("5 5\r\nhello\r\n0\r\n\r\n")),
        .bad("leading space before chunk size", chunked(" 5\r\nhello\r\n0\r\n\r\n")),
        .bad("overflowing chunk size", chunked("FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n")),
        .bad("chunk size ends in bare LF", chunked("5\nhello\r\n0\r\n\r\n")),
        .bad("chunk size ends in bare CR", chunked("5\rhello\r\n0\r\n\r\n")),
        .bad("chunk data longer than its size", chunked("3\r\nhello\r\n0\r\n\r\n")),
        .bad("chunk data not followed by CRLF", chunked("5\r\nhelloXX0\r\n\r\n")),
        .bad("chunk data followed by bare LF", chunked("5\r\nhello\n0\r\n\r\n")),
        .bad("control byte in a chunk extension", chunked("5;a=\u{01}\r\nhello\r\n0\r\n\r\n")),
        .bad("chunk extension ends in bare LF", chunked("5;a=b\nhello\r\n0\r\n\r\n")),
        .bad("last chunk ends in bare LF", chunked("5\r\nhello\r\n0\r\n\n")),
        .bad("trailer with obs-fold", chunked("0\r\nX: a\r\n b\r\n\r\n")),
        .bad("trailer with space before colon", chunked("0\r\nX : a\r\n\r\n")),
        .bad("trailer line without a colon", chunked("0\r\nXYZ\r\n\r\n")),
        .bad("trailer with a control byte", chunked("0\r\nX: a\u{01}\r\n\r\n")),
        .bad("chunk-size line longer than 4 KiB", chunked("5;" + String(repeating: "e", count: 4200) + "\r\nhello\r\n0\r\n\r\n")),
        .bad("chunk size of zeros longer than 4 KiB", chunked(String(repeating: "0", count: 4200) + "5\r\nhello\r\n0\r\n\r\n")),
    ]

    // MARK: oversized everything
    c += [
        .bad("request line one byte over the limit", "GET /healthz?" + String(repeating: "p", count: L.requestLine - 21) + " HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        .bad("huge request line", "GET /" + String(repeating: "p", count: 20_000) + " HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        .bad("huge method", String(repeating: "G", count: 5000) + " / HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        .bad("too many header fields", get((1...(L.headers + 10)).map { "X-\($0): v\r\n" }.joined()), 431),
        .bad("one header over the count limit", get((1...L.headers).map { "X-\($0): v\r\n" }.joined()), 431),
        .bad("huge header value", get("X-Big: " + String(repeating: "v", count: 8000) + "\r\n"), 431),
        .bad("huge header name", get(String(repeating: "N", count: 8000) + ": v\r\n"), 431),
        .bad("many mid-sized headers over the byte limit", get((1...15).map { "X-\($0): " + String(repeating: "v", count: 300) + "\r\n" }.joined()), 431),
        .bad("Content-Length over the body limit", post("Content-Length: \(L.body + 1)\r\n"), 413),
        .bad("Content-Length far over the body limit", post("Content-Length: 9223372036854775807\r\n"), 413),
        .bad("chunk size over the body limit", chunked("FFFFFFFF\r\nhello\r\n0\r\n\r\n"), 413),
        .bad("chunks adding up over the body limit", chunked(String(repeating: "800\r\n" + String(repeating: "c", count: 0x800) + "\r\n", count: 3) + "0\r\n\r\n"), 413),
        .bad("trailer section over the byte limit", chunked("0\r\nX-T: " + String(repeating: "t", count: 8000) + "\r\n\r\n"), 431),
        .bad("too many trailer fields", chunked("0\r\n" + (1...(L.headers + 5)).map { "T-\($0): v\r\n" }.joined() + "\r\n"), 431),
        .bad("endless empty lines before the request line", String(repeating: "\r\n", count: L.requestLine) + get()),
    ]
    return c
}()

/// A subset replayed one byte per write: the parser must reach the same verdict
/// whatever the segmentation.
let byteSplitCorpus: [CorpusCase] = corpus.filter { $0.raw.count <= 400 }.enumerated().filter { $0.offset % 6 == 0 }.map(\.element)

/// Sends `c` (plus the sentinel) and checks the statuses and the close.
private func replay(_ c: CorpusCase, on gateway: HardeningGateway, byteByByte: Bool) throws {
    let conn = try gateway.connect(timeout: .seconds(5))
    setSendTimeout(conn.fd, .seconds(5))
    let bytes = c.raw + Array(sentinel.utf8)
    if byteByByte {
        for b in bytes {
            if !conn.write([b]) { break }
        }
    } else {
        conn.write(bytes)
    }
    let (received, closed) = readUntilClose(conn.fd, timeout: .seconds(8))
    let statuses = responseStatuses(received)
    let expected = c.statuses + (c.closes ? [] : [200])
    #expect(statuses == expected, "\(c.name): got \(statuses), expected \(expected)")
    #expect(closed, "\(c.name): the connection was not closed")
}

@Suite struct MalformedRequestCorpus {
    static let gateway: HardeningGateway = try! HardeningGateway(
        routes: ["echo.json": fixedRoute(name: "echo", method: "POST", path: "/echo")]
    ) { config in
        config.limits.requestLineBytes = CorpusLimits.requestLine
        config.limits.headerBytes = CorpusLimits.headerBytes
        config.limits.headers = CorpusLimits.headers
        config.limits.bodyBytes = CorpusLimits.body
        config.limits.headerTimeout = .seconds(5)
    }

    /// The corpus holds at least 100 raw requests.
    @Test func corpus_HasAtLeastHundredCases_Always() {
        #expect(corpus.count >= 100)
        #expect(Set(corpus.map(\.name)).count == corpus.count, "case names are unique")
    }

    /// Each raw request gets its expected status, and the pipelined request behind it is answered only when the connection may stay open.
    @Test(arguments: corpus)
    func corpus_AnswersExpectedStatusAndClose_WhenSentWhole(_ c: CorpusCase) throws {
        try replay(c, on: Self.gateway, byteByByte: false)
    }

    /// The same verdicts hold when the request arrives one byte per write.
    @Test(arguments: byteSplitCorpus)
    func corpus_AnswersExpectedStatusAndClose_WhenSplitByteByByte(_ c: CorpusCase) throws {
        try replay(c, on: Self.gateway, byteByByte: true)
    }

    /// After the whole corpus the gateway still answers a plain request.
    @Test func gateway_StillAnswers_AfterCorpus() throws {
        let r = Self.gateway.healthz()
        #expect(r?.status == 200)
    }
}
