// libFuzzer target: the JSON parser. Whatever it accepts must serialize and parse
// back to an equal value. Compiled into one module with Sources/JSON/*.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    guard let value = try? JSON.parse(data) else { return 0 }
    let text = value.serialized
    guard let again = try? JSON.parse(text) else {
        preconditionFailure("serialized output does not parse: \(String(decoding: text, as: UTF8.self))")
    }
    precondition(again == value, "round trip changed the value: \(String(decoding: text, as: UTF8.self))")
    return 0
}
