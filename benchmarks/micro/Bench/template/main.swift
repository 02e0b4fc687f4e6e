// Composing a response from templates: the `fanout` route's response
// ({"a": "{{steps.a.body}}", "b": …, "c": …}, benchmarks/routes/fanout.json) and
// the `proxy` route's ("{{steps.a.body}}"), each step body being the upstream
// mock's 223-byte JSON object. Variants:
//   render+serialize        TemplateValue.render(ctx) builds a JSON tree, then .serialized
//   serialize               TemplateValue.serialize(ctx, into:) straight to bytes (resolve + serialize each ref)
//   serialize/passthrough   the same when the context has each body's bytes at hand
//                           (resolveSerialized: an upstream body already in canonical form)
//   parse-3-bodies+serialize  what a fan-out response costs from the raw upstream bytes:
//                           JSON.parse of three bodies, then serialize
import JSON
import MicroBench
import Routes
#if canImport(Glibc)
import Glibc
#endif

let opts = BenchOptions()
// --routes DIR, default benchmarks/routes found from this file's path
// (benchmarks/micro/Bench/template/main.swift).
let routesDir = opts.extra["routes"] ?? (#filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(4)
    .joined(separator: "/") + "/routes")
let upstreamBytes = Array(#"{"id":"ord_7f3a9c21","status":"ok","service":"upstream-mock","items":[{"sku":"SKU-1001","qty":3,"price":1999},{"sku":"SKU-1002","qty":1,"price":4999}],"currency":"EUR","region":"eu-west","updated_at":"2026-11-29T12:00:00Z"}"#.utf8)
let upstream = try! JSON.parse(upstreamBytes)
let env = ["BENCH_UPSTREAM_A": "http://127.0.0.1:1", "BENCH_UPSTREAM_B": "http://127.0.0.1:2", "BENCH_UPSTREAM_C": "http://127.0.0.1:3"]

func load(_ name: String) -> Route {
    let path = routesDir + "/\(name).json"
    var data: [UInt8] = []
    guard let f = fopen(path, "rb") else { fatalError("cannot open \(path)") }
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buf, 1, buf.count, f)
        if n <= 0 { break }
        data += buf[0..<n]
    }
    fclose(f)
    do { return try RouteLoader.parse(file: path, data: data, environment: env) } catch { fatalError("\(path): \(error)") }
}

struct Ctx: TemplateContext {
    let bodies: [JSON]
    let raw: [[UInt8]]?
    func resolve(_ ref: TemplateRef) -> JSON? {
        switch ref {
        case .stepBody(let i, let path): return bodies[i].lookup(path)
        case .stepStatus: return .int(200)
        default: return nil
        }
    }
    func resolveSerialized(_ ref: TemplateRef) -> [UInt8]? {
        guard let raw, case .stepBody(let i, let path) = ref, path.isEmpty else { return nil }
        return raw[i]
    }
}

for name in ["fanout", "proxy"] {
    let route = load(name)
    guard let tv = route.response?.body else { fatalError("\(name): no response body") }
    let n = route.steps.count
    let plain = Ctx(bodies: Array(repeating: upstream, count: n), raw: nil)
    let pass = Ctx(bodies: Array(repeating: upstream, count: n), raw: Array(repeating: upstreamBytes, count: n))
    // sanity: every variant yields the same bytes
    let a = try! tv.render(plain).serialized
    var b: [UInt8] = []; try! tv.serialize(plain, into: &b)
    var c: [UInt8] = []; try! tv.serialize(pass, into: &c)
    precondition(a == b && b == c, "\(name): variants differ")
    let size = "\(a.count) B out"

    bench("template/\(name)/render+serialize", opts, note: size) { k in
        var sink = 0
        for _ in 0..<k { sink &+= try! tv.render(plain).serialized.count }
        blackHole(sink)
    }
    bench("template/\(name)/serialize", opts, note: size) { k in
        var sink = 0
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        for _ in 0..<k {
            out.removeAll(keepingCapacity: true)
            try! tv.serialize(plain, into: &out)
            sink &+= out.count
        }
        blackHole(sink)
    }
    bench("template/\(name)/serialize/passthrough", opts, note: size) { k in
        var sink = 0
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        for _ in 0..<k {
            out.removeAll(keepingCapacity: true)
            try! tv.serialize(pass, into: &out)
            sink &+= out.count
        }
        blackHole(sink)
    }
    bench("template/\(name)/parse-\(n)-bodies+serialize", opts, note: size) { k in
        var sink = 0
        var out: [UInt8] = []
        out.reserveCapacity(1024)
        for _ in 0..<k {
            var bodies: [JSON] = []
            bodies.reserveCapacity(n)
            for _ in 0..<n { bodies.append(try! JSON.parse(upstreamBytes)) }
            out.removeAll(keepingCapacity: true)
            try! tv.serialize(Ctx(bodies: bodies, raw: nil), into: &out)
            sink &+= out.count
        }
        blackHole(sink)
    }
}
