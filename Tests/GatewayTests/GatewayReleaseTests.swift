import EventLoop
import Foundation
import Routes
import Testing
import TestSupport
@testable import Gateway

/// Weak references to objects a gateway created, by name.
private final class Tracked: @unchecked Sendable {
    private final class Entry {
        weak var object: AnyObject?
        let name: String
        init(_ name: String, _ object: AnyObject) {
            self.name = name
            self.object = object
        }
    }
    private let lock = NSLock()
    private var entries: [Entry] = []

    func add(_ name: String, _ object: AnyObject) { lock.withLock { entries.append(Entry(name, object)) } }

    /// The names of the recorded objects still alive.
    var alive: [String] { lock.withLock { entries.compactMap { $0.object == nil ? nil : $0.name } } }
    /// Every recorded name.
    var names: [String] { lock.withLock { entries.map(\.name) } }
}

/// What a gateway leaves behind: nothing once it is shut down and released, and
/// nothing of an old route table once a reload replaced it and no job uses it.
/// (A reference cycle here outlives the gateway: in a long-running server, every
/// job and every reloaded route table would stay in memory for good.)
@Suite struct GatewayReleaseTests {
    static func routes(fast: UInt16, stall: UInt16) -> [String: String] {
        [
            "fast.json": routeJSON(["name": "fast", "method": "POST", "path": "/fast", "wait": "5s",
                                    "steps": [["id": "a", "request": ["method": "POST", "url": "http://127.0.0.1:\(fast)/a"], "timeout": "5s"],
                                              ["id": "b", "after": ["a"], "request": ["method": "POST", "url": "http://127.0.0.1:\(fast)/b"],
                                               "timeout": "5s"]]]),
            "stall.json": routeJSON(["name": "stall", "method": "POST", "path": "/stall", "wait": "100ms",
                                     "steps": [["id": "s", "request": ["method": "POST", "url": "http://127.0.0.1:\(stall)/s"], "timeout": "30s"]]]),
        ]
    }

    /// An upstream that records each request and never answers (until its peer closes).
    static func stallingServer() throws -> ScriptedServer {
        try ScriptedServer { conn, server in
            while let req = conn.readRequest() { server.record(req) }
        }
    }

    static func start(_ routes: [String: String], dir: String) throws -> (Gateway, RouteTable) {
        for (name, text) in routes { try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8) }
        let table = try RouteLoader.load(directory: dir, environment: [:])
        var config = GatewayConfig()
        config.listen = SocketAddress(host: "127.0.0.1", port: 0)
        config.eventLoops = 2
        config.data = "\(dir)/data"
        config.logLevel = "error"
        config.callbackAllow = ["127.0.0.0/8"]
        Socket.ignoreSIGPIPE()
        let gateway = try Gateway(config: config, routes: table)
        try gateway.start()
        return (gateway, table)
    }

    /// After `shutdown()` the gateway and everything it made — loops, loop states and
    /// their wait-budget queues, the journal, the stores, the runs, the route tables
    /// (the first one and the one a reload put in) — are freed, also with work in
    /// flight at the time: a job still calling its upstream, a long-poll on it, a caller
    /// attached to it by `Idempotency-Key`, a caller waiting on another run, and a
    /// callback delivery that gets no answer.
    @Test func gatewayIsFreedAfterShutdown() throws {
        let fast = try ScriptedServer.answering()
        let stall = try Self.stallingServer()
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tracked = Tracked()
        var held: [RawConnection] = []
        try Self.serveAndShutDown(fast: fast, stall: stall, dir: dir, tracked: tracked, held: &held)
        for name in ["gateway", "loop 0", "loop 1", "loop state 0", "loop state 1", "journal", "durable state",
                     "endpoints", "deliveries", "idempotency", "route fast (first table)", "route fast (reloaded table)"] {
            #expect(tracked.names.contains(name), "\(name) was not recorded")
        }
        #expect(tracked.names.contains { $0.hasPrefix("budget queue") })
        // The journal's writer thread lets go of its core as it ends (`close` joins it).
        #expect(eventually(timeout: .seconds(5)) { tracked.alive.isEmpty }, "still alive: \(tracked.alive)")
        held.removeAll()
    }

    /// Runs one gateway through sync runs, async jobs, a reload and in-flight work,
    /// shuts it down and records weak references to what it made. Everything is
    /// released when this returns, unless something keeps it.
    private static func serveAndShutDown(fast: ScriptedServer, stall: ScriptedServer, dir: String, tracked: Tracked,
                                         held: inout [RawConnection]) throws {
        let (gateway, table) = try start(routes(fast: fast.port, stall: stall.port), dir: dir)
        tracked.add("route fast (first table)", try #require(table.route(named: "fast")))
        let port = gateway.port
        func request(_ method: String, _ target: String, _ headers: [(String, String)] = []) throws -> RawMessage {
            try #require(RawConnection(port: port).request(method, target, headers: headers))
        }
        // A synchronous run answered within its budget (a wait-budget queue with an armed timer).
        #expect(try request("POST", "/fast").status == 200)
        // An async job that finishes, with a callback delivery to a receiver that never answers.
        let job = try request("POST", "/fast", [("Prefer", "respond-async"), ("Callback-URL", "http://127.0.0.1:\(stall.port)/cb")])
        #expect(job.status == 202)
        let jobID = try #require(job.object["job_id"] as? String)
        #expect(try request("GET", "/jobs/\(jobID)?wait=10").object["status"] as? String == "succeeded")
        #expect(eventually { stall.requests.contains { $0.target == "/cb" } })

        let reloaded = try RouteLoader.load(directory: dir, environment: [:])
        tracked.add("route fast (reloaded table)", try #require(reloaded.route(named: "fast")))
        gateway.reload(routes: reloaded)
        #expect(try request("POST", "/fast").status == 200)

        // In flight at shutdown: a job on a stalled upstream, a long-poll on it, a caller
        // attached to it by its Idempotency-Key, and a caller waiting on another stalled run.
        let stalled = try request("POST", "/stall", [("Idempotency-Key", "k1")])
        #expect(stalled.status == 202)
        let stalledID = try #require(stalled.object["job_id"] as? String)
        let poll = try RawConnection(port: port)
        #expect(poll.write("GET /jobs/\(stalledID)?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n"))
        let attached = try RawConnection(port: port)
        #expect(attached.write("POST /stall HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k1\r\nPrefer: wait=30\r\nContent-Length: 0\r\n\r\n"))
        let waiting = try RawConnection(port: port)
        #expect(waiting.write("POST /stall HTTP/1.1\r\nHost: x\r\nPrefer: wait=30\r\nContent-Length: 0\r\n\r\n"))
        held = [poll, attached, waiting]
        #expect(eventually { stall.requests.filter { $0.target == "/s" }.count == 2 })
        usleep(100_000)  // the poll and the attached caller reach the gateway (no answer to wait for)

        gateway.shutdown()
        // The loops have stopped (and were joined): their state can be read here.
        tracked.add("gateway", gateway)
        for (i, s) in gateway.states.enumerated() {
            tracked.add("loop \(i)", s.loop)
            tracked.add("loop state \(i)", s)
            for q in s.budgetQueues { tracked.add("budget queue \(i)", q) }
        }
        tracked.add("durable state", gateway.durable)
        tracked.add("journal", gateway.durable.journal)
        tracked.add("endpoints", gateway.endpoints)
        tracked.add("deliveries", gateway.deliveries)
        tracked.add("idempotency", gateway.idempotency)
    }

    /// A caller with an `Idempotency-Key` whose run outlasts its budget: once it got its
    /// `202`, what held it while it waited (its waiting run, with its request and
    /// connection) is freed although the job runs on — what a later duplicate needs
    /// is only the job record — and a duplicate still gets its `202` for that job.
    @Test func waitingCallerIsFreedOnceAnswered_WhileItsJobRunsOn() throws {
        let fast = try ScriptedServer.answering()
        let stall = try Self.stallingServer()
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The step outlasts every wait below (its upstream holds the request, unanswered,
        // until the test ends): the job is still running when its waiting run must be gone.
        let gate = Gate()
        defer { gate.open() }
        let holding = try ScriptedServer { conn, server in
            if let req = conn.readRequest() { server.record(req) }
            _ = gate.wait(timeout: .seconds(300))
        }
        var routes = Self.routes(fast: fast.port, stall: stall.port)
        routes["long.json"] = routeJSON(["name": "long", "method": "POST", "path": "/long", "wait": "100ms", "max_wait": "60s",
                                         "steps": [["id": "s", "request": ["method": "POST", "url": "http://127.0.0.1:\(holding.port)/s"],
                                                    "timeout": "300s"]]])
        let (gateway, _) = try Self.start(routes, dir: dir)
        defer { gateway.shutdown() }
        let tracked = Tracked()
        let caller = try RawConnection(port: gateway.port, timeout: .seconds(60))
        // Long enough to find its waiting run below while it waits (the step's request
        // arrives within milliseconds), short enough not to add much to the suite.
        #expect(caller.write("POST /long HTTP/1.1\r\nHost: x\r\nIdempotency-Key: k7\r\nPrefer: wait=5\r\nContent-Length: 0\r\n\r\n"))
        #expect(eventually(timeout: .seconds(30)) { holding.requests.count == 1 })
        // While the caller waits, the entry for duplicates is its waiting run.
        func promotion() -> AnyObject? {
            var found: AnyObject?
            for s in gateway.states {
                let got = DispatchSemaphore(value: 0)
                nonisolated(unsafe) var p: AnyObject?
                s.loop.execute {
                    p = s.promotions.values.first
                    got.signal()
                }
                got.wait()
                if let p { found = p }
            }
            return found
        }
        do {  // the test must not keep it alive
            let waitingRun = try #require(promotion())
            try #require(!(waitingRun is JobRecordWrite), "the caller's wait ended before its waiting run was seen")
            tracked.add("waiting run", waitingRun)
        }
        let accepted = try #require(caller.readResponse())
        #expect(accepted.status == 202, "\(accepted.text)")
        let jobID = try #require(accepted.object["job_id"] as? String)
        #expect(eventually(timeout: .seconds(30)) { tracked.alive.isEmpty }, "still alive: \(tracked.alive)")
        #expect(promotion() is JobRecordWrite)
        let job = try #require(RawConnection(port: gateway.port).request("GET", "/jobs/\(jobID)"))
        #expect(job.object["status"] as? String == "running", "\(job.text)")
        let duplicate = try #require(RawConnection(port: gateway.port).request(
            "POST", "/long", headers: [("Idempotency-Key", "k7"), ("Prefer", "respond-async")]))
        #expect(duplicate.status == 202, "\(duplicate.text)")
        #expect(duplicate.object["job_id"] as? String == jobID)
        #expect(holding.requests.count == 1)
        withExtendedLifetime(caller) {}
    }

    /// A reload lets go of the old route table once no run uses it, while the gateway
    /// runs on: here after a finished async job is retired from the registry (as the
    /// retention sweep does).
    @Test func routeReloadFreesTheOldRouteTable() throws {
        let fast = try ScriptedServer.answering()
        let stall = try Self.stallingServer()
        let dir = try makeTempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tracked = Tracked()
        let gateway: Gateway
        do {
            let (g, table) = try Self.start(Self.routes(fast: fast.port, stall: stall.port), dir: dir)
            gateway = g
            for r in table.routes { tracked.add("old route \(r.name)", r) }
        }
        defer { gateway.shutdown() }
        var jobID = ""
        do {
            let c = try RawConnection(port: gateway.port)
            #expect(c.request("POST", "/fast")?.status == 200)
            let job = try #require(c.request("POST", "/fast", headers: [("Prefer", "respond-async")]))
            jobID = try #require(job.object["job_id"] as? String)
            #expect(c.request("GET", "/jobs/\(jobID)?wait=10")?.object["status"] as? String == "succeeded")
        }
        gateway.reload(routes: try RouteLoader.load(directory: dir, environment: [:]))
        #expect(try RawConnection(port: gateway.port).request("POST", "/fast")?.status == 200)  // the new table is in use
        // Retire the finished job on its loop, as the sweep does after `job_retention`.
        let loop = try #require(gateway.jobs.find(jobID, owner: "")?.loop)
        let jobs = gateway.jobs
        loop.execute { [jobID] in jobs.remove(jobID) }
        #expect(tracked.names.count == 2)
        #expect(eventually(timeout: .seconds(5)) { tracked.alive.isEmpty }, "still alive: \(tracked.alive)")
    }
}
