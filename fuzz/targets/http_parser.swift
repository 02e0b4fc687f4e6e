// libFuzzer target: HTTPRequestParser (head, Content-Length and chunked bodies,
// pipelining) fed the same input twice — whole, and in pseudo-random splits down
// to one byte — with a differential check: both feedings must yield the same
// requests and the same "ended in an error" verdict. Compiled into one module
// with Sources/HTTP1/{HTTPHeaders,HTTPMessages,HTTPRequestParser}.swift.

/// xorshift64*: split sizes derived from the input, so a crash reproduces.
struct SplitRNG {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state >> 12; state ^= state << 25; state ^= state >> 27
        return state &* 2685821657736338717
    }
}

struct Outcome: Equatable {
    var requests: [String] = []
    var failed = false
}

func describe(_ r: HTTPRequest) -> String {
    var s = "\(r.method) \(r.target) 1.\(r.versionMinor) ka=\(r.keepAlive) body=\(r.body.count)"
    for (n, v) in r.headers.storage { s += "|\(n)=\(v)" }
    return s
}

func feed(_ data: [UInt8], limits: HTTPLimits, splits: inout SplitRNG?) -> Outcome {
    var parser = HTTPRequestParser(limits: limits)
    var out = Outcome()
    var pos = 0
    while pos < data.count {
        var size = data.count - pos
        if var rng = splits {
            let pick = rng.next()
            size = Int(pick % 4 == 0 ? 1 : 1 + (pick >> 8) % 64)
            size = min(size, data.count - pos)
            splits = rng
        }
        var piece = Array(data[pos..<(pos + size)])
        pos += size
        // Hand the piece to the parser until it has consumed all of it.
        while !piece.isEmpty {
            switch parser.parse(piece) {
            case .needMore:
                piece = []
            case .request(let r, let consumed):
                precondition(consumed > 0 && consumed <= piece.count, "consumed out of range")
                precondition(r.body.count <= limits.bodyBytes, "body over the limit")
                precondition(r.headers.storage.count <= limits.headers, "too many headers accepted")
                out.requests.append(describe(r))
                piece.removeFirst(consumed)
            case .expectContinue(let consumed):
                precondition(consumed > 0 && consumed <= piece.count, "consumed out of range")
                piece.removeFirst(consumed)
            case .error(let e):
                precondition(e.status >= 400 && e.status <= 505)
                // A failed parser stays failed.
                if case .error = parser.parse([0x41]) {} else { preconditionFailure("parser recovered after an error") }
                out.failed = true
                return out
            }
        }
    }
    return out
}

@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ ptr: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count > 0 else { return 0 }
    let data = Array(UnsafeBufferPointer(start: ptr, count: count))
    // The first byte picks small or default limits (small limits reach the limit paths).
    let limits = data[0] & 1 == 0
        ? HTTPLimits(headerBytes: 256, headers: 8, bodyBytes: 300, requestLineBytes: 64)
        : HTTPLimits()
    let input = Array(data.dropFirst())
    var none: SplitRNG? = nil
    let whole = feed(input, limits: limits, splits: &none)
    var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
    for b in data.prefix(8) { seed = (seed ^ UInt64(b)) &* 0x100_0000_01B3 }
    var rng: SplitRNG? = SplitRNG(state: seed | 1)
    let split = feed(input, limits: limits, splits: &rng)
    if whole != split {
        print("whole: \(whole)\nsplit: \(split)")
        preconditionFailure("split feeding changed the outcome")
    }
    return 0
}
