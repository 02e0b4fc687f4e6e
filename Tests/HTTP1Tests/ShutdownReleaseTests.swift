import EventLoop
import Glibc
import Locking
import Testing
@testable import HTTP1

/// Weak references to objects a server run created, recorded from the loop threads.
final class WeakReferences: @unchecked Sendable {
    /// Written once, on the recording thread, before it is shared under the lock.
    private final class Entry: @unchecked Sendable {
        weak var object: AnyObject?
        let name: String
        init(object: AnyObject, name: String) {
            self.object = object
            self.name = name
        }
    }
    // `Locked`, not `Mutex`: the loop threads record concurrently, and ThreadSanitizer
    // sees the ordering only through a pthread mutex.
    private let entries = Locked<[Entry]>([])

    func add(_ name: String, _ object: AnyObject) {
        entries.withLock { $0.append(Entry(object: object, name: name)) }
    }

    /// Every recorded name (duplicates included).
    var names: [String] { entries.withLock { $0.map(\.name) } }

    /// The names of the objects still alive.
    var alive: [String] { entries.withLock { $0.compactMap { $0.object == nil ? nil : $0.name } } }
}

@Suite struct ShutdownReleaseTests {
    /// `HTTPServer.shutdown` then `EventLoopGroup.shutdown` leave nothing of the server
    /// alive, also with connections open at the time: an idle keep-alive one, one whose
    /// response waits for a loop timer, and one answered from another thread after the
    /// loops stopped. The per-loop state (with its 64 KiB read buffer), the connections,
    /// their writers and the loops are all freed.
    @Test func server_ReleasesLoopStateAndConnections_WhenShutDownWithOpenConnections() throws {
        let refs = WeakReferences()
        let held = Recorder<HTTPResponseWriter?>(nil)
        try serveAndShutDown(refs, held)
        let names = Set(refs.names)
        for name in ["loop 0", "loop 1", "loop context", "connection /idle", "connection /timer",
                     "connection /held", "writer /timer", "writer /held"] {
            #expect(names.contains(name), "\(name) was not recorded")
        }
        #expect(refs.alive == [])
    }

    /// A `LoopTimer` its owner keeps (to cancel it) lets go of its callback once it can
    /// no longer fire — cancelled, fired, or still scheduled when the loop stops — so an
    /// owner its callback captures is freed: there is no lasting cycle through the timer.
    @Test func loopTimer_ReleasesItsCallback_WhenCancelledFiredOrStopped() throws {
        let refs = WeakReferences()
        try scheduleOwnedTimers(refs)
        #expect(Set(refs.names) == ["cancelled", "fired", "pending at stop", "loop"])
        #expect(refs.alive == [])
    }

    /// An object that keeps the timer whose callback holds it.
    private final class TimerOwner {
        var timer: LoopTimer?
        var fired = false
    }

    private func scheduleOwnedTimers(_ refs: WeakReferences) throws {
        let group = try EventLoopGroup(count: 1)
        let loop = group.loops[0]
        refs.add("loop", loop)
        let scheduled = Recorder(false)
        let fired = Recorder(false)
        loop.execute {
            let cancelled = TimerOwner(), firing = TimerOwner(), pending = TimerOwner()
            refs.add("cancelled", cancelled)
            refs.add("fired", firing)
            refs.add("pending at stop", pending)
            cancelled.timer = loop.schedule(at: loop.now + .seconds(60)) { cancelled.fired = true }
            firing.timer = loop.schedule(at: loop.now) {
                firing.fired = true
                fired.set(true)
            }
            pending.timer = loop.schedule(at: loop.now + .seconds(60)) { pending.fired = true }
            loop.cancel(cancelled.timer)
            scheduled.set(true)
        }
        #expect(eventually { scheduled.get && fired.get })
        group.shutdown()
    }

    /// Runs a two-loop server with three open connections, shuts it and its group
    /// down, and answers the held request afterwards. Everything it created is
    /// released when it returns, unless something keeps it.
    private func serveAndShutDown(_ refs: WeakReferences, _ held: Recorder<HTTPResponseWriter?>) throws {
        Socket.ignoreSIGPIPE()
        let group = try EventLoopGroup(count: 2)
        refs.add("loop 0", group.loops[0])
        refs.add("loop 1", group.loops[1])
        let server = HTTPServer(group: group, address: SocketAddress(host: "127.0.0.1", port: 0),
                                limits: HTTPLimits()) { req, w in
            refs.add("loop context", w.connection.context)
            refs.add("connection \(req.path)", w.connection)
            refs.add("writer \(req.path)", w)
            switch req.path {
            case "/timer":
                // Never fires: the loop stops first, with the timer (and the writer) still scheduled.
                w.loop.schedule(at: w.loop.now + .seconds(60)) { w.respond(HTTPResponse(status: 200)) }
            case "/held":
                held.set(w)
            default:
                w.respond(HTTPResponse(status: 200))
            }
        }
        do {
            try server.start()
        } catch {
            group.shutdown()
            throw error
        }
        let idle = try TestClient(port: server.port)
        #expect(idle.get("/idle")?.status == 200)
        let waiting = try TestClient(port: server.port)
        waiting.send("GET /timer HTTP/1.1\r\nHost: h\r\n\r\n")
        let holding = try TestClient(port: server.port)
        holding.send("GET /held HTTP/1.1\r\nHost: h\r\n\r\n")
        #expect(eventually { held.get != nil && refs.names.contains("writer /timer") })
        #expect(server.openConnections == 3)

        server.shutdown()
        group.shutdown()
        #expect(server.openConnections == 0)
        // After the loops stopped: the task `respond` hands to the loop can never run
        // and must not keep the writer (and through it the connection and the loop).
        held.get?.respond(HTTPResponse(status: 200))
        // The responder captures `held`; a writer left there would keep its connection.
        held.set(nil)
    }
}
