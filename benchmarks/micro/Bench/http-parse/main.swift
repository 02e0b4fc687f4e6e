// HTTPRequestParser on a typical request: a POST with 7 header fields and a
// 223-byte JSON body, and the bare GET that wrk sends (Host only). One parser
// is reused, as a keep-alive connection does; each op parses one whole request
// from one buffer (the common case: the request arrives in one read).
import HTTP1
import MicroBench

let opts = BenchOptions()
let body = #"{"id":"ord_7f3a9c21","status":"ok","service":"upstream-mock","items":[{"sku":"SKU-1001","qty":3,"price":1999},{"sku":"SKU-1002","qty":1,"price":4999}],"currency":"EUR","region":"eu-west","updated_at":"2026-11-29T12:00:00Z"}"#
let post = Array(("POST /v1/orders/ord_7f3a9c21/confirm?source=web HTTP/1.1\r\n" +
    "Host: api.example.com\r\n" +
    "User-Agent: checkout-service/4.2 (+https://example.com)\r\n" +
    "Accept: application/json\r\n" +
    "Content-Type: application/json\r\n" +
    "Content-Length: \(body.utf8.count)\r\n" +
    "Authorization: Bearer sk_live_4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c\r\n" +
    "Idempotency-Key: 7b0c3e52-0f7d-4a5e-9a43-1f0c7e0d2b66\r\n" +
    "\r\n" + body).utf8)
let get = Array("GET /proxy HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".utf8)

func check(_ bytes: [UInt8]) {
    var p = HTTPRequestParser()
    switch p.parse(bytes) {
    case .request(let r, let consumed):
        precondition(consumed == bytes.count, "consumed \(consumed) of \(bytes.count)")
        blackHole(r)
    default:
        fatalError("the sample request does not parse in one call")
    }
}
check(post)
check(get)

func run(_ name: String, _ bytes: [UInt8], lookups: Bool) {
    var parser = HTTPRequestParser()
    bench(name, opts, note: "\(bytes.count) B") { n in
        bytes.withUnsafeBytes { buf in
            var sink = 0
            for _ in 0..<n {
                if case .request(let r, let consumed) = parser.parse(buf) {
                    sink &+= consumed
                    if lookups {
                        // what the gateway reads of every request
                        sink &+= r.headers["content-type"]?.utf8.count ?? 0
                        sink &+= r.headers["idempotency-key"]?.utf8.count ?? 0
                        sink &+= r.headers["callback-url"]?.utf8.count ?? 0
                        sink &+= r.headers["prefer"]?.utf8.count ?? 0
                    }
                }
            }
            blackHole(sink)
        }
    }
}

run("http-parse/post-7-headers+223B-body", post, lookups: false)
run("http-parse/post-7-headers+4-lookups", post, lookups: true)
run("http-parse/get-wrk", get, lookups: false)
