import Synchronization

/// A value computed on first use and kept, readable from any thread: the cache of
/// something parsed lazily (an upstream body, a header block). Lock-free and stored
/// inline — no allocation until the value is computed, then one box for it — so it
/// costs nothing for the many objects whose value is never asked for.
///
/// Threading: `value(_:)` may be called from any thread. Two threads asking at the
/// same moment may both compute the value; the first one stored wins and both return
/// it, so `compute` must be a pure function of the owner's immutable state. The
/// publication is an atomic release/acquire pair (`AtomicLazyReference`), which the
/// thread sanitizer sees (unlike `Synchronization.Mutex`'s futex on Linux).
///
/// Store it as a `let` property of a class (it is not copyable).
public struct ComputedOnce<Value: Sendable>: ~Copyable, Sendable {
    // Inlinable, so that each use is specialized for its `Value`: unspecialized, every
    // `init` and `value` looked up `Box<Value>`'s type metadata in the runtime's cache.
    @usableFromInline final class Box: Sendable {
        @usableFromInline let value: Value
        @inlinable init(_ value: Value) { self.value = value }
    }

    @usableFromInline let cell = AtomicLazyReference<Box>()

    /// Nothing computed yet.
    @inlinable public init() {}

    /// The value: the one already computed, or `compute()`'s, kept for later calls.
    @inlinable public func value(_ compute: () -> Value) -> Value {
        if let box = cell.load() { return box.value }
        return cell.storeIfNil(Box(compute())).value
    }
}
