import EventLoop
import Foundation
import Gateway
import Routes

/// A gateway running in-process on `127.0.0.1:0` (two event loops) with route
/// files written to a temporary directory and its journal in that directory;
/// shut down and removed when released. Shared by every test target that needs
/// a real gateway.
public final class GatewayHarness: @unchecked Sendable {
    public let gateway: Gateway
    /// The temporary directory holding the route files and `data/`.
    public let dir: String

    /// - Parameters:
    ///   - routes: route files, name → JSON text.
    ///   - env: what `{{env.*}}` reads.
    ///   - configure: adjusts the configuration before start (limits, keys, …).
    public init(routes: [String: String], env: [String: String] = [:], configure: (inout GatewayConfig) -> Void = { _ in }) throws {
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

    /// The main listener's port.
    public var port: UInt16 { gateway.port }

    /// A new connection to the gateway (TCP_NODELAY; reads time out after `timeout`).
    public func connect(timeout: Duration = .seconds(20)) throws -> RawConnection {
        try RawConnection(port: port, timeout: timeout)
    }

    /// One request on a fresh connection.
    /// - Throws: `HarnessError.noResponse` when no whole response came.
    public func request(_ method: String, _ target: String, headers: [(String, String)] = [], body: String = "") throws -> RawMessage {
        let c = try connect()
        guard let r = c.request(method, target, headers: headers, body: Array(body.utf8)) else {
            throw HarnessError.noResponse
        }
        return r
    }
}

/// Why a test harness could not do its job.
public enum HarnessError: Error { case noResponse, noBinary }

/// A fresh directory under the temporary directory.
public func makeTempDir() throws -> String {
    let path = NSTemporaryDirectory() + "switchboard-test-" + UUID().uuidString
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}
