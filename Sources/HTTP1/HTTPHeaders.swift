/// An ordered list of HTTP header fields, kept exactly as received: the order, the
/// spelling of each name and repeated fields are all preserved.
///
/// Look-ups compare names ASCII case-insensitively (RFC 9110 §5.1). A plain value
/// type: safe to send between threads.
public struct HTTPHeaders: Sendable, Sequence {
    /// One field: its name as written and its value with surrounding whitespace removed.
    public typealias Element = (name: String, value: String)

    @usableFromInline var storage: [Element]

    /// Creates an empty header list.
    public init() { storage = [] }

    /// Creates a header list from `(name, value)` pairs, in order.
    public init(_ pairs: [(String, String)]) {
        storage = pairs.map { (name: $0.0, value: $0.1) }
    }

    /// Appends a field (existing fields with the same name are kept).
    public mutating func add(name: String, value: String) {
        storage.append((name: name, value: value))
    }

    /// Removes every field named `name` (case-insensitive).
    public mutating func remove(name: String) {
        storage.removeAll { HTTPHeaders.nameEquals($0.name, name) }
    }

    /// Replaces every field named `name` by a single one with `value`, or appends it.
    public mutating func replaceOrAdd(name: String, value: String) {
        if let i = storage.firstIndex(where: { HTTPHeaders.nameEquals($0.name, name) }) {
            storage[i].value = value
            var j = i + 1
            while j < storage.count {
                if HTTPHeaders.nameEquals(storage[j].name, name) { storage.remove(at: j) } else { j += 1 }
            }
        } else {
            add(name: name, value: value)
        }
    }

    /// The value of the first field named `name` (case-insensitive), or nil.
    public subscript(name: String) -> String? {
        for i in storage.indices where HTTPHeaders.nameEquals(storage[i].name, name) { return storage[i].value }
        return nil
    }

    /// The values of every field named `name` (case-insensitive), in order.
    public func values(_ name: String) -> [String] {
        storage.compactMap { HTTPHeaders.nameEquals($0.name, name) ? $0.value : nil }
    }

    /// How many fields are named `name` (case-insensitive): more than one for a field
    /// that may appear once shows a request to refuse. Does not allocate.
    public func count(named name: String) -> Int {
        var n = 0
        for i in storage.indices where HTTPHeaders.nameEquals(storage[i].name, name) { n += 1 }
        return n
    }

    /// Whether a field named `name` is present (case-insensitive).
    public func contains(_ name: String) -> Bool { self[name] != nil }

    /// The number of fields (repeated names count once each).
    public var count: Int { storage.count }

    /// Whether there are no fields.
    public var isEmpty: Bool { storage.isEmpty }

    /// The fields as `(name, value)` pairs, in order.
    public var pairs: [(String, String)] { storage.map { ($0.name, $0.value) } }

    /// Iterates the fields in order.
    public func makeIterator() -> IndexingIterator<[Element]> { storage.makeIterator() }

    /// ASCII case-insensitive comparison of two field names: the lengths first (what
    /// most look-ups end on), then the bytes in place.
    @inlinable static func nameEquals(_ a: String, _ b: String) -> Bool {
        let au = a.utf8, bu = b.utf8
        guard au.count == bu.count else { return false }
        let same = { (x: UInt8, y: UInt8) in x == y || asciiLower(x) == asciiLower(y) }
        // In place for native strings; through the views for any other (a bridged one).
        let inPlace = au.withContiguousStorageIfAvailable { ap in
            bu.withContiguousStorageIfAvailable { bp in ap.elementsEqual(bp, by: same) }
        }
        return (inPlace ?? nil) ?? au.elementsEqual(bu, by: same)
    }
}

@inlinable @inline(__always) func asciiLower(_ c: UInt8) -> UInt8 {
    (c >= 0x41 && c <= 0x5A) ? c | 0x20 : c
}

extension HTTPHeaders: CustomStringConvertible {
    /// The fields as `[Name: value, …]`, for logs and tests.
    public var description: String {
        "[" + storage.map { "\($0.name): \($0.value)" }.joined(separator: ", ") + "]"
    }
}
