// hummingbird-peer LISTEN_PORT UPSTREAM_PORT_A UPSTREAM_PORT_B UPSTREAM_PORT_C
//
// The same three cases as Switchboard's benchmark routes (benchmarks/routes/) and the
// nginx+lua gateway that benchmarks/run configures, written the way a Swift user would
// with Hummingbird 2 and AsyncHTTPClient:
//
//   GET /proxy        one GET http://127.0.0.1:A/json; its status, content-type and body
//   GET /fanout       GET /json on A, B and C concurrently → {"a":…,"b":…,"c":…}
//   GET /fanout_slow  the same with leg c on /slow (answered after 50 ms)
//
// A fan-out leg that fails or answers other than 200 makes the whole answer
// 502 {"error":"upstream"}, like the nginx gateway and Switchboard.
//
// One event loop thread, shared by the server and the client, to match "the gateway
// under test with one event loop" (benchmarks/run pins the process to one CPU as
// well). The route handlers run as Swift concurrency tasks on the global executor,
// whose threads are separate from the event loop: that is how Hummingbird 2 works.
import AsyncHTTPClient
import Hummingbird
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The upstream side: one shared client and the requests each route sends.
struct Upstreams: Sendable {
    let client: HTTPClient
    let proxy: HTTPClientRequest
    let fanout: [HTTPClientRequest]
    let fanoutSlow: [HTTPClientRequest]

    static let timeout = TimeAmount.seconds(5)  // as the steps of benchmarks/routes/*.json
    static let bodyLimit = 1 << 20
    static let jsonHeaders: HTTPFields = [.contentType: "application/json"]
    static let badGateway = #"{"error":"upstream"}"#

    init(client: HTTPClient, ports: (Int, Int, Int)) {
        func request(_ port: Int, _ path: String) -> HTTPClientRequest {
            HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
        }
        self.client = client
        self.proxy = request(ports.0, "/json")
        self.fanout = [request(ports.0, "/json"), request(ports.1, "/json"), request(ports.2, "/json")]
        self.fanoutSlow = [request(ports.0, "/json"), request(ports.1, "/json"), request(ports.2, "/slow")]
    }

    static func badGatewayResponse() -> Response {
        Response(status: .badGateway, headers: jsonHeaders, body: .init(byteBuffer: ByteBuffer(string: badGateway)))
    }

    /// GET /proxy: the upstream's status, content-type and body.
    func proxied() async -> Response {
        do {
            let response = try await client.execute(proxy, timeout: Self.timeout)
            let body = try await response.body.collect(upTo: Self.bodyLimit)
            var headers = HTTPFields()
            headers[.contentType] = response.headers.first(name: "content-type") ?? "application/json"
            return Response(status: .init(code: Int(response.status.code)), headers: headers,
                            body: .init(byteBuffer: body))
        } catch {
            return Self.badGatewayResponse()
        }
    }

    /// One fan-out leg: the body if the upstream answered 200, nil otherwise.
    func fetch(_ request: HTTPClientRequest) async -> ByteBuffer? {
        do {
            let response = try await client.execute(request, timeout: Self.timeout)
            let body = try await response.body.collect(upTo: Self.bodyLimit)
            return response.status == .ok ? body : nil
        } catch {
            return nil
        }
    }

    /// The three legs concurrently, merged into {"a":…,"b":…,"c":…}.
    func fannedOut(_ legs: [HTTPClientRequest]) async -> Response {
        async let a = fetch(legs[0])
        async let b = fetch(legs[1])
        async let c = fetch(legs[2])
        guard let a = await a, let b = await b, let c = await c else {
            return Self.badGatewayResponse()
        }
        var out = ByteBuffer()
        out.reserveCapacity(a.readableBytes + b.readableBytes + c.readableBytes + 16)
        out.writeString(#"{"a":"#)
        out.writeImmutableBuffer(a)
        out.writeString(#","b":"#)
        out.writeImmutableBuffer(b)
        out.writeString(#","c":"#)
        out.writeImmutableBuffer(c)
        out.writeString("}")
        return Response(status: .ok, headers: Self.jsonHeaders, body: .init(byteBuffer: out))
    }
}

@main
struct HummingbirdPeer {
    static func main() async throws {
        let args = CommandLine.arguments
        guard args.count == 5, let listenPort = Int(args[1]),
              let a = Int(args[2]), let b = Int(args[3]), let c = Int(args[4]) else {
            print("usage: hummingbird-peer LISTEN_PORT UPSTREAM_PORT_A UPSTREAM_PORT_B UPSTREAM_PORT_C")
            exit(2)
        }

        let eventLoopGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)

        // One client for all requests; its pool keeps up to 128 HTTP/1 connections per
        // upstream, more than the 64 concurrent requests wrk sends (the nginx gateway's
        // keep-alive pool is 128 as well).
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool = .init(idleTimeout: .seconds(300), concurrentHTTP1ConnectionsPerHostSoftLimit: 128)
        configuration.timeout = .init(connect: .seconds(5), read: .seconds(5))
        let client = HTTPClient(eventLoopGroup: eventLoopGroup, configuration: configuration)
        let upstreams = Upstreams(client: client, ports: (a, b, c))

        let router = Router()
        router.get("proxy") { _, _ in await upstreams.proxied() }
        router.get("fanout") { _, _ in await upstreams.fannedOut(upstreams.fanout) }
        router.get("fanout_slow") { _, _ in await upstreams.fannedOut(upstreams.fanoutSlow) }

        var logger = Logger(label: "hummingbird-peer")
        logger.logLevel = .warning
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: listenPort), serverName: nil),
            eventLoopGroupProvider: .shared(eventLoopGroup),
            logger: logger
        )

        // Serves until SIGTERM or SIGINT (graceful shutdown), then closes the client's pool.
        do {
            try await app.runService()
        } catch {
            print("hummingbird-peer: \(error)")
        }
        try await client.shutdown()
        try await eventLoopGroup.shutdownGracefully()
    }
}
