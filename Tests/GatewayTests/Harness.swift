import EventLoop
import Foundation
import Gateway
import Glibc
import Routes
import TestSupport

/// The `switchboard` executable built next to the test bundle.
func switchboardBinary() throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<3 {
        let candidate = dir.appendingPathComponent("switchboard").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    let fallback = FileManager.default.currentDirectoryPath + "/.build/debug/switchboard"
    if FileManager.default.isExecutableFile(atPath: fallback) { return fallback }
    throw HarnessError.noBinary
}

/// The JSON body of a message as a dictionary.
extension RawMessage {
    var object: [String: Any] { (json as? [String: Any]) ?? [:] }
}

/// A route file as JSON text from a Swift dictionary (keeps tests readable).
func routeJSON(_ object: [String: Any]) -> String {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}
