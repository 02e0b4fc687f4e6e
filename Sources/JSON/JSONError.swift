/// Why a byte sequence is not JSON.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The zero-based byte offset in the input where the problem was found.
    public let offset: Int
    /// What is wrong, e.g. `expected ':' after object key`.
    public let message: String

    /// Creates an error at `offset` (in bytes from the start of the input).
    public init(offset: Int, message: String) {
        self.offset = offset
        self.message = message
    }

    /// `"<message> at byte <offset>"`.
    public var description: String { "\(message) at byte \(offset)" }
}
