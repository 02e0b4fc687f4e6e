// Compact RFC 8259 serialization straight into a byte buffer.

extension JSON {
    /// Appends the compact JSON text of this value to `out` (no whitespace).
    ///
    /// Strings escape `"`, `\` and control characters (`\n`, `\r`, `\t`, `\b`, `\f`, else
    /// `\u00XX`); other characters are written as UTF-8. `.int` is written as an integer,
    /// `.double` as the shortest text that reads back to the same `Double` (e.g. `0.1`,
    /// `5.0`, `1e-05`); NaN and infinities are written as `null`. Object members keep their order.
    public func serialize(into out: inout [UInt8]) {
        switch self {
        case .null: appendStatic("null", to: &out)
        case .bool(let b): appendStatic(b ? "true" : "false", to: &out)
        case .int(let i): JSON.appendInteger(i, to: &out)
        case .double(let d): JSON.appendDouble(d, to: &out)
        case .string(let s): JSON.appendQuoted(s, to: &out)
        case .array(let elements):
            out.append(0x5B)
            var first = true
            for element in elements {
                if !first { out.append(0x2C) }
                first = false
                element.serialize(into: &out)
            }
            out.append(0x5D)
        case .object(let object):
            out.append(0x7B)
            var first = true
            for member in object.members {
                if !first { out.append(0x2C) }
                first = false
                JSON.appendQuoted(member.key, to: &out)
                out.append(0x3A)
                member.value.serialize(into: &out)
            }
            out.append(0x7D)
        }
    }

    /// The compact JSON text as UTF-8 bytes; see ``serialize(into:)``.
    public var serialized: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(64)
        serialize(into: &out)
        return out
    }

    /// The compact JSON text; see ``serialize(into:)``.
    public var text: String { String(decoding: serialized, as: UTF8.self) }

    /// Appends `value` in decimal (`-42`).
    public static func appendInteger(_ value: Int64, to out: inout [UInt8]) {
        var magnitude = value.magnitude
        if value < 0 { out.append(0x2D) }
        if magnitude < 10 {
            out.append(0x30 + UInt8(magnitude))
            return
        }
        var digits = 0
        var probe = magnitude
        while probe > 0 {
            digits += 1
            probe /= 10
        }
        let start = out.count
        out.append(contentsOf: repeatElement(0x30, count: digits))
        out.withUnsafeMutableBufferPointer { buffer in
            var i = start + digits - 1
            while magnitude > 0 {
                buffer[i] = 0x30 + UInt8(magnitude % 10)
                magnitude /= 10
                i -= 1
            }
        }
    }

    /// Appends `value` as the shortest round-trip text, or `null` when not finite.
    public static func appendDouble(_ value: Double, to out: inout [UInt8]) {
        guard value.isFinite else {
            appendStatic("null", to: &out)
            return
        }
        // Swift's description is the shortest round-trip form and is valid JSON for finite
        // values ("5.0", "0.1", "1e-05", "1.5e+20", "-0.0").
        out.append(contentsOf: value.description.utf8)
    }

    /// Appends `string` quoted and escaped per RFC 8259.
    public static func appendQuoted(_ string: String, to out: inout [UInt8]) {
        out.append(0x22)
        let done: Void? = string.utf8.withContiguousStorageIfAvailable { appendEscaped($0, to: &out) }
        if done == nil {
            var copy = string
            copy.withUTF8 { appendEscaped($0, to: &out) }
        }
        out.append(0x22)
    }

    /// Appends the string whose UTF-8 bytes are `utf8` quoted and escaped per RFC 8259:
    /// the same bytes as ``appendQuoted(_:to:)-(String,_)`` given that string (the bytes
    /// must be valid UTF-8).
    public static func appendQuoted(utf8: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(0x22)
        appendEscaped(utf8, to: &out)
        out.append(0x22)
    }

    static func appendEscaped(_ bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        var runStart = 0
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b >= 0x20 && b != 0x22 && b != 0x5C {
                i += 1
                continue
            }
            if runStart < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
            out.append(0x5C)
            switch b {
            case 0x22: out.append(0x22)
            case 0x5C: out.append(0x5C)
            case 0x0A: out.append(UInt8(ascii: "n"))
            case 0x0D: out.append(UInt8(ascii: "r"))
            case 0x09: out.append(UInt8(ascii: "t"))
            case 0x08: out.append(UInt8(ascii: "b"))
            case 0x0C: out.append(UInt8(ascii: "f"))
            default:
                let hex: StaticString = "0123456789abcdef"
                out.append(UInt8(ascii: "u"))
                out.append(0x30)
                out.append(0x30)
                out.append(hex.utf8Start[Int(b >> 4)])
                out.append(hex.utf8Start[Int(b & 0x0F)])
            }
            i += 1
            runStart = i
        }
        if runStart < n { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<n])) }
    }
}

@inline(__always)
private func appendStatic(_ text: StaticString, to out: inout [UInt8]) {
    out.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
}
