import EventLoop
import Foundation
import Gateway
import Glibc
import Routes
import TestSupport

/// A gateway running in-process on `127.0.0.1:0` with route files written to a
/// temporary directory; shut down when released.
final class GatewayHarness: @unchecked Sendable {
    let gateway: Gateway
    let dir: String

    /// - Parameters:
    ///   - routes: route files, name → JSON text.
    ///   - env: what `{{env.*}}` reads.
    init(routes: [String: String], env: [String: String] = [:], configure: (inout GatewayConfig) -> Void = { _ in }) throws {
        dir = try makeTempDir()
        for (name, text) in routes {
            try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
        }
        let table = try RouteLoader.load(directory: dir, environment: env)
        var config = GatewayConfig()
        config.listen = SocketAddress(host: "127.0.0.1", port: 0)
        config.eventLoops = 2
        config.data = "\(dir)/data"
        config.logLevel = "error"
        configure(&config)
        Socket.ignoreSIGPIPE()
        gateway = try Gateway(config: config, routes: table)
        try gateway.start()
    }

    deinit {
        gateway.shutdown()
        try? FileManager.default.removeItem(atPath: dir)
    }

    var port: UInt16 { gateway.port }

    /// A new connection to the gateway.
    func connect() throws -> RawConnection { try RawConnection(port: port, timeout: .seconds(20)) }

    /// One request on a fresh connection.
    func request(_ method: String, _ target: String, headers: [(String, String)] = [], body: String = "") throws -> RawMessage {
        let c = try connect()
        guard let r = c.request(method, target, headers: headers, body: Array(body.utf8)) else {
            throw HarnessError.noResponse
        }
        return r
    }
}

enum HarnessError: Error { case noResponse, noBinary }

/// A fresh directory under /tmp.
func makeTempDir() throws -> String {
    let path = NSTemporaryDirectory() + "switchboard-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

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
