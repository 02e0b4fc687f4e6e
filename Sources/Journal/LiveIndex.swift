/// Which records are live: per key, the locations of the records replay must
/// return, and their total size. Payloads stay on disk (about 40 bytes of memory
/// per live record plus the key).
///
/// Value type owned by one thread at a time (recovery, then the writer thread).
struct LiveIndex {
    /// Live records per key, in append order.
    var keys: [String: [Location]] = [:]
    var liveBytes = 0
    var liveRecords = 0

    /// Applies one record found (or written) at `location`.
    mutating func apply(_ operation: JournalRecord.Operation, key: String, at location: Location) {
        switch operation {
        case .put:
            if let old = keys.updateValue([location], forKey: key) { forget(old) }
            remember(location)
        case .append:
            Self.append(location, to: &keys[key, default: []])
            remember(location)
        case .delete:
            if let old = keys.removeValue(forKey: key) { forget(old) }
        }
    }

    /// Appends to `list`, growing a full list of one to four at once (not to two, then
    /// four): a key appended to takes a few records (a job: its steps, then its result).
    private static func append(_ location: Location, to list: inout [Location]) {
        if list.count == 1 && list.capacity == 1 { list.reserveCapacity(4) }
        list.append(location)
    }

    private mutating func remember(_ location: Location) {
        liveBytes += location.length
        liveRecords += 1
    }

    private mutating func forget(_ locations: [Location]) {
        for l in locations {
            liveBytes -= l.length
            liveRecords -= 1
        }
    }

    /// Every live location in files numbered `through` or lower (all when nil), in replay order.
    func locations(through last: Int? = nil) -> [Location] {
        var all: [Location] = []
        all.reserveCapacity(liveRecords)
        for list in keys.values {
            for l in list where last == nil || l.file <= last! { all.append(l) }
        }
        all.sort()
        return all
    }

    /// Moves every live location in files numbered `through` or lower to the compacted file
    /// `number`: `old` (sorted, as given to the compaction) and `newOffsets` are parallel.
    ///
    /// Records live now were live when the compaction started (sealed files get no new
    /// records, and a dead record never comes back), so each one is found in `old`.
    mutating func relocate(through last: Int, into number: Int, old: [Location], newOffsets: [Int]) {
        for i in keys.indices {
            for j in keys.values[i].indices where keys.values[i][j].file <= last {
                let l = keys.values[i][j]
                let at = Self.search(old, l)
                precondition(at < old.count && old[at] == l, "journal compaction lost a live record")
                keys.values[i][j] = Location(file: number, offset: newOffsets[at], length: l.length)
            }
        }
    }

    /// Index of the first element of sorted `list` not less than `l`.
    private static func search(_ list: [Location], _ l: Location) -> Int {
        var lo = 0, hi = list.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if list[mid] < l { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }
}
