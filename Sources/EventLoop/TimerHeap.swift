/// A timer scheduled on an `EventLoop`. Returned by `EventLoop.schedule(at:_:)`;
/// pass it to `EventLoop.cancel(_:)` to stop it. Confined to its loop's thread.
///
/// A timer lets go of its callback once it can no longer fire: when it fires, when
/// it is cancelled, and when its loop stops. So an object may keep the timers it
/// schedules (to cancel them) while their callbacks hold that object: the cycle
/// ends with the timer, even when the loop stops first.
public final class LoopTimer {
    /// When the timer fires.
    public internal(set) var deadline: Instant
    /// What to run at `deadline`; nil once the timer fired, was cancelled or its loop stopped.
    var callback: (() -> Void)?
    /// Position in the heap, or -1 when not scheduled (fired or cancelled).
    var heapIndex: Int = -1
    let sequence: UInt64

    init(deadline: Instant, sequence: UInt64, callback: @escaping () -> Void) {
        self.deadline = deadline
        self.sequence = sequence
        self.callback = callback
    }

    /// Whether the timer is still waiting to fire.
    public var isScheduled: Bool { heapIndex >= 0 }
}

/// A binary min-heap of timers keyed by deadline (ties in scheduling order), with
/// O(log n) removal through each timer's stored index. Not thread-safe.
struct TimerHeap {
    private(set) var items: [LoopTimer] = []

    var isEmpty: Bool { items.isEmpty }
    var first: LoopTimer? { items.first }
    var count: Int { items.count }

    private static func less(_ a: LoopTimer, _ b: LoopTimer) -> Bool {
        a.deadline < b.deadline || (a.deadline == b.deadline && a.sequence < b.sequence)
    }

    mutating func insert(_ t: LoopTimer) {
        t.heapIndex = items.count
        items.append(t)
        siftUp(items.count - 1)
    }

    mutating func remove(_ t: LoopTimer) {
        let i = t.heapIndex
        guard i >= 0, i < items.count, items[i] === t else { return }
        let last = items.count - 1
        if i != last {
            items.swapAt(i, last)
            items[i].heapIndex = i
        }
        items.removeLast()
        t.heapIndex = -1
        if i < items.count {
            siftDown(i)
            siftUp(i)
        }
    }

    /// Empties the heap and returns its timers, each marked not scheduled.
    mutating func removeAll() -> [LoopTimer] {
        let all = items
        items = []
        for t in all { t.heapIndex = -1 }
        return all
    }

    mutating func popFirst() -> LoopTimer? {
        guard let f = items.first else { return nil }
        remove(f)
        return f
    }

    private mutating func siftUp(_ start: Int) {
        var i = start
        while i > 0 {
            let p = (i - 1) / 2
            guard Self.less(items[i], items[p]) else { break }
            items.swapAt(i, p)
            items[i].heapIndex = i
            items[p].heapIndex = p
            i = p
        }
    }

    private mutating func siftDown(_ start: Int) {
        var i = start
        let n = items.count
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < n && Self.less(items[l], items[m]) { m = l }
            if r < n && Self.less(items[r], items[m]) { m = r }
            if m == i { break }
            items.swapAt(i, m)
            items[i].heapIndex = i
            items[m].heapIndex = m
            i = m
        }
    }
}
