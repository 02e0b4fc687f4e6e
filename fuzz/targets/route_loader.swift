// libFuzzer target: RouteLoader.parse(file:data:environment:) on arbitrary bytes.
// It must return a route or throw RouteLoadError, never crash or hang.
// Compiled with Sources/Routes/*.swift against a separately built JSON module.
import JSON

private let environment = ["BASE": "http://127.0.0.1:9", "TOKEN": "s3cret", "EMPTY": ""]

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    if let route = try? RouteLoader.parse(file: "fuzz.json", data: data, environment: environment) {
        precondition(!route.steps.isEmpty || true)
        _ = try? RouteLoader.load(files: [(name: "a.json", data: data)], environment: environment)
    }
    return 0
}
