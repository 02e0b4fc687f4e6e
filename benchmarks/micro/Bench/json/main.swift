// JSON parse and serialize of the upstream mock's 223-byte object (the body every
// benchmark step receives), and of a small 202 body.
import JSON
import MicroBench

let opts = BenchOptions()
let bytes = Array(#"{"id":"ord_7f3a9c21","status":"ok","service":"upstream-mock","items":[{"sku":"SKU-1001","qty":3,"price":1999},{"sku":"SKU-1002","qty":1,"price":4999}],"currency":"EUR","region":"eu-west","updated_at":"2026-11-29T12:00:00Z"}"#.utf8)
let value = try! JSON.parse(bytes)
precondition(value.serialized == bytes, "the sample does not round-trip byte for byte")
let note = "\(bytes.count) B"

bench("json/parse-223B", opts, note: note) { n in
    var sink = 0
    for _ in 0..<n {
        if case .object(let o) = try! JSON.parse(bytes) { sink &+= o.count }
    }
    blackHole(sink)
}
bench("json/serialize-223B", opts, note: note) { n in
    var sink = 0
    for _ in 0..<n { sink &+= value.serialized.count }
    blackHole(sink)
}
bench("json/serialize-223B-into-reused-buffer", opts, note: note) { n in
    var sink = 0
    var out: [UInt8] = []
    out.reserveCapacity(512)
    for _ in 0..<n {
        out.removeAll(keepingCapacity: true)
        value.serialize(into: &out)
        sink &+= out.count
    }
    blackHole(sink)
}
bench("json/parse+serialize-223B", opts, note: note) { n in
    var sink = 0
    for _ in 0..<n { sink &+= try! JSON.parse(bytes).serialized.count }
    blackHole(sink)
}
bench("json/isCanonicalCompact-223B", opts, note: note) { n in
    var sink = 0
    for _ in 0..<n { if JSON.isCanonicalCompact(bytes) { sink &+= 1 } }
    blackHole(sink)
}
bench("json/compose-202-body", opts, note: "job_id, status, status_url") { n in
    var sink = 0
    for i in 0..<n {
        var o = JSONObject()
        o["job_id"] = .string("job_01HZX3K9Q8W7E6R5T4Y3U2I1O0")
        o["status"] = .string("running")
        o["status_url"] = .string("/jobs/job_01HZX3K9Q8W7E6R5T4Y3U2I1O0")
        sink &+= JSON.object(o).serialized.count &+ i
    }
    blackHole(sink)
}
