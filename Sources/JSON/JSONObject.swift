/// A JSON object: string keys to ``JSON`` values, in insertion order.
///
/// Keys are unique: setting an existing key replaces its value in place (it keeps its
/// position); the parser and ``init(_:)`` apply the same rule, so a repeated key keeps its
/// first position and its last value. Members live in one array (one allocation per
/// object); lookup is a linear scan while the object is small and a hash index once it has
/// more than ``indexThreshold`` members, so large upstream bodies never make lookups or
/// parsing quadratic.
public struct JSONObject: Sendable {
    /// The member count above which a hash index is kept (16).
    public static let indexThreshold = 16

    /// One key and its value.
    @usableFromInline
    struct Member: Sendable {
        @usableFromInline var key: String
        @usableFromInline var value: JSON

        @usableFromInline
        init(key: String, value: JSON) {
            self.key = key
            self.value = value
        }
    }

    @usableFromInline var members: [Member]
    /// Key → position; present only when `count > indexThreshold`.
    @usableFromInline var index: [String: Int]?

    /// An empty object.
    public init() {
        members = []
        index = nil
    }

    /// An object with `pairs` in order; for a repeated key the last value wins, at the
    /// position where the key first appeared.
    public init(_ pairs: [(String, JSON)]) {
        self.init()
        members.reserveCapacity(pairs.count)
        for (key, value) in pairs { self[key] = value }
    }

    /// An object from members with unique keys (the parser's fast path).
    init(uniqueMembers: [Member], index: [String: Int]?) {
        members = uniqueMembers
        self.index = index
    }

    /// The number of members.
    public var count: Int { members.count }

    /// Whether the object has no members.
    public var isEmpty: Bool { members.isEmpty }

    /// The keys, in order.
    public var keys: [String] { members.map(\.key) }

    /// The values, in key order.
    public var values: [JSON] { members.map(\.value) }

    /// The position of `key`, or `nil`.
    @inlinable
    func position(of key: String) -> Int? {
        if let index { return index[key] }
        var i = 0
        while i < members.count {
            if members[i].key == key { return i }
            i += 1
        }
        return nil
    }

    /// The value for `key` (`nil` when absent). Setting `nil` removes the member; setting a
    /// value replaces an existing member in place or appends a new one.
    public subscript(key: String) -> JSON? {
        get {
            guard let i = position(of: key) else { return nil }
            return members[i].value
        }
        set {
            if let i = position(of: key) {
                if let newValue {
                    members[i].value = newValue
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
        let old = members[i].value
        removeMember(at: i)
        return old
    }

    /// Appends a member whose key is known to be new.
    mutating func append(key: String, value: JSON) {
        members.append(Member(key: key, value: value))
        if index != nil {
            index![key] = members.count - 1
        } else if members.count > JSONObject.indexThreshold {
            rebuildIndex()
        }
    }

    private mutating func removeMember(at i: Int) {
        members.remove(at: i)
        if members.count > JSONObject.indexThreshold { rebuildIndex() } else { index = nil }
    }

    private mutating func rebuildIndex() {
        var built = [String: Int](minimumCapacity: members.count)
        for (i, member) in members.enumerated() { built[member.key] = i }
        index = built
    }
}

extension JSONObject: Equatable {
    /// Two objects are equal when they have the same keys with equal values, in any order.
    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.count == rhs.count else { return false }
        for (i, member) in lhs.members.enumerated() {
            let other = rhs.members[i]
            if other.key == member.key {
                if other.value != member.value { return false }
            } else {
                guard let value = rhs[member.key], value == member.value else { return false }
            }
        }
        return true
    }
}

extension JSONObject: Sequence {
    /// Iterates `(key, value)` members in order.
    public struct Iterator: IteratorProtocol {
        let members: [Member]
        var position = 0

        /// The next member, or `nil` at the end.
        public mutating func next() -> (key: String, value: JSON)? {
            guard position < members.count else { return nil }
            defer { position += 1 }
            return (members[position].key, members[position].value)
        }
    }

    /// An iterator over the members in order.
    public func makeIterator() -> Iterator { Iterator(members: members) }

    /// The member count (lets `Array(object)` allocate once).
    public var underestimatedCount: Int { members.count }
}

extension JSONObject: ExpressibleByDictionaryLiteral {
    /// An object with the literal's members in the order written.
    public init(dictionaryLiteral elements: (String, JSON)...) { self.init(elements) }
}

extension JSONObject: CustomStringConvertible {
    /// The compact JSON text of the object.
    public var description: String { JSON.object(self).text }
}
