import Glibc

/// A value behind a `pthread_mutex_t`: the one lock type of the code base for
/// state shared between threads.
///
/// Used instead of `Synchronization.Mutex` because ThreadSanitizer does not see
/// `Mutex`'s futex-based happens-before edges on Linux and reports false races,
/// which would hide real ones. pthread mutexes are intercepted by the sanitizer,
/// so a report under `Locked` is a real race. Uncontended cost is the same order
/// as `Mutex` (one atomic operation to lock and one to unlock).
///
/// Threading: every method may be called from any thread. The lock is not
/// recursive: calling `withLock` on the same instance from inside its body
/// deadlocks. `Value` should not be zero-sized (`Void`): its storage then has the
/// address of the mutex field, and ThreadSanitizer reports the unlocked read of that
/// field against a locked access to the value as a race.
public final class Locked<Value>: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    /// Wraps `value`; the lock owns it from now on.
    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value locked and returns what it returns. Keep `body`
    /// short and free of I/O and of calls that may take other locks.
    public func withLock<R, E: Error>(_ body: (inout Value) throws(E) -> R) throws(E) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
