// JSON: the value type shared by route files, request/response bodies and templates.
//
// Parsing and serialization work on bytes (`[UInt8]` / `UnsafeRawBufferPointer`) and never
// touch Foundation: they sit on the per-request path.

/// A JSON value (RFC 8259).
///
/// Numbers keep their written kind: an integer literal that fits in `Int64` parses as
/// `.int`, anything with a fraction or exponent (or an integer too large for `Int64`) as
/// `.double`. Equality is by value, so `.int(1) == .double(1.0)`; objects compare equal when
/// they hold the same keys with equal values, in any order.
public enum JSON: Sendable {
    /// `null`.
    case null
    /// `true` or `false`.
    case bool(Bool)
    /// An integer literal that fits in `Int64` (no fraction, no exponent).
    case int(Int64)
    /// Any other number. Never NaN or infinite when produced by the parser.
    case double(Double)
    /// A string (always valid Unicode; lone surrogate escapes are rejected by the parser).
    case string(String)
    /// An array.
    case array([JSON])
    /// An object; member order is kept.
    case object(JSONObject)
}

// MARK: - Equality

extension JSON: Equatable {
    /// Value equality: numbers compare by value across `.int` and `.double`
    /// (`.int(1) == .double(1.0)`), objects ignore member order, and NaN is never equal.
    public static func == (lhs: JSON, rhs: JSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.double(a), .double(b)): return a == b
        case let (.int(a), .double(b)), let (.double(b), .int(a)):
            guard let exact = Int64(exactly: b) else { return false }
            return exact == a
        case let (.string(a), .string(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.object(a), .object(b)): return a == b
        default: return false
        }
    }
}

// MARK: - Access

extension JSON {
    /// The member named `key` when this is an object; `nil` when absent or not an object.
    public subscript(key: String) -> JSON? {
        guard case .object(let object) = self else { return nil }
        return object[key]
    }

    /// The element at `index` when this is an array and the index is in range; else `nil`.
    public subscript(index: Int) -> JSON? {
        guard case .array(let array) = self, array.indices.contains(index) else { return nil }
        return array[index]
    }

    /// Follows `path` from this value: each component is an object key, or, when the value
    /// at that point is an array, an index written in decimal (`"0"`, `"12"`).
    ///
    /// An empty path returns `self`. Returns `nil` as soon as a component is missing, an
    /// index is out of range or not a plain decimal number, or a scalar is reached early.
    public func lookup(_ path: [String]) -> JSON? {
        lookup(path[...])
    }

    /// Follows `path` from this value; see ``lookup(_:)-([String])``.
    public func lookup(_ path: ArraySlice<String>) -> JSON? {
        var current = self
        for component in path {
            switch current {
            case .object(let object):
                guard let next = object[component] else { return nil }
                current = next
            case .array(let array):
                guard let index = JSON.arrayIndex(component), index < array.count else { return nil }
                current = array[index]
            default:
                return nil
            }
        }
        return current
    }

    /// Parses a canonical non-negative decimal index ("0", "17"; not "01", "+1", "-1").
    static func arrayIndex(_ text: String) -> Int? {
        var value = 0
        var digits = 0
        for byte in text.utf8 {
            guard byte >= 0x30, byte <= 0x39 else { return nil }
            if digits == 1 && value == 0 { return nil }  // leading zero
            let (m, o1) = value.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int(byte - 0x30))
            if o1 || o2 { return nil }
            value = s
            digits += 1
        }
        return digits == 0 ? nil : value
    }

    /// The string when this is `.string`; else `nil`.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The integer when this is `.int`, or a `.double` holding an exact `Int64` value; else `nil`.
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d): return Int64(exactly: d)
        default: return nil
        }
    }

    /// The number as a `Double` when this is `.double` or `.int` (possibly rounded); else `nil`.
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }

    /// The Boolean when this is `.bool`; else `nil`.
    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// The elements when this is `.array`; else `nil`.
    public var arrayValue: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// The object when this is `.object`; else `nil`.
    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// Whether this is `.null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}

// MARK: - Literals

extension JSON: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral,
    ExpressibleByDictionaryLiteral
{
    /// `nil` is `.null`.
    public init(nilLiteral: ()) { self = .null }
    /// A Boolean literal is `.bool`.
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    /// An integer literal is `.int`.
    public init(integerLiteral value: Int64) { self = .int(value) }
    /// A floating-point literal is `.double`.
    public init(floatLiteral value: Double) { self = .double(value) }
    /// A string literal is `.string`.
    public init(stringLiteral value: String) { self = .string(value) }
    /// An array literal is `.array`.
    public init(arrayLiteral elements: JSON...) { self = .array(elements) }
    /// A dictionary literal is `.object`, in the order written (a repeated key: last value wins).
    public init(dictionaryLiteral elements: (String, JSON)...) { self = .object(JSONObject(elements)) }
}

extension JSON: CustomStringConvertible {
    /// The compact JSON text (same as ``text``).
    public var description: String { text }
}
