// libFuzzer target: CallbackURL(parsing:), IPAddress(_:), CIDR(parsing:) and the
// address classification. A parsed address must print and parse back to itself.
// Compiled into one module with Sources/Jobs/{CallbackTarget,IPAddress}.swift.

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    let text = String(decoding: data, as: UTF8.self)
    if let url = try? CallbackURL(parsing: text) {
        precondition(!url.host.isEmpty, "empty host accepted")
        precondition(url.scheme == "http" || url.scheme == "https", "scheme \(url.scheme) accepted")
        if let ip = url.literal { _ = ip.classification }
        let policy = AddressPolicy()
        if let ip = url.literal { _ = try? policy.check(url, addresses: [ip]) }
    }
    if let ip = IPAddress(text) {
        _ = ip.classification
        _ = ip.embeddedIPv4?.classification
        guard let again = IPAddress(ip.description) else {
            preconditionFailure("\(text) parsed, but its description \(ip.description) does not")
        }
        precondition(again == ip, "\(text) → \(ip.description) → different address")
    }
    if let cidr = try? CIDR(parsing: text) {
        precondition(cidr.contains(cidr.network), "a CIDR must contain its network address")
        precondition((try? CIDR(parsing: cidr.description)) == cidr, "CIDR description does not round-trip")
    }
    return 0
}
