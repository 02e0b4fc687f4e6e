import CLinux
import Glibc

/// A failed system call: the call's name and the `errno` it set.
///
/// Thrown by the socket and loop helpers in this module (modelled on swift-nio's
/// `IOError(errnoCode:reason:)`). `description` includes `strerror`.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    /// The `errno` value (e.g. `EADDRINUSE`).
    public let errno: Int32
    /// The system call or operation that failed, e.g. `"bind"`.
    public let call: String

    public init(errno: Int32, call: String) {
        self.errno = errno
        self.call = call
    }

    /// Builds an error from the calling thread's current `errno`.
    public static func last(_ call: String) -> SystemError { SystemError(errno: CLinux_errno(), call: call) }

    public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }
}
