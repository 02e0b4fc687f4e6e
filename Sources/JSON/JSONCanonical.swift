#if canImport(Glibc)
import Glibc
#endif

// A cheap test for "these bytes are already exactly what parse + serialize would
// produce", so a gateway can pass an upstream JSON body through without building
// and re-serializing the tree. Conservative: anything unusual answers false, and
// the caller then parses and serializes as usual.

extension JSON {
    /// Whether `bytes` is one JSON value that `serialize(parse(bytes))` reproduces
    /// byte for byte: no whitespace; ASCII strings whose only escapes are the ones the
    /// serializer writes (`\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`); integers only (at
    /// most 18 digits, no `-0`); at most 64 levels; objects of at most 16 members with
    /// no repeated key. False for anything else, including valid JSON that would
    /// serialize differently.
    public static func isCanonicalCompact(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBufferPointer { isCanonicalCompact($0) }
    }

    /// See ``isCanonicalCompact(_:)-([UInt8])``.
    public static func isCanonicalCompact(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        var scanner = CanonicalScanner(b: b)
        guard scanner.value(depth: 0) else { return false }
        return scanner.pos == b.count
    }
}

private struct CanonicalScanner {
    let b: UnsafeBufferPointer<UInt8>
    var pos = 0

    init(b: UnsafeBufferPointer<UInt8>) { self.b = b }

    mutating func value(depth: Int) -> Bool {
        guard pos < b.count, depth <= 64 else { return false }
        switch b[pos] {
        case 0x7B: return object(depth: depth + 1)
        case 0x5B: return array(depth: depth + 1)
        case 0x22: return string()
        case 0x74: return word("true")
        case 0x66: return word("false")
        case 0x6E: return word("null")
        case 0x2D, 0x30...0x39: return integer()
        default: return false
        }
    }

    mutating func word(_ w: StaticString) -> Bool {
        let n = w.utf8CodeUnitCount
        guard b.count - pos >= n else { return false }
        for k in 0..<n where b[pos + k] != w.utf8Start[k] { return false }
        pos += n
        return true
    }

    mutating func integer() -> Bool {
        let start = pos
        if b[pos] == 0x2D { pos += 1 }
        let digitsStart = pos
        while pos < b.count, b[pos] >= 0x30, b[pos] <= 0x39 { pos += 1 }
        let digits = pos - digitsStart
        guard digits >= 1, digits <= 18 else { return false }
        if digits > 1 && b[digitsStart] == 0x30 { return false }        // leading zero
        if b[start] == 0x2D && digits == 1 && b[digitsStart] == 0x30 { return false }  // -0
        if pos < b.count, b[pos] == 0x2E || b[pos] == 0x65 || b[pos] == 0x45 { return false }
        return true
    }

    /// A string starting at `pos` (the opening quote); on success `pos` is past the closing quote.
    mutating func string() -> Bool {
        // A local index and unchecked reads (`i < end` guards each): the loop runs
        // once per byte of every string in a passed-through body.
        guard let base = b.baseAddress else { return false }
        let end = b.count
        var i = pos + 1
        while i < end {
            let c = base[i]
            if c == 0x22 { pos = i + 1; return true }
            if c == 0x5C {
                guard i + 1 < end else { return false }
                switch base[i + 1] {
                case 0x22, 0x5C, 0x6E, 0x72, 0x74, 0x62, 0x66: i += 2
                default: return false
                }
                continue
            }
            if c < 0x20 || c >= 0x7F { return false }
            i += 1
        }
        return false
    }

    mutating func array(depth: Int) -> Bool {
        pos += 1
        if pos < b.count, b[pos] == 0x5D { pos += 1; return true }
        while true {
            guard value(depth: depth) else { return false }
            guard pos < b.count else { return false }
            if b[pos] == 0x2C { pos += 1; continue }
            if b[pos] == 0x5D { pos += 1; return true }
            return false
        }
    }

    mutating func object(depth: Int) -> Bool {
        pos += 1
        if pos < b.count, b[pos] == 0x7D { pos += 1; return true }
        // Key ranges (without quotes), to refuse a repeated key.
        var keys: (Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int, Int) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var ends = keys
        var n = 0
        while true {
            guard pos < b.count, b[pos] == 0x22, n < 16 else { return false }
            let ks = pos + 1
            guard string() else { return false }
            let ke = pos - 1
            let len = ke - ks
            let found: Bool = withUnsafeBytes(of: &keys) { kp in
                withUnsafeBytes(of: &ends) { ep in
                    let starts = kp.bindMemory(to: Int.self), stops = ep.bindMemory(to: Int.self)
                    for k in 0..<n where stops[k] - starts[k] == len {
                        if len == 0 || memcmp(b.baseAddress! + starts[k], b.baseAddress! + ks, len) == 0 { return true }
                    }
                    return false
                }
            }
            if found { return false }
            withUnsafeMutableBytes(of: &keys) { $0.bindMemory(to: Int.self)[n] = ks }
            withUnsafeMutableBytes(of: &ends) { $0.bindMemory(to: Int.self)[n] = ke }
            n += 1
            guard pos < b.count, b[pos] == 0x3A else { return false }
            pos += 1
            guard value(depth: depth) else { return false }
            guard pos < b.count else { return false }
            if b[pos] == 0x2C { pos += 1; continue }
            if b[pos] == 0x7D { pos += 1; return true }
            return false
        }
    }
}
