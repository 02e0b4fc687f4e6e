// A strict RFC 8259 parser over raw bytes: no Foundation, one pass, UTF-8 validated.

extension JSON {
    /// The deepest nesting of arrays and objects the parser accepts (512).
    public static let maxDepth = 512

    /// Parses one JSON text (RFC 8259, strict): any value at the top level, surrounded only
    /// by whitespace (space, tab, CR, LF).
    ///
    /// Rejected: trailing commas, comments, single quotes, leading zeros, `NaN`/`Infinity`,
    /// numbers that overflow `Double`, unescaped control characters in strings, invalid
    /// UTF-8, lone surrogate escapes, a byte-order mark, and nesting deeper than
    /// ``maxDepth``. An integer that does not fit in `Int64` becomes `.double`; `-0` is
    /// `.int(0)`. A repeated object key: the last value wins.
    ///
    /// - Throws: ``JSONError`` with the byte offset of the first problem.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(JSONError) -> JSON {
        var parser = JSONParser(bytes)
        defer { parser.releaseScratch() }
        return try parser.parseDocument()
    }

    /// Parses one JSON text from `bytes`; see ``parse(_:)-(UnsafeRawBufferPointer)``.
    ///
    /// - Throws: ``JSONError`` with the byte offset of the first problem.
    public static func parse(_ bytes: [UInt8]) throws(JSONError) -> JSON {
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONError) -> JSON in try JSON.parse(buffer) }
        }.get()
    }

    /// Parses one JSON text from `bytes`; offsets in errors count from `bytes.startIndex`.
    ///
    /// - Throws: ``JSONError`` with the byte offset of the first problem.
    public static func parse(_ bytes: ArraySlice<UInt8>) throws(JSONError) -> JSON {
        try bytes.withUnsafeBytes { buffer in
            Result { () throws(JSONError) -> JSON in try JSON.parse(buffer) }
        }.get()
    }

    /// Parses one JSON text from the UTF-8 of `text`.
    ///
    /// - Throws: ``JSONError`` with the byte offset (into `text.utf8`) of the first problem.
    public static func parse(_ text: String) throws(JSONError) -> JSON {
        var text = text
        return try text.withUTF8 { buffer in
            Result { () throws(JSONError) -> JSON in try JSON.parse(UnsafeRawBufferPointer(buffer)) }
        }.get()
    }
}

private enum ASCII {
    static let quote: UInt8 = 0x22, backslash: UInt8 = 0x5C, slash: UInt8 = 0x2F
    static let comma: UInt8 = 0x2C, colon: UInt8 = 0x3A
    static let openBracket: UInt8 = 0x5B, closeBracket: UInt8 = 0x5D
    static let openBrace: UInt8 = 0x7B, closeBrace: UInt8 = 0x7D
    static let minus: UInt8 = 0x2D, plus: UInt8 = 0x2B, dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30, nine: UInt8 = 0x39
    static let space: UInt8 = 0x20, tab: UInt8 = 0x09, lf: UInt8 = 0x0A, cr: UInt8 = 0x0D
}

/// Exact powers of ten representable in a `Double` (10^0 … 10^22).
private let exactPowersOfTen: [Double] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
]

struct JSONParser {
    let bytes: UnsafeRawBufferPointer
    let count: Int
    var pos = 0
    var depth = 0
    /// Members of the arrays and objects being parsed, shared across nesting levels so each
    /// finished container is copied once into an exactly sized array.
    var valueStack = ScratchStack<JSON>()
    var memberStack = ScratchStack<JSONObject.Member>()

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
        self.count = bytes.count
    }

    mutating func releaseScratch() {
        valueStack.release()
        memberStack.release()
    }

    // MARK: Helpers

    func fail(_ message: String, at offset: Int? = nil) -> JSONError {
        JSONError(offset: offset ?? pos, message: message)
    }

    func describeByte(at offset: Int) -> String {
        guard offset < count else { return "end of input" }
        let b = bytes[offset]
        if b >= 0x21 && b < 0x7F { return "'\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x" + String(b, radix: 16, uppercase: true)
    }

    func unexpected(_ expected: String) -> JSONError {
        if pos >= count { return fail("unexpected end of input, expected \(expected)") }
        return fail("unexpected \(describeByte(at: pos)), expected \(expected)")
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while pos < count {
            let b = bytes[pos]
            guard b == ASCII.space || b == ASCII.lf || b == ASCII.cr || b == ASCII.tab else { return }
            pos += 1
        }
    }

    // MARK: Values

    mutating func parseDocument() throws(JSONError) -> JSON {
        let value = try parseValue()
        skipWhitespace()
        if pos < count { throw fail("unexpected \(describeByte(at: pos)) after the JSON value") }
        return value
    }

    mutating func parseValue() throws(JSONError) -> JSON {
        skipWhitespace()
        guard pos < count else { throw fail("unexpected end of input, expected a value") }
        switch bytes[pos] {
        case ASCII.openBrace: return try parseObject()
        case ASCII.openBracket: return try parseArray()
        case ASCII.quote: return .string(try parseString())
        case ASCII.minus, ASCII.zero...ASCII.nine: return try parseNumber()
        case UInt8(ascii: "t"): try expectWord("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectWord("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectWord("null"); return .null
        default: throw unexpected("a value")
        }
    }

    mutating func expectWord(_ word: StaticString) throws(JSONError) {
        let start = pos
        let n = word.utf8CodeUnitCount
        let w = word.utf8Start
        for i in 0..<n {
            guard pos + i < count, bytes[pos + i] == w[i] else {
                throw fail("invalid literal, expected '\(word)'", at: start)
            }
        }
        pos += n
    }

    mutating func enter() throws(JSONError) {
        depth += 1
        if depth > JSON.maxDepth { throw fail("nesting deeper than \(JSON.maxDepth) levels") }
    }

    mutating func parseArray() throws(JSONError) -> JSON {
        try enter()
        pos += 1  // [
        skipWhitespace()
        if pos < count && bytes[pos] == ASCII.closeBracket {
            pos += 1
            depth -= 1
            return .array([])
        }
        let base = valueStack.count
        while true {
            valueStack.push(try parseValue())
            skipWhitespace()
            guard pos < count else { throw unexpected("',' or ']'") }
            let b = bytes[pos]
            pos += 1
            if b == ASCII.comma { continue }
            if b == ASCII.closeBracket { break }
            pos -= 1
            throw unexpected("',' or ']'")
        }
        let elements = valueStack.popArray(from: base)
        depth -= 1
        return .array(elements)
    }

    mutating func parseObject() throws(JSONError) -> JSON {
        try enter()
        pos += 1  // {
        skipWhitespace()
        if pos < count && bytes[pos] == ASCII.closeBrace {
            pos += 1
            depth -= 1
            return .object(JSONObject())
        }
        let base = memberStack.count
        var index: [String: Int]?  // key → member number, once the object grows large
        while true {
            skipWhitespace()
            guard pos < count, bytes[pos] == ASCII.quote else { throw unexpected("a string key") }
            let key = try parseString()
            skipWhitespace()
            guard pos < count, bytes[pos] == ASCII.colon else { throw unexpected("':' after object key") }
            pos += 1
            let value = try parseValue()
            // A repeated key: the last value wins, at the first position.
            let members = memberStack.count - base
            var existing: Int?
            if let index {
                existing = index[key]
            } else {
                let keyLength = key.utf8.count
                var i = base
                while i < memberStack.count {
                    let other = memberStack[i].key
                    if other.utf8.count == keyLength && other == key {
                        existing = i - base
                        break
                    }
                    i += 1
                }
            }
            if let existing {
                memberStack[base + existing].value = value
            } else {
                memberStack.push(JSONObject.Member(key: key, value: value))
                if index != nil {
                    index![key] = members
                } else if members + 1 > JSONObject.indexThreshold {
                    var built = [String: Int](minimumCapacity: 2 * (members + 1))
                    for i in base..<memberStack.count { built[memberStack[i].key] = i - base }
                    index = built
                }
            }
            skipWhitespace()
            guard pos < count else { throw unexpected("',' or '}'") }
            let b = bytes[pos]
            pos += 1
            if b == ASCII.comma { continue }
            if b == ASCII.closeBrace { break }
            pos -= 1
            throw unexpected("',' or '}'")
        }
        let object = JSONObject(uniqueMembers: memberStack.popArray(from: base), index: index)
        depth -= 1
        return .object(object)
    }

    // MARK: Strings

    /// Parses a string starting at the opening quote; leaves `pos` after the closing quote.
    mutating func parseString() throws(JSONError) -> String {
        let start = pos + 1
        var i = start
        while true {
            guard i < count else { throw fail("unterminated string", at: start - 1) }
            let b = bytes[i]
            if b == ASCII.quote { break }
            if b == ASCII.backslash { return try parseEscapedString(start: start, firstEscape: i) }
            if b < 0x20 { throw fail("unescaped control character in string", at: i) }
            if b < 0x80 {
                i += 1
            } else {
                i = try validateUTF8Sequence(at: i)
            }
        }
        pos = i + 1
        let slice = UnsafeRawBufferPointer(rebasing: bytes[start..<i])
        return String(decoding: slice, as: UTF8.self)
    }

    /// Validates one multi-byte UTF-8 sequence starting at `i` (RFC 3629); returns the index after it.
    func validateUTF8Sequence(at i: Int) throws(JSONError) -> Int {
        let b0 = bytes[i]
        var length: Int
        var lower: UInt8 = 0x80, upper: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: length = 2
        case 0xE0: length = 3; lower = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: length = 3
        case 0xED: length = 3; upper = 0x9F
        case 0xF0: length = 4; lower = 0x90
        case 0xF1...0xF3: length = 4
        case 0xF4: length = 4; upper = 0x8F
        default: throw fail("invalid UTF-8", at: i)
        }
        guard i + length <= count else { throw fail("invalid UTF-8", at: i) }
        let b1 = bytes[i + 1]
        guard b1 >= lower && b1 <= upper else { throw fail("invalid UTF-8", at: i) }
        var k = 2
        while k < length {
            let b = bytes[i + k]
            guard b >= 0x80 && b <= 0xBF else { throw fail("invalid UTF-8", at: i) }
            k += 1
        }
        return i + length
    }

    /// Slow path for strings containing escapes: decodes into a scratch buffer.
    mutating func parseEscapedString(start: Int, firstEscape: Int) throws(JSONError) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(firstEscape - start + 16)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<firstEscape]))
        var i = firstEscape
        while true {
            guard i < count else { throw fail("unterminated string", at: start - 1) }
            let b = bytes[i]
            if b == ASCII.quote { break }
            if b == ASCII.backslash {
                guard i + 1 < count else { throw fail("unterminated string", at: start - 1) }
                let e = bytes[i + 1]
                switch e {
                case ASCII.quote, ASCII.backslash, ASCII.slash: out.append(e)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4(at: i + 2)
                    var next = i + 6
                    if scalar >= 0xD800 && scalar <= 0xDBFF {
                        guard next + 1 < count, bytes[next] == ASCII.backslash, bytes[next + 1] == UInt8(ascii: "u")
                        else { throw fail("unpaired high surrogate escape", at: i) }
                        let low = try hex4(at: next + 2)
                        guard low >= 0xDC00 && low <= 0xDFFF else { throw fail("unpaired high surrogate escape", at: i) }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        next += 6
                    } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                        throw fail("unpaired low surrogate escape", at: i)
                    }
                    appendUTF8(scalar, to: &out)
                    i = next
                    continue
                default:
                    throw fail("invalid escape sequence", at: i)
                }
                i += 2
            } else if b < 0x20 {
                throw fail("unescaped control character in string", at: i)
            } else if b < 0x80 {
                out.append(b)
                i += 1
            } else {
                let end = try validateUTF8Sequence(at: i)
                out.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<end]))
                i = end
            }
        }
        pos = i + 1
        return String(decoding: out, as: UTF8.self)
    }

    func hex4(at i: Int) throws(JSONError) -> UInt32 {
        guard i + 4 <= count else { throw fail("invalid \\u escape", at: i - 2) }
        var value: UInt32 = 0
        for k in 0..<4 {
            let b = bytes[i + k]
            let digit: UInt8
            switch b {
            case 0x30...0x39: digit = b - 0x30
            case 0x41...0x46: digit = b - 0x41 + 10
            case 0x61...0x66: digit = b - 0x61 + 10
            default: throw fail("invalid \\u escape", at: i - 2)
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }

    func appendUTF8(_ scalar: UInt32, to out: inout [UInt8]) {
        switch scalar {
        case 0..<0x80:
            out.append(UInt8(scalar))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | (scalar >> 6)))
            out.append(UInt8(0x80 | (scalar & 0x3F)))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | (scalar >> 12)))
            out.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (scalar & 0x3F)))
        default:
            out.append(UInt8(0xF0 | (scalar >> 18)))
            out.append(UInt8(0x80 | ((scalar >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((scalar >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (scalar & 0x3F)))
        }
    }

    // MARK: Numbers

    mutating func parseNumber() throws(JSONError) -> JSON {
        let start = pos
        var negative = false
        if bytes[pos] == ASCII.minus {
            negative = true
            pos += 1
        }
        guard pos < count, bytes[pos] >= ASCII.zero, bytes[pos] <= ASCII.nine else {
            throw fail("invalid number: expected a digit", at: pos)
        }
        // Significant digits accumulated into `mantissa` (up to 19), the rest only counted.
        var mantissa: UInt64 = 0
        var significant = 0  // digits in mantissa, leading zeros excluded
        var dropped = 0  // integer digits that did not fit in mantissa
        var inexact = false
        if bytes[pos] == ASCII.zero {
            pos += 1
            if pos < count, bytes[pos] >= ASCII.zero, bytes[pos] <= ASCII.nine {
                throw fail("invalid number: leading zero", at: start)
            }
        } else {
            while pos < count {
                let b = bytes[pos]
                guard b >= ASCII.zero && b <= ASCII.nine else { break }
                if significant < 19 {
                    mantissa = mantissa &* 10 &+ UInt64(b - ASCII.zero)
                    significant += 1
                } else {
                    dropped += 1
                    inexact = true
                }
                pos += 1
            }
        }
        var isInteger = true
        var fractionDigits = 0  // fraction digits folded into mantissa
        if pos < count && bytes[pos] == ASCII.dot {
            isInteger = false
            pos += 1
            guard pos < count, bytes[pos] >= ASCII.zero, bytes[pos] <= ASCII.nine else {
                throw fail("invalid number: expected a digit after '.'", at: pos)
            }
            while pos < count {
                let b = bytes[pos]
                guard b >= ASCII.zero && b <= ASCII.nine else { break }
                if significant < 19 {
                    if !(mantissa == 0 && b == ASCII.zero) { significant += 1 }
                    mantissa = mantissa &* 10 &+ UInt64(b - ASCII.zero)
                    fractionDigits += 1
                } else {
                    inexact = true  // more than 19 significant digits: slow path
                }
                pos += 1
            }
        }
        var exponent = 0
        if pos < count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
            isInteger = false
            pos += 1
            var expNegative = false
            if pos < count && (bytes[pos] == ASCII.plus || bytes[pos] == ASCII.minus) {
                expNegative = bytes[pos] == ASCII.minus
                pos += 1
            }
            guard pos < count, bytes[pos] >= ASCII.zero, bytes[pos] <= ASCII.nine else {
                throw fail("invalid number: expected a digit in the exponent", at: pos)
            }
            while pos < count {
                let b = bytes[pos]
                guard b >= ASCII.zero && b <= ASCII.nine else { break }
                if exponent < 100_000 { exponent = exponent * 10 + Int(b - ASCII.zero) }
                pos += 1
            }
            if expNegative { exponent = -exponent }
        }

        if isInteger && !inexact {
            if negative {
                if mantissa <= UInt64(Int64.max) { return .int(-Int64(mantissa)) }
                if mantissa == UInt64(Int64.max) + 1 { return .int(Int64.min) }
            } else if mantissa <= UInt64(Int64.max) {
                return .int(Int64(mantissa))
            }
        }
        // Clinger's fast path: exact when the mantissa and the power of ten are both exact.
        if !inexact && mantissa <= (1 << 53) {
            let e10 = exponent - fractionDigits + dropped
            if e10 >= -22 && e10 <= 22 {
                var value = Double(mantissa)
                value = e10 >= 0 ? value * exactPowersOfTen[e10] : value / exactPowersOfTen[-e10]
                return .double(negative ? -value : value)
            }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else {
            throw fail("number out of range", at: start)
        }
        return .double(value)
    }
}

/// A growable stack of values being parsed, shared by all nesting levels. Finished
/// containers move their elements out into an exactly sized array (no retain/release
/// pairs, no per-container growth). Call ``release()`` when done.
struct ScratchStack<Element> {
    private var base: UnsafeMutablePointer<Element>?
    private(set) var count = 0
    private var capacity = 0

    mutating func push(_ element: Element) {
        if count == capacity { grow() }
        (base! + count).initialize(to: element)
        count += 1
    }

    private mutating func grow() {
        let newCapacity = max(16, capacity * 2)
        let storage = UnsafeMutablePointer<Element>.allocate(capacity: newCapacity)
        if let base {
            storage.moveInitialize(from: base, count: count)
            base.deallocate()
        }
        base = storage
        capacity = newCapacity
    }

    subscript(i: Int) -> Element {
        get { base![i] }
        nonmutating _modify { yield &base![i] }
    }

    /// Moves the elements from `start` to the top into a new array and pops them.
    mutating func popArray(from start: Int) -> [Element] {
        let n = count - start
        guard n > 0, let base else { return [] }
        let result = [Element](unsafeUninitializedCapacity: n) { buffer, initialized in
            buffer.baseAddress!.moveInitialize(from: base + start, count: n)
            initialized = n
        }
        count = start
        return result
    }

    /// Destroys what is left (after an error) and frees the storage.
    mutating func release() {
        if let base {
            base.deinitialize(count: count)
            base.deallocate()
        }
        base = nil
        count = 0
        capacity = 0
    }
}
