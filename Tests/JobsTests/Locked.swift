import Synchronization

/// A value behind a `Mutex`, as a class so escaping closures can share it (tests only).
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    /// Runs `body` with the value locked.
    func withLock<R>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    /// The current value.
    var value: Value { mutex.withLock { $0 } }
}
