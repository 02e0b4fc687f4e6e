import Crypto

/// W3C Trace Context (https://www.w3.org/TR/trace-context/) for one run.
///
/// A valid incoming `traceparent` is continued (same trace id and flags, its
/// `tracestate` passed through); a missing or malformed one is replaced by a
/// fresh trace id. Every upstream call gets the same trace id with a new parent
/// id of its own.
struct TraceContext: Sendable {
    /// 32 lowercase hex digits, never all zeros.
    let traceID: String
    /// 2 hex digits.
    let flags: String
    /// The caller's `tracestate`, passed through unchanged when its `traceparent` was valid.
    let traceState: String?

    /// Continues `traceparent` if valid, else starts a new trace.
    init(traceparent: String?, tracestate: String?, random: inout SpanIDGenerator) {
        if let tp = traceparent, let (t, f) = TraceContext.parse(tp) {
            traceID = t
            flags = f
            traceState = tracestate
        } else {
            traceID = random.traceIDHex()
            flags = "01"
            traceState = nil
        }
    }

    /// Parses `version-traceid-parentid-flags`; nil when malformed (W3C §3.2.2).
    static func parse(_ v: String) -> (String, String)? {
        let u = Array(v.utf8)
        // Version 00 is exactly 55 bytes; later versions may append fields after a '-'.
        guard u.count >= 55, u[2] == 0x2D, u[35] == 0x2D, u[52] == 0x2D else { return nil }
        if u.count > 55 && u[55] != 0x2D { return nil }
        func isHex(_ r: Range<Int>) -> Bool { u[r].allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) } }
        guard isHex(0..<2), isHex(3..<35), isHex(36..<52), isHex(53..<55) else { return nil }
        let version = String(decoding: u[0..<2], as: UTF8.self)
        if version == "ff" || (version == "00" && u.count != 55) { return nil }
        let trace = String(decoding: u[3..<35], as: UTF8.self)
        let parent = String(decoding: u[36..<52], as: UTF8.self)
        if trace == String(repeating: "0", count: 32) || parent == String(repeating: "0", count: 16) { return nil }
        return (trace, String(decoding: u[53..<55], as: UTF8.self))
    }

    /// Appends `traceparent` (`00-TRACE-PARENT-FLAGS`, a new parent id) and `tracestate`.
    func appendHeaders(to h: inout [(String, String)], random: inout SpanIDGenerator) {
        let parent = random.next()
        let tp = String(unsafeUninitializedCapacity: 55) { out in
            out[0] = 0x30; out[1] = 0x30; out[2] = 0x2D
            TraceContext.copyASCII(traceID, 32, into: out, at: 3)
            out[35] = 0x2D
            SpanIDGenerator.writeHex(parent == 0 ? 1 : parent, into: out, at: 36)
            out[52] = 0x2D
            TraceContext.copyASCII(flags, 2, into: out, at: 53)
            return 55
        }
        h.append(("traceparent", tp))
        if let s = traceState { h.append(("tracestate", s)) }
    }
}

extension TraceContext {
    /// Copies the first `count` bytes of `s` (validated hex: at least `count` ASCII
    /// bytes) to `out[at...]`, with one `memcpy` for a native string.
    @inline(__always)
    static func copyASCII(_ s: String, _ count: Int, into out: UnsafeMutableBufferPointer<UInt8>, at: Int) {
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { src in
            (out.baseAddress! + at).update(from: src.baseAddress!, count: min(count, src.count))
        }
        if done == nil {
            var i = at
            for b in s.utf8.prefix(count) { out[i] = b; i += 1 }
        }
    }
}

/// A fast, non-cryptographic generator for trace and span ids (SplitMix64,
/// seeded from OpenSSL). One per event loop; not thread-safe.
struct SpanIDGenerator {
    private var state: UInt64

    init() {
        let seed = Crypto.randomBytes(8)
        state = seed.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// 16 random bytes as 32 lowercase hex digits (two draws, each never zero): the
    /// same as `hex(8) + hex(8)`, without the intermediate strings.
    mutating func traceIDHex() -> String {
        let a = next(), b = next()
        return String(unsafeUninitializedCapacity: 32) { out in
            SpanIDGenerator.writeHex(a == 0 ? 1 : a, into: out, at: 0)
            SpanIDGenerator.writeHex(b == 0 ? 1 : b, into: out, at: 16)
            return 32
        }
    }

    /// `v` as 16 lowercase hex digits at `out[at..<at+16]`.
    static func writeHex(_ v: UInt64, into out: UnsafeMutableBufferPointer<UInt8>, at: Int) {
        var v = v
        var i = at + 15
        while i >= at {
            let d = UInt8(truncatingIfNeeded: v & 0xF)
            out[i] = d < 10 ? 0x30 + d : 0x57 + d
            v >>= 4
            i -= 1
        }
    }

    /// `bytes` (≤ 8) random bytes as lowercase hex, never all zeros.
    mutating func hex(_ bytes: Int) -> String {
        var v = next()
        if v == 0 { v = 1 }
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8](repeating: 0, count: bytes * 2)
        for i in 0..<(bytes * 2) {
            out[bytes * 2 - 1 - i] = digits[Int(v & 0xF)]
            v >>= 4
        }
        return String(decoding: out, as: UTF8.self)
    }
}
