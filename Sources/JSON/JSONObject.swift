/// A JSON object: string keys to ``JSON`` values, in insertion order.
///
/// Keys are unique: setting an existing key replaces its value in place (it keeps its
/// position); the parser and ``init(_:)`` apply the same rule, so a repeated key keeps its
/// first position and its last value. Lookup is a linear scan while the object is small
/// and a hash index once it has more than ``indexThreshold`` members, so large upstream
/// bodies never make lookups or parsing quadratic.
public struct JSONObject: Sendable {
    /// The member count above which a hash index is kept (16).
    public static let indexThreshold = 16

    @usableFromInline var _keys: [String]
    @usableFromInline var _values: [JSON]
    /// Key → position; present only when `count > indexThreshold`.
    @usableFromInline var _index: [String: Int]?

    /// An empty object.
    public init() {
        _keys = []
        _values = []
        _index = nil
    }

    /// An object with `pairs` in order; for a repeated key the last value wins, at the
    /// position where the key first appeared.
    public init(_ pairs: [(String, JSON)]) {
        self.init()
        _keys.reserveCapacity(pairs.count)
        _values.reserveCapacity(pairs.count)
        for (key, value) in pairs { self[key] = value }
    }

    /// The number of members.
    public var count: Int { _keys.count }

    /// Whether the object has no members.
    public var isEmpty: Bool { _keys.isEmpty }

    /// The keys, in order.
    public var keys: [String] { _keys }

    /// The values, in key order.
    public var values: [JSON] { _values }

    /// The position of `key`, or `nil`.
    @inlinable
    func position(of key: String) -> Int? {
        if let index = _index { return index[key] }
        return _keys.firstIndex(of: key)
    }

    /// The value for `key` (`nil` when absent). Setting `nil` removes the member; setting a
    /// value replaces an existing member in place or appends a new one.
    public subscript(key: String) -> JSON? {
        get {
            guard let i = position(of: key) else { return nil }
            return _values[i]
        }
        set {
            if let i = position(of: key) {
                if let newValue {
                    _values[i] = newValue
                } else {
                    removeMember(at: i)
                }
            } else if let newValue {
                append(key: key, value: newValue)
            }
        }
    }

    /// Removes the member named `key` and returns its value, or `nil` when absent.
    @discardableResult
    public mutating func removeValue(forKey key: String) -> JSON? {
        guard let i = position(of: key) else { return nil }
        let old = _values[i]
        removeMember(at: i)
        return old
    }

    /// Appends a member whose key is known to be new.
    mutating func append(key: String, value: JSON) {
        _keys.append(key)
        _values.append(value)
        if _index != nil {
            _index![key] = _keys.count - 1
        } else if _keys.count > JSONObject.indexThreshold {
            rebuildIndex()
        }
    }

    private mutating func removeMember(at i: Int) {
        _keys.remove(at: i)
        _values.remove(at: i)
        if _keys.count > JSONObject.indexThreshold { rebuildIndex() } else { _index = nil }
    }

    private mutating func rebuildIndex() {
        var index = [String: Int](minimumCapacity: _keys.count)
        for (i, key) in _keys.enumerated() { index[key] = i }
        _index = index
    }
}

extension JSONObject: Equatable {
    /// Two objects are equal when they have the same keys with equal values, in any order.
    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.count == rhs.count else { return false }
        if lhs._keys == rhs._keys { return lhs._values == rhs._values }
        for (i, key) in lhs._keys.enumerated() {
            guard let other = rhs[key], other == lhs._values[i] else { return false }
        }
        return true
    }
}

extension JSONObject: Sequence {
    /// Iterates `(key, value)` members in order.
    public struct Iterator: IteratorProtocol {
        let object: JSONObject
        var position = 0

        /// The next member, or `nil` at the end.
        public mutating func next() -> (key: String, value: JSON)? {
            guard position < object._keys.count else { return nil }
            defer { position += 1 }
            return (object._keys[position], object._values[position])
        }
    }

    /// An iterator over the members in order.
    public func makeIterator() -> Iterator { Iterator(object: self) }

    /// The member count (lets `Array(object)` allocate once).
    public var underestimatedCount: Int { _keys.count }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    /// An object with the literal's members in the order written.
    public init(dictionaryLiteral elements: (String, JSON)...) { self.init(elements) }
}

extension JSONObject: CustomStringConvertible {
    /// The compact JSON text of the object.
    public var description: String { JSON.object(self).text }
}
