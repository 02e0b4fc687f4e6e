// RouteTable.match over 50 routes (10 services × 5 route shapes: a literal
// collection, an item with a parameter under GET and PUT, an action with two
// parameters, and a literal stats path), loaded through RouteLoader as the
// gateway loads its routes directory.
import JSON
import MicroBench
import Routes

let opts = BenchOptions()

func add(_ files: inout [(name: String, data: [UInt8])], _ name: String, _ method: String, _ path: String) {
    let route = """
    {"name": "\(name)", "method": "\(method)", "path": "\(path)", "wait": "2s",
     "steps": [{"id": "a", "request": {"method": "GET", "url": "http://127.0.0.1:9/x"}, "timeout": "1s"}],
     "response": {"status": 200, "body": "{{steps.a.body}}"}}
    """
    files.append((name: "\(name).json", data: Array(route.utf8)))
}
var files: [(name: String, data: [UInt8])] = []
for i in 0..<10 {
    add(&files, "svc\(i)-list", "GET", "/api/v1/svc\(i)/items")
    add(&files, "svc\(i)-get", "GET", "/api/v1/svc\(i)/items/{id}")
    add(&files, "svc\(i)-put", "PUT", "/api/v1/svc\(i)/items/{id}")
    add(&files, "svc\(i)-action", "POST", "/api/v1/svc\(i)/items/{id}/actions/{action}")
    add(&files, "svc\(i)-stats", "GET", "/api/v1/svc\(i)/stats")
}
let table: RouteTable
do {
    table = try RouteLoader.load(files: files, environment: [:])
} catch {
    fatalError("routes: \(error)")
}
precondition(table.routes.count == 50, "expected 50 routes, got \(table.routes.count)")

func expect(_ method: String, _ path: String, _ want: String?) {
    switch table.match(method: method, path: path) {
    case .matched(let r, _): precondition(r.name == want, "\(method) \(path) → \(r.name), expected \(want ?? "no match")")
    default: precondition(want == nil, "\(method) \(path) did not match, expected \(want!)")
    }
}

let cases: [(String, String, String, String?)] = [
    ("literal-first", "GET", "/api/v1/svc0/items", "svc0-list"),
    ("param-1", "GET", "/api/v1/svc5/items/ord_7f3a9c21", "svc5-get"),
    ("params-2-last", "POST", "/api/v1/svc9/items/ord_7f3a9c21/actions/confirm", "svc9-action"),
    ("param-1+query", "PUT", "/api/v1/svc3/items/ord_7f3a9c21?expand=lines&v=2", "svc3-put"),
    ("percent-decoded", "GET", "/api/v1/svc4/items/ord%207f3a", "svc4-get"),
    ("not-found", "GET", "/api/v1/svc7/unknown", nil),
    ("method-not-allowed", "DELETE", "/api/v1/svc8/items/x", nil),
]
for (_, m, p, want) in cases { expect(m, p, want) }

for (label, method, path, _) in cases {
    bench("route-match/50-routes/\(label)", opts, note: "\(method) \(path)") { n in
        var sink = 0
        for _ in 0..<n {
            switch table.match(method: method, path: path) {
            case .matched(_, let params): sink &+= params.count
            case .methodNotAllowed(let allow): sink &+= allow.count
            case .invalidParameter(let name, _): sink &+= name.utf8.count
            case .notFound: sink &+= 1
            }
        }
        blackHole(sink)
    }
}
